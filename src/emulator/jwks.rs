//! The server JWK set of an emulated Connect2id server.
//!
//! A Connect2id server derives most of its unguessable values from its JWK
//! set, which is why the migration guide's first step is "configure the
//! target with the same JWK set as the source". The emulator mirrors the
//! three keys that matter for a migration:
//!
//! * an Ed25519 signing key (`kty: OKP`, `crv: Ed25519`, `use: sig`) that
//!   signs self-contained access tokens and ID tokens;
//! * an `oct` key with `kid: "hmac"` that authenticates subject session IDs
//!   (`<key>.<hmac>`), authorization codes and identifier access tokens;
//! * an `oct` key with `kid: "refresh-token-encrypt"` (AES-GCM) that
//!   encrypts refresh tokens.
//!
//! Two emulators loaded with the same set therefore compute the same SID
//! HMACs and accept each other's refresh tokens and JWTs; with different sets
//! they do not. Other keys in a loaded set (for example the RSA keys of a
//! real Connect2id set) are kept as given and published in their public form.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Map, Value, json};

/// The `kid` of the HMAC key.
pub(crate) const HMAC_KID: &str = "hmac";
/// The `kid` of the refresh-token encryption key.
pub(crate) const REFRESH_TOKEN_KID: &str = "refresh-token-encrypt";
/// The `kid` given to the signing key of a generated set.
pub(crate) const GENERATED_SIGNING_KID: &str = "sig-1";

/// JWK members that hold private or secret key material; they are removed
/// from the public form of a key.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The key types that have a public form (RFC 7518 §6, RFC 8037).
const PUBLIC_KEY_TYPES: &[&str] = &["RSA", "EC", "OKP"];

/// Why a JWK set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The JWK set file could not be read.
    #[error("failed to read JWK set file {path}: {source}")]
    Read {
        /// The file named on the command line.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The text is not a JSON object with a `keys` array of objects.
    #[error("JWK set is not a JSON object with a \"keys\" array: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// A required key is absent.
    #[error("JWK set has no key with kid \"{kid}\"")]
    MissingKey {
        /// The `kid` that was looked for.
        kid: &'static str,
    },
    /// No Ed25519 private key usable for signing is present.
    #[error(
        "JWK set has no Ed25519 signing key (kty \"OKP\", crv \"Ed25519\", with \"d\" and a \"kid\")"
    )]
    MissingSigningKey,
    /// A key is present but its material is unusable.
    #[error("JWK \"{kid}\" is invalid: {reason}")]
    InvalidKey {
        /// The `kid` of the offending key.
        kid: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// A server JWK set: the signing, HMAC and refresh-token keys plus any other
/// keys the set carried. Cheap to clone.
#[derive(Clone)]
pub struct JwkSet {
    /// Every key as given (or generated), private members included.
    keys: Vec<Map<String, Value>>,
    signing_kid: String,
    signing_seed: [u8; 32],
    signing_public: [u8; 32],
    hmac: Vec<u8>,
    refresh: Vec<u8>,
}

impl fmt::Debug for JwkSet {
    // Never print key material: only the key IDs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self
            .keys
            .iter()
            .filter_map(|key| key.get("kid").and_then(Value::as_str))
            .collect();
        f.debug_struct("JwkSet")
            .field("signing_kid", &self.signing_kid)
            .field("kids", &kids)
            .finish()
    }
}

impl JwkSet {
    /// Generates a fresh set: an Ed25519 signing key `sig-1`, a 256-bit
    /// `hmac` key and a 256-bit `refresh-token-encrypt` key.
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let mut seed = [0u8; 32];
        let mut hmac = [0u8; 32];
        let mut refresh = [0u8; 32];
        for buffer in [&mut seed, &mut hmac, &mut refresh] {
            rng.fill(buffer)
                .expect("the operating system random source does not fail");
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("any 32-byte seed is a valid Ed25519 private key");
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        let keys = vec![
            object(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "use": "sig",
                "alg": "EdDSA",
                "kid": GENERATED_SIGNING_KID,
                "x": URL_SAFE_NO_PAD.encode(public),
                "d": URL_SAFE_NO_PAD.encode(seed),
            })),
            object(json!({
                "kty": "oct",
                "use": "sig",
                "alg": "HS256",
                "kid": HMAC_KID,
                "k": URL_SAFE_NO_PAD.encode(hmac),
            })),
            object(json!({
                "kty": "oct",
                "use": "enc",
                "alg": "A256GCM",
                "kid": REFRESH_TOKEN_KID,
                "k": URL_SAFE_NO_PAD.encode(refresh),
            })),
        ];
        Self {
            keys,
            signing_kid: GENERATED_SIGNING_KID.to_owned(),
            signing_seed: seed,
            signing_public: public,
            hmac: hmac.to_vec(),
            refresh: refresh.to_vec(),
        }
    }

    /// Parses a full (private) JWK set, as written by [`JwkSet::to_json`].
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(json).map_err(|err| Error::Malformed {
            reason: err.to_string(),
        })?;
        let Some(array) = value.get("keys").and_then(Value::as_array) else {
            return Err(Error::Malformed {
                reason: "no \"keys\" array".to_owned(),
            });
        };
        let mut keys = Vec::with_capacity(array.len());
        for key in array {
            let Value::Object(key) = key else {
                return Err(Error::Malformed {
                    reason: "a key is not a JSON object".to_owned(),
                });
            };
            keys.push(key.clone());
        }
        let hmac = oct_material(&keys, HMAC_KID)?;
        if hmac.len() < 32 {
            return Err(Error::InvalidKey {
                kid: HMAC_KID.to_owned(),
                reason: format!("{} bytes, at least 32 required", hmac.len()),
            });
        }
        let refresh = oct_material(&keys, REFRESH_TOKEN_KID)?;
        if refresh.len() != 16 && refresh.len() != 32 {
            return Err(Error::InvalidKey {
                kid: REFRESH_TOKEN_KID.to_owned(),
                reason: format!("{} bytes, an AES key needs 16 or 32", refresh.len()),
            });
        }
        let (signing_kid, signing_seed, signing_public) = signing_material(&keys)?;
        Ok(Self {
            keys,
            signing_kid,
            signing_seed,
            signing_public,
            hmac,
            refresh,
        })
    }

    /// Reads a full (private) JWK set from a file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// The full set including private and secret key material: what
    /// `handover emulate --jwks FILE` reads.
    pub fn to_json(&self) -> String {
        let keys: Vec<Value> = self.keys.iter().cloned().map(Value::Object).collect();
        serde_json::to_string_pretty(&json!({ "keys": keys }))
            .expect("serialising a JSON value cannot fail")
    }

    /// The public set served at `/jwks.json`: the public members of the
    /// asymmetric keys only. Keys are let through by an allowlist of key
    /// types (`RSA`, `EC`, `OKP`), so a secret (`oct`) key, or one of a type
    /// this emulator does not know, is never published, and the private
    /// members of every published key are removed.
    pub fn public_json(&self) -> String {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .filter(|key| {
                key.get("kty")
                    .and_then(Value::as_str)
                    .is_some_and(|kty| PUBLIC_KEY_TYPES.contains(&kty))
            })
            .map(|key| {
                let mut public = key.clone();
                for member in PRIVATE_MEMBERS {
                    public.remove(*member);
                }
                Value::Object(public)
            })
            .collect();
        serde_json::to_string(&json!({ "keys": keys }))
            .expect("serialising a JSON value cannot fail")
    }

    /// The same public keys with new secret ones: what a server whose
    /// operator copied only `/jwks.json` would hold. Its SID HMACs and
    /// refresh tokens are its own, while every published key is equal.
    pub fn with_new_secret_keys(&self) -> Self {
        let fresh = Self::generate();
        let mut next = self.clone();
        for kid in [HMAC_KID, REFRESH_TOKEN_KID] {
            let replacement = fresh
                .keys
                .iter()
                .find(|key| key.get("kid").and_then(Value::as_str) == Some(kid))
                .cloned();
            if let (Some(replacement), Some(slot)) = (
                replacement,
                next.keys
                    .iter_mut()
                    .find(|key| key.get("kid").and_then(Value::as_str) == Some(kid)),
            ) {
                *slot = replacement;
            }
        }
        next.hmac = fresh.hmac.clone();
        next.refresh = fresh.refresh.clone();
        next
    }

    /// The `kid` of the key that signs tokens.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// The Ed25519 private key seed of the signing key.
    pub(crate) fn signing_seed(&self) -> &[u8; 32] {
        &self.signing_seed
    }

    /// The Ed25519 public key of the signing key.
    pub(crate) fn signing_public(&self) -> &[u8; 32] {
        &self.signing_public
    }

    /// Every Ed25519 public key in the set by `kid`, so that tokens signed
    /// with a key that has since been rotated out of signing still verify.
    pub(crate) fn ed25519_public_keys(&self) -> Vec<(String, Vec<u8>)> {
        self.keys
            .iter()
            .filter(|key| {
                key.get("kty").and_then(Value::as_str) == Some("OKP")
                    && key.get("crv").and_then(Value::as_str) == Some("Ed25519")
            })
            .filter_map(|key| {
                let kid = key.get("kid")?.as_str()?.to_owned();
                let x = URL_SAFE_NO_PAD.decode(key.get("x")?.as_str()?).ok()?;
                Some((kid, x))
            })
            .collect()
    }

    /// The secret of the `hmac` key.
    pub(crate) fn hmac_key(&self) -> &[u8] {
        &self.hmac
    }

    /// The secret of the `refresh-token-encrypt` key (16 or 32 bytes).
    pub(crate) fn refresh_token_key(&self) -> &[u8] {
        &self.refresh
    }
}

/// Unwraps a `json!` object literal.
fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("called with object literals only"),
    }
}

/// The decoded `k` of the `oct` key with this `kid`.
fn oct_material(keys: &[Map<String, Value>], kid: &'static str) -> Result<Vec<u8>, Error> {
    let Some(key) = keys
        .iter()
        .find(|key| key.get("kid").and_then(Value::as_str) == Some(kid))
    else {
        return Err(Error::MissingKey { kid });
    };
    let invalid = |reason: &str| Error::InvalidKey {
        kid: kid.to_owned(),
        reason: reason.to_owned(),
    };
    if key.get("kty").and_then(Value::as_str) != Some("oct") {
        return Err(invalid("kty must be \"oct\""));
    }
    let k = key
        .get("k")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no \"k\" member"))?;
    URL_SAFE_NO_PAD
        .decode(k)
        .map_err(|_| invalid("\"k\" is not base64url"))
}

/// The first Ed25519 private key meant for signing: its kid, seed and
/// public key.
fn signing_material(keys: &[Map<String, Value>]) -> Result<(String, [u8; 32], [u8; 32]), Error> {
    let Some(key) = keys.iter().find(|key| {
        key.get("kty").and_then(Value::as_str) == Some("OKP")
            && key.get("crv").and_then(Value::as_str) == Some("Ed25519")
            && key.contains_key("d")
            && key.contains_key("kid")
            && key.get("use").and_then(Value::as_str).unwrap_or("sig") == "sig"
    }) else {
        return Err(Error::MissingSigningKey);
    };
    let kid = key
        .get("kid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let invalid = |reason: &str| Error::InvalidKey {
        kid: kid.clone(),
        reason: reason.to_owned(),
    };
    let decode32 = |member: &str| -> Result<[u8; 32], Error> {
        let text = key
            .get(member)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("no \"{member}\" member")))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| invalid(&format!("\"{member}\" is not base64url")))?;
        bytes
            .try_into()
            .map_err(|_| invalid(&format!("\"{member}\" is not 32 bytes")))
    };
    let seed = decode32("d")?;
    let public = decode32("x")?;
    Ed25519KeyPair::from_seed_and_public_key(&seed, &public)
        .map_err(|_| invalid("\"d\" and \"x\" do not form an Ed25519 key pair"))?;
    Ok((kid, seed, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_set_round_trips_through_json() {
        let set = JwkSet::generate();
        let loaded = JwkSet::from_json(&set.to_json()).unwrap();
        assert_eq!(loaded.hmac_key(), set.hmac_key());
        assert_eq!(loaded.refresh_token_key(), set.refresh_token_key());
        assert_eq!(loaded.signing_seed(), set.signing_seed());
        assert_eq!(loaded.signing_kid(), GENERATED_SIGNING_KID);
    }

    #[test]
    fn public_form_has_no_secret_material() {
        let set = JwkSet::generate();
        let public: Value = serde_json::from_str(&set.public_json()).unwrap();
        let keys = public["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "only the Ed25519 key is public");
        assert_eq!(keys[0]["kty"], "OKP");
        assert!(keys[0].get("d").is_none());
        assert!(keys[0].get("x").is_some());
    }

    #[test]
    fn loaded_sets_publish_no_secret_or_private_material() {
        let set = JwkSet::generate();
        let mut value: Value = serde_json::from_str(&set.to_json()).unwrap();
        let keys = value["keys"].as_array_mut().unwrap();
        keys.push(json!({
            "kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
            "n": "modulus", "e": "AQAB", "d": "private-exponent", "p": "prime-p",
            "q": "prime-q", "dp": "dp", "dq": "dq", "qi": "qi",
        }));
        keys.push(json!({
            "kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "x", "y": "y", "d": "private",
        }));
        keys.push(json!({ "kty": "oct", "kid": "subject-encrypt", "k": "secret-1" }));
        keys.push(json!({ "kty": "oct", "kid": "access-token-dir", "use": "enc", "k": "s2" }));
        keys.push(json!({ "kty": "unknown", "kid": "odd", "k": "secret-3", "x": "x" }));
        keys.push(json!({ "kid": "no-type", "k": "secret-4" }));
        let loaded = JwkSet::from_json(&value.to_string()).unwrap();
        let public: Value = serde_json::from_str(&loaded.public_json()).unwrap();
        let kids: Vec<&str> = public["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["sig-1", "rsa-1", "ec-1"]);
        let text = public.to_string();
        for secret in ["secret-", "private", "prime-", "\"d\"", "\"k\"", "\"qi\""] {
            assert!(!text.contains(secret), "{secret} published: {text}");
        }
        assert_eq!(public["keys"][1]["n"], "modulus");
        assert_eq!(public["keys"][2]["y"], "y");
    }

    #[test]
    fn missing_keys_are_named() {
        let set = JwkSet::generate();
        let mut value: Value = serde_json::from_str(&set.to_json()).unwrap();
        value["keys"]
            .as_array_mut()
            .unwrap()
            .retain(|key| key["kid"] != REFRESH_TOKEN_KID);
        let err = JwkSet::from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains(REFRESH_TOKEN_KID), "{err}");

        value["keys"]
            .as_array_mut()
            .unwrap()
            .retain(|key| key["kid"] != HMAC_KID);
        let err = JwkSet::from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains("\"hmac\""), "{err}");
    }

    #[test]
    fn mismatched_ed25519_pair_is_rejected() {
        let a = JwkSet::generate();
        let b = JwkSet::generate();
        let mut value: Value = serde_json::from_str(&a.to_json()).unwrap();
        value["keys"][0]["x"] = Value::String(URL_SAFE_NO_PAD.encode(b.signing_public()));
        assert!(matches!(
            JwkSet::from_json(&value.to_string()),
            Err(Error::InvalidKey { .. })
        ));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let set = JwkSet::generate();
        let debug = format!("{set:?}");
        assert!(!debug.contains(&URL_SAFE_NO_PAD.encode(set.hmac_key())));
        assert!(debug.contains("sig-1"));
    }
}
