//! Deterministic synthetic records for `--seed N`: N clients, N long-lived
//! authorizations and N subject sessions.
//!
//! Records are never materialised up front: record `i` of each dataset is a
//! pure function of `i`, the seed count and the JWK set's `hmac` key, and
//! its key encodes `i` behind a MAC so a lookup by key finds the index
//! without any table. A million seeded records therefore cost no memory
//! until they are changed (see `store.rs`).
//!
//! Shapes, chosen to look like a production registry:
//! * client `i`: a confidential web app (`client_secret_basic`), every 7th
//!   one using `client_secret_post`, every 5th a public native app (`none`);
//!   all registered for `authorization_code` and `refresh_token`;
//! * authorization `i`: subject `user<i>` (7 digits) with client
//!   `i mod ceil(sqrt(N))`, so a few clients hold many authorizations; every
//!   3rd rotates refresh tokens, every 4th has identifier access tokens;
//! * session `i`: subject `user<i>`, started within the day before the
//!   emulator started, so it is live under the default lifetimes.
//!
//! Client and authorization times are fixed (before [`SEED_EPOCH`]); session
//! times are relative to the emulator's start so that they have not expired.

use std::sync::Arc;

use serde_json::json;

use super::keys::{Keys, b64, unb64};
use super::records::{Authorization, Session};

/// 2025-01-01T00:00:00Z: seeded clients and authorizations are older.
pub(crate) const SEED_EPOCH: u64 = 1_735_689_600;

/// Default maximum session lifetime in minutes (`sessionStore.maxLifetime`).
pub(crate) const DEFAULT_MAX_LIFE: i64 = 259_200;
/// Default authentication lifetime in minutes (`sessionStore.authLifetime`).
pub(crate) const DEFAULT_AUTH_LIFE: i64 = 43_200;
/// Default maximum idle time in minutes (`sessionStore.maxIdleTime`).
pub(crate) const DEFAULT_MAX_IDLE: i64 = 14_400;

/// Generates and recognises the seeded records of one emulator.
#[derive(Debug)]
pub(crate) struct Seeder {
    keys: Arc<Keys>,
    count: u32,
    /// How many of the first clients carry the seeded authorizations.
    authz_clients: u32,
    client_mask: u32,
    session_mask: u32,
    /// When the emulator started: seeded sessions are recent relative to it.
    started: u64,
}

impl Seeder {
    /// A seeder for `count` records per dataset.
    pub(crate) fn new(keys: Arc<Keys>, count: usize, started: u64) -> Self {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let authz_clients = (f64::from(count).sqrt().ceil() as u32).clamp(1, count.max(1));
        let mask = |label: &str| {
            let mac = keys.mac(label, b"");
            u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]])
        };
        Self {
            client_mask: mask("seed-client-mask"),
            session_mask: mask("seed-session-mask"),
            keys,
            count,
            authz_clients,
            started,
        }
    }

    /// How many records each dataset was seeded with.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    fn derive(&self, label: &str, index: u32) -> [u8; 32] {
        self.keys.mac(label, &index.to_be_bytes())
    }

    /// A deterministic generator for the variable parts of record `index`.
    fn rng(&self, label: &str, index: u32) -> fastrand::Rng {
        let bytes = self.derive(label, index);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&bytes[..8]);
        fastrand::Rng::with_seed(u64::from_be_bytes(seed))
    }

    /// Encodes an index as `(index ^ mask) || mac(index)[..tag_len]`.
    fn encode(&self, label: &str, mask: u32, index: u32, tag_len: usize) -> String {
        let mut bytes = (index ^ mask).to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.derive(label, index)[..tag_len]);
        b64(bytes)
    }

    /// The index encoded by [`Seeder::encode`], if the tag verifies.
    fn decode(&self, label: &str, mask: u32, text: &str, tag_len: usize) -> Option<u32> {
        let bytes = unb64(text)?;
        if bytes.len() != 4 + tag_len {
            return None;
        }
        let index = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) ^ mask;
        if index >= self.count {
            return None;
        }
        (self.derive(label, index)[..tag_len] == bytes[4..]).then_some(index)
    }

    // ---- clients ----

    /// The ID of seeded client `index` (14 base64url characters).
    pub(crate) fn client_id(&self, index: u32) -> String {
        self.encode("seed-client-id", self.client_mask, index, 6)
    }

    /// The index of a seeded client ID.
    pub(crate) fn client_index(&self, id: &str) -> Option<u32> {
        self.decode("seed-client-id", self.client_mask, id, 6)
    }

    /// Seeded client `index`: its ID and client information JSON.
    pub(crate) fn client(&self, index: u32) -> (String, String) {
        let id = self.client_id(index);
        let mut rng = self.rng("seed-client", index);
        let public = index % 5 == 4;
        let method = if public {
            "none"
        } else if index % 7 == 6 {
            "client_secret_post"
        } else {
            "client_secret_basic"
        };
        let issued_at = SEED_EPOCH - u64::from(index) * 97 % 31_536_000 - 86_400;
        let mut info = json!({
            "client_id": id,
            "client_id_issued_at": issued_at,
            "registration_access_token":
                self.keys.keyed(&b64(self.derive("seed-client-rat", index))),
            "client_name": format!("Seeded App {index}"),
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": method,
            "scope": "openid email profile offline_access",
            "id_token_signed_response_alg": "EdDSA",
            "contacts": [format!("ops+{index}@app{index}.example.com")],
        });
        if public {
            info["application_type"] = json!("native");
            info["redirect_uris"] = json!([format!("com.example.app{index}:/oauth2redirect")]);
        } else {
            info["application_type"] = json!("web");
            info["client_secret"] = json!(b64(self.derive("seed-client-secret", index)));
            info["client_secret_expires_at"] = json!(0);
            info["redirect_uris"] = json!([
                format!("https://app{index}.example.com/oauth/callback"),
                format!("https://app{index}.example.com/silent-renew"),
            ]);
            info["client_uri"] = json!(format!("https://app{index}.example.com"));
            info["logo_uri"] = json!(format!("https://app{index}.example.com/logo.png"));
        }
        if rng.u8(..) < 64 {
            info["data"] = json!({ "tenant": format!("tenant-{}", rng.u8(..16)), "tier": "gold" });
        }
        (id, info.to_string())
    }

    // ---- subjects ----

    /// The subject of seeded authorization and session `index`.
    pub(crate) fn subject(&self, index: u32) -> String {
        format!("user{index:07}")
    }

    /// The index of a seeded subject.
    pub(crate) fn subject_index(&self, sub: &str) -> Option<u32> {
        let digits = sub.strip_prefix("user")?;
        let index: u32 = digits.parse().ok()?;
        (index < self.count && self.subject(index) == sub).then_some(index)
    }

    // ---- authorizations ----

    /// The (subject, client) key of seeded authorization `index`.
    pub(crate) fn authorization_key(&self, index: u32) -> (String, String) {
        (
            self.subject(index),
            self.client_id(index % self.authz_clients),
        )
    }

    /// The index of the seeded authorization with this key.
    pub(crate) fn authorization_index(&self, sub: &str, cid: &str) -> Option<u32> {
        let index = self.subject_index(sub)?;
        (self.client_id(index % self.authz_clients) == cid).then_some(index)
    }

    /// The indices of the seeded authorizations of a client.
    pub(crate) fn authorization_indices_of_client(&self, cid: &str) -> Vec<u32> {
        match self.client_index(cid) {
            Some(client) if client < self.authz_clients => (client..self.count)
                .step_by(self.authz_clients as usize)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Seeded authorization `index`.
    pub(crate) fn authorization(&self, index: u32) -> Authorization {
        let (sub, cid) = self.authorization_key(index);
        let mut rng = self.rng("seed-authz", index);
        let iat = SEED_EPOCH - 86_400 - u64::from(index) * 53 % 15_552_000;
        let rti = iat + rng.u64(..86_400 * 30);
        let mut scope = vec!["openid".to_owned(), "email".to_owned()];
        let mut claims = vec!["email".to_owned(), "email_verified".to_owned()];
        if rng.bool() {
            scope.push("profile".to_owned());
            claims.extend(["name", "given_name", "family_name", "locale"].map(str::to_owned));
        }
        scope.push("offline_access".to_owned());
        Authorization {
            sub,
            cid,
            scp: Some(scope),
            clm: Some(claims),
            iat: Some(iat),
            uat: Some(rti),
            irt: Some(true),
            // Every 5th has a ten-year refresh token lifetime, the rest none.
            rtl: Some(if index % 5 == 1 { 315_360_000 } else { 0 }),
            rti: Some(rti),
            rtr: Some(index.is_multiple_of(3)),
            rtm: Some(0),
            idr: Some(index.is_multiple_of(2)),
            rts: Some(b64(self.derive("seed-authz-rts", index))),
            ate: Some(if index % 4 == 3 { "IDENTIFIER" } else { "SELF_CONTAINED" }.to_owned()),
            atl: Some(600),
            ats: Some("PUBLIC".to_owned()),
            dat: (rng.u8(..) < 96).then(|| {
                json!({ "device": format!("device-{}", rng.u32(..100_000)), "consent_ui": "v2" })
            }),
            ..Authorization::default()
        }
    }

    // ---- sessions ----

    /// The SID key of seeded session `index` (43 base64url characters, like
    /// a random 256-bit key).
    pub(crate) fn session_key(&self, index: u32) -> String {
        self.encode("seed-session-key", self.session_mask, index, 28)
    }

    /// The index of a seeded SID key.
    pub(crate) fn session_index(&self, key: &str) -> Option<u32> {
        self.decode("seed-session-key", self.session_mask, key, 28)
    }

    /// Seeded session `index`: its SID key and the session.
    pub(crate) fn session(&self, index: u32) -> (String, Session) {
        let mut rng = self.rng("seed-session", index);
        let created = self.started.saturating_sub(60 + u64::from(index) % 86_400);
        let amr: Vec<String> = if index.is_multiple_of(4) {
            vec!["pwd".to_owned(), "otp".to_owned()]
        } else {
            vec!["pwd".to_owned()]
        };
        let session = Session {
            sub: self.subject(index),
            ctx: Some("web".to_owned()),
            acr: Some(
                if amr.len() > 1 {
                    "https://loa.c2id.com/high"
                } else {
                    "https://loa.c2id.com/basic"
                }
                .to_owned(),
            ),
            amr: Some(amr),
            auth_time: Some(created),
            creation_time: Some(created),
            last_used: Some(created.max(self.started.saturating_sub(u64::from(index) % 3_600))),
            max_life: Some(DEFAULT_MAX_LIFE),
            auth_life: Some(DEFAULT_AUTH_LIFE),
            max_idle: Some(DEFAULT_MAX_IDLE),
            claims: Some(json!({
                "email": format!("user{index}@example.com"),
                "email_verified": true,
                "name": format!("User {index}"),
            })),
            data: Some(json!({
                "login_ip": format!("10.{}.{}.{}", rng.u8(..), rng.u8(..), rng.u8(1..255)),
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
            })),
            fpt: Some(b64(&self.derive("seed-session-fpt", index)[..16])),
            ..Session::default()
        };
        (self.session_key(index), session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::jwks::JwkSet;

    fn seeder(count: usize) -> Seeder {
        Seeder::new(
            Arc::new(Keys::new(&JwkSet::generate())),
            count,
            1_800_000_000,
        )
    }

    #[test]
    fn seeded_keys_decode_to_their_index() {
        let seeder = seeder(1000);
        for index in [0, 1, 37, 999] {
            assert_eq!(seeder.client_index(&seeder.client_id(index)), Some(index));
            assert_eq!(
                seeder.session_index(&seeder.session_key(index)),
                Some(index)
            );
            assert_eq!(seeder.subject_index(&seeder.subject(index)), Some(index));
            let (sub, cid) = seeder.authorization_key(index);
            assert_eq!(seeder.authorization_index(&sub, &cid), Some(index));
        }
        assert_eq!(seeder.client_index(&seeder.client_id(1000)), None);
        assert_eq!(seeder.subject_index("user0001000"), None);
        assert_eq!(seeder.subject_index("user01"), None);
        assert_eq!(seeder.client_index("AAAAAAAAAAAAAA"), None);
    }

    #[test]
    fn authorizations_are_spread_over_clients() {
        let seeder = seeder(100);
        let cid = seeder.client_id(3);
        let indices = seeder.authorization_indices_of_client(&cid);
        assert_eq!(indices.len(), 10);
        for index in indices {
            assert_eq!(seeder.authorization(index).cid, cid);
        }
        assert!(
            seeder
                .authorization_indices_of_client(&seeder.client_id(50))
                .is_empty()
        );
    }

    #[test]
    fn generation_is_deterministic() {
        let set = JwkSet::generate();
        let a = Seeder::new(Arc::new(Keys::new(&set)), 10, 1_800_000_000);
        let b = Seeder::new(Arc::new(Keys::new(&set)), 10, 1_800_000_000);
        assert_eq!(a.client(4), b.client(4));
        assert_eq!(a.authorization(7), b.authorization(7));
        assert_eq!(a.session(2), b.session(2));
    }
}
