//! The cryptography of the emulated server, all derived from its JWK set:
//! HMAC-protected identifiers (`<key>.<hmac>`), AES-GCM encryption of
//! refresh tokens with a deterministic or a random nonce (the lenient and
//! strict readings), and Ed25519-signed JWTs.
//!
//! Everything that must survive a migration is a pure function of the JWK
//! set and the stored record, so a second emulator loaded with the same set
//! recomputes identical SIDs and accepts the same refresh tokens and JWTs.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use serde_json::Value;

use crate::emulator::jwks::{JwkSet, REFRESH_TOKEN_KID};

/// Bytes of HMAC kept in a keyed identifier: 128 bits, 22 base64url
/// characters, as in the SIDs shown by the Connect2id migration guide.
const MAC_LEN: usize = 16;

/// The key material of one emulated server.
pub(crate) struct Keys {
    hmac: hmac::Key,
    aead: LessSafeKey,
    aead_enc: &'static str,
    signer: Ed25519KeyPair,
    kid: String,
    verifiers: Vec<(String, Vec<u8>)>,
    rng: SystemRandom,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys").field("kid", &self.kid).finish()
    }
}

/// Base64url without padding.
pub(crate) fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub(crate) fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Compares two byte strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The base64url SHA-256 of `data` (PKCE `S256`).
pub(crate) fn sha256_b64(data: &[u8]) -> String {
    b64(ring::digest::digest(&ring::digest::SHA256, data))
}

impl Keys {
    /// Prepares the keys of `jwks` for use.
    pub(crate) fn new(jwks: &JwkSet) -> Self {
        let refresh = jwks.refresh_token_key();
        let (algorithm, aead_enc) = if refresh.len() == 16 {
            (&AES_128_GCM, "A128GCM")
        } else {
            (&AES_256_GCM, "A256GCM")
        };
        let aead = LessSafeKey::new(
            UnboundKey::new(algorithm, refresh)
                .expect("JwkSet checks the refresh-token key is 16 or 32 bytes"),
        );
        let signer =
            Ed25519KeyPair::from_seed_and_public_key(jwks.signing_seed(), jwks.signing_public())
                .expect("JwkSet checks the signing key pair");
        Self {
            hmac: hmac::Key::new(hmac::HMAC_SHA256, jwks.hmac_key()),
            aead,
            aead_enc,
            signer,
            kid: jwks.signing_kid().to_owned(),
            verifiers: jwks.ed25519_public_keys(),
            rng: SystemRandom::new(),
        }
    }

    /// `N` random bytes from the operating system.
    pub(crate) fn random<const N: usize>(&self) -> [u8; N] {
        let mut bytes = [0u8; N];
        self.rng
            .fill(&mut bytes)
            .expect("the operating system random source does not fail");
        bytes
    }

    /// A random base64url string of `N` bytes of entropy.
    pub(crate) fn random_string<const N: usize>(&self) -> String {
        b64(self.random::<N>())
    }

    /// HMAC-SHA256 of `label` and `data` under the `hmac` key. The label
    /// separates the uses of the one key.
    pub(crate) fn mac(&self, label: &str, data: &[u8]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.hmac);
        context.update(label.as_bytes());
        context.update(&[0]);
        context.update(data);
        let tag = context.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Appends the HMAC to an identifier key: `<key>.<hmac>`. This is the
    /// shape of SIDs, authorization codes and identifier access tokens. The
    /// MAC covers the key text exactly, so an imported `SID-Key` from another
    /// server with the same JWK set yields the same SID.
    pub(crate) fn keyed(&self, key: &str) -> String {
        let mac = hmac::sign(&self.hmac, key.as_bytes());
        format!("{key}.{}", b64(&mac.as_ref()[..MAC_LEN]))
    }

    /// A new random keyed identifier with a 256-bit key.
    pub(crate) fn new_keyed(&self) -> String {
        self.keyed(&self.random_string::<32>())
    }

    /// The key of a keyed identifier whose HMAC verifies, or `None`. Splits
    /// at the last `.`: keys from other servers may have any length.
    pub(crate) fn verify_keyed<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (key, mac) = value.rsplit_once('.')?;
        if key.is_empty() {
            return None;
        }
        let expected = hmac::sign(&self.hmac, key.as_bytes());
        let given = unb64(mac)?;
        constant_time_eq(&expected.as_ref()[..MAC_LEN], &given).then_some(key)
    }

    /// Encrypts `plaintext` with a nonce derived from it, so the same
    /// plaintext always yields the same token: a long-lived refresh token is
    /// rebuilt from the stored `rts` and still equals what the client holds
    /// (the lenient reading). Safe because each plaintext embeds random
    /// refresh-token material, so distinct plaintexts never share a nonce.
    pub(crate) fn seal_deterministic(&self, plaintext: &[u8]) -> String {
        let mac = self.mac("refresh-token-nonce", plaintext);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&mac[..NONCE_LEN]);
        self.seal_with(nonce, plaintext)
    }

    /// Encrypts `plaintext` with a random nonce: every sealing of the same
    /// record is a different string, as a real server's recreated refresh
    /// tokens are (the strict reading). 96 random bits per token keep the
    /// nonce-collision risk negligible for any emulated workload.
    pub(crate) fn seal_random(&self, plaintext: &[u8]) -> String {
        self.seal_with(self.random::<NONCE_LEN>(), plaintext)
    }

    fn seal_with(&self, nonce: [u8; NONCE_LEN], plaintext: &[u8]) -> String {
        let mut buffer = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"c2id-rt"),
                &mut buffer,
            )
            .expect("AES-GCM sealing of a short message does not fail");
        let mut token = nonce.to_vec();
        token.extend_from_slice(&buffer);
        b64(token)
    }

    /// Opens a token from [`Keys::seal_deterministic`] or
    /// [`Keys::seal_random`]: the nonce travels with the token, so either
    /// kind opens under the same key.
    pub(crate) fn open_sealed(&self, token: &str) -> Option<Vec<u8>> {
        let bytes = unb64(token)?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = sealed.to_vec();
        let plaintext = self
            .aead
            .open_in_place(nonce, Aad::from(b"c2id-rt"), &mut buffer)
            .ok()?;
        Some(plaintext.to_vec())
    }

    /// A compact JWE (`alg: dir`, AES-GCM with the `refresh-token-encrypt`
    /// key) of `claims`: the self-contained refresh token of a transient
    /// authorization.
    pub(crate) fn encrypt_jwe(&self, claims: &Value) -> String {
        let header = serde_json::json!({
            "alg": "dir",
            "enc": self.aead_enc,
            "kid": REFRESH_TOKEN_KID,
        });
        let header = b64(header.to_string());
        let iv = self.random::<NONCE_LEN>();
        let mut buffer = claims.to_string().into_bytes();
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(header.as_bytes()),
                &mut buffer,
            )
            .expect("AES-GCM sealing of a short message does not fail");
        format!(
            "{header}..{}.{}.{}",
            b64(iv),
            b64(&buffer),
            b64(tag.as_ref())
        )
    }

    /// Decrypts a JWE from [`Keys::encrypt_jwe`] into its claims.
    pub(crate) fn decrypt_jwe(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (Some(header), Some(""), Some(iv), Some(ciphertext), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let nonce = Nonce::try_assume_unique_for_key(&unb64(iv)?).ok()?;
        let mut buffer = unb64(ciphertext)?;
        buffer.extend_from_slice(&unb64(tag)?);
        let plaintext = self
            .aead
            .open_in_place(nonce, Aad::from(header.as_bytes()), &mut buffer)
            .ok()?;
        serde_json::from_slice(plaintext).ok()
    }

    /// A JWT signed with the Ed25519 signing key (`alg: EdDSA`).
    pub(crate) fn sign_jwt(&self, typ: &str, claims: &Value) -> String {
        let header = serde_json::json!({ "alg": "EdDSA", "kid": self.kid, "typ": typ });
        let signing_input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let signature = self.signer.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(signature.as_ref()))
    }

    /// The claims of a JWT whose EdDSA signature verifies under a key of the
    /// set; expiry is the caller's business.
    pub(crate) fn verify_jwt(&self, token: &str) -> Option<Value> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, claims) = signing_input.split_once('.')?;
        let header: Value = serde_json::from_slice(&unb64(header)?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("EdDSA") {
            return None;
        }
        let kid = header.get("kid").and_then(Value::as_str)?;
        let (_, public) = self.verifiers.iter().find(|(id, _)| id == kid)?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(signing_input.as_bytes(), &unb64(signature)?)
            .ok()?;
        serde_json::from_slice(&unb64(claims)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_identifiers_verify_only_under_the_same_set() {
        let set = JwkSet::generate();
        let a = Keys::new(&set);
        let same = Keys::new(&JwkSet::from_json(&set.to_json()).unwrap());
        let other = Keys::new(&JwkSet::generate());
        let sid = a.new_keyed();
        let key = sid.rsplit_once('.').unwrap().0;
        assert_eq!(a.verify_keyed(&sid), Some(key));
        assert_eq!(same.keyed(key), sid);
        assert_eq!(other.verify_keyed(&sid), None);
        assert_eq!(
            a.verify_keyed(&format!("{key}.AAAAAAAAAAAAAAAAAAAAAA")),
            None
        );
    }

    #[test]
    fn deterministic_sealing_is_stable_and_keyed() {
        let set = JwkSet::generate();
        let a = Keys::new(&set);
        let token = a.seal_deterministic(b"material");
        assert_eq!(token, a.seal_deterministic(b"material"));
        assert_ne!(token, a.seal_deterministic(b"material2"));
        assert_eq!(a.open_sealed(&token).unwrap(), b"material");
        assert!(Keys::new(&JwkSet::generate()).open_sealed(&token).is_none());
    }

    #[test]
    fn random_sealing_differs_every_time_but_opens_under_the_same_key() {
        let set = JwkSet::generate();
        let a = Keys::new(&set);
        let same = Keys::new(&JwkSet::from_json(&set.to_json()).unwrap());
        let first = a.seal_random(b"material");
        let second = a.seal_random(b"material");
        assert_ne!(first, second);
        assert_ne!(first, a.seal_deterministic(b"material"));
        for token in [&first, &second] {
            assert_eq!(same.open_sealed(token).unwrap(), b"material");
        }
        assert!(Keys::new(&JwkSet::generate()).open_sealed(&first).is_none());
    }

    #[test]
    fn jwe_and_jwt_round_trip() {
        let keys = Keys::new(&JwkSet::generate());
        let claims = serde_json::json!({"sub": "alice", "n": 1});
        let jwe = keys.encrypt_jwe(&claims);
        assert_eq!(jwe.split('.').count(), 5);
        assert_eq!(keys.decrypt_jwe(&jwe).unwrap(), claims);
        let jwt = keys.sign_jwt("at+jwt", &claims);
        assert_eq!(keys.verify_jwt(&jwt).unwrap(), claims);
        let mut tampered = jwt.clone();
        tampered.insert(jwt.find('.').unwrap() + 2, 'x');
        assert!(keys.verify_jwt(&tampered).is_none());
        assert!(Keys::new(&JwkSet::generate()).verify_jwt(&jwt).is_none());
    }
}
