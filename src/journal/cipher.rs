//! At-rest encryption of journal bodies: ChaCha20-Poly1305 (via `ring`) with
//! a random 96-bit nonce per record.
//!
//! Why a random nonce and not one derived from the sequence number: a torn
//! tail is truncated on recovery and its sequence numbers are handed out
//! again, so a seq-derived nonce would encrypt two different bodies under the
//! same (key, nonce) pair, which breaks ChaCha20-Poly1305 completely. With
//! random nonces the collision probability after `n` records under one key is
//! about `n² / 2⁹⁷`: below 2⁻³³ after four billion records, so the key only
//! needs rotating long after the migration is over.
//!
//! Key material is never logged: [`Cipher`]'s `Debug` prints `Cipher(..)` and
//! [`KeyError`] never echoes the offending input.

use std::fmt;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a key in bytes (ChaCha20-Poly1305 takes 256-bit keys).
pub const KEY_LEN: usize = 32;

/// Length of the per-record nonce stored in every frame.
pub(crate) const NONCE_BYTES: usize = NONCE_LEN;

/// Length of the authentication tag appended to every ciphertext.
pub(crate) const TAG_BYTES: usize = 16;

/// Why a textual key was rejected. The message never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The hex string does not have exactly 64 characters (after trimming
    /// surrounding whitespace, which files and env vars often carry).
    #[error("journal key must be 64 hex characters (32 bytes), got {len} characters")]
    WrongLength {
        /// Number of characters found.
        len: usize,
    },
    /// A character outside `0-9a-fA-F`.
    #[error("journal key is not hex: invalid character at position {position}")]
    NotHex {
        /// Zero-based character position of the first invalid character.
        position: usize,
    },
}

/// Sealing or opening failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// The system random number generator failed to produce a nonce.
    #[error("system random number generator failed")]
    Rng,
    /// `ring` refused to seal (the input exceeds the AEAD's length limit).
    #[error("encryption failed")]
    Seal,
    /// The tag does not verify: wrong key, or the ciphertext, nonce or
    /// associated data were altered.
    #[error("decryption failed (wrong journal key or tampered record)")]
    Open,
}

/// An AEAD key plus a nonce source. Cheap to clone (the key schedule is
/// copied, the RNG is stateless).
#[derive(Clone)]
pub struct Cipher {
    key: LessSafeKey,
    rng: SystemRandom,
    /// A key derived from the journal key for [`Cipher::tag`]: the same
    /// bytes never serve two primitives.
    tag_key: ring::hmac::Key,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    /// A cipher for `key`.
    pub fn new(key: [u8; KEY_LEN]) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key)
            .expect("a 32-byte key is always valid for ChaCha20-Poly1305");
        let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let derived = ring::hmac::sign(&derive, b"handover lane tag v1");
        Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
            tag_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// A keyed, one-way 16-byte tag of `data` (HMAC-SHA-256 under a key
    /// derived from the journal key, cut to 128 bits). Lets a shared store
    /// group records by key (a lane) without ever holding the key itself,
    /// which may name a token or a session.
    pub fn tag(&self, data: &[u8]) -> [u8; 16] {
        let full = ring::hmac::sign(&self.tag_key, data);
        let mut out = [0u8; 16];
        out.copy_from_slice(&full.as_ref()[..16]);
        out
    }

    /// Parses a key written as 64 hex characters (either case), the form the
    /// operator puts in `HANDOVER_JOURNAL_KEY` or a key file. Surrounding
    /// whitespace (a trailing newline in a file) is ignored.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let chars: Vec<char> = text.chars().collect();
        if chars.len() != KEY_LEN * 2 {
            return Err(KeyError::WrongLength { len: chars.len() });
        }
        let digit = |position: usize| {
            chars[position]
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
                .ok_or(KeyError::NotHex { position })
        };
        let mut key = [0u8; KEY_LEN];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = (digit(2 * i)? << 4) | digit(2 * i + 1)?;
        }
        Ok(Self::new(key))
    }

    /// A fresh random nonce. Called once per record.
    pub fn nonce(&self) -> Result<[u8; NONCE_BYTES], CipherError> {
        let mut nonce = [0u8; NONCE_BYTES];
        self.rng.fill(&mut nonce).map_err(|_| CipherError::Rng)?;
        Ok(nonce)
    }

    /// Encrypts `in_out` in place and returns the tag. `aad` is authenticated
    /// but not encrypted.
    pub(crate) fn seal_in_place(
        &self,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_BYTES], CipherError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| CipherError::Seal)?;
        let mut out = [0u8; TAG_BYTES];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `ciphertext_and_tag` in place and returns the plaintext, which
    /// is the buffer minus its last 16 (tag) bytes.
    pub(crate) fn open_in_place<'a>(
        &self,
        nonce: [u8; NONCE_BYTES],
        aad: &[u8],
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a mut [u8], CipherError> {
        self.key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                ciphertext_and_tag,
            )
            .map_err(|_| CipherError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191A1B1C1D1E1F";

    fn seal(cipher: &Cipher, plaintext: &[u8]) -> ([u8; NONCE_BYTES], Vec<u8>) {
        let nonce = cipher.nonce().unwrap();
        let mut buf = plaintext.to_vec();
        let tag = cipher.seal_in_place(nonce, b"aad", &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        (nonce, buf)
    }

    #[test]
    fn hex_key_round_trips_to_the_same_cipher() {
        let from_hex = Cipher::from_hex(HEX).unwrap();
        let mut raw = [0u8; 32];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = u8::try_from(i).unwrap();
        }
        let from_raw = Cipher::new(raw);
        let (nonce, mut sealed) = seal(&from_hex, b"secret token");
        let opened = from_raw.open_in_place(nonce, b"aad", &mut sealed).unwrap();
        assert_eq!(opened, b"secret token");
    }

    #[test]
    fn hex_key_tolerates_surrounding_whitespace() {
        assert!(Cipher::from_hex(&format!("  {HEX}\n")).is_ok());
    }

    #[test]
    fn hex_key_of_wrong_length_is_rejected_with_its_length() {
        let err = Cipher::from_hex(&HEX[..62]).unwrap_err();
        assert_eq!(err, KeyError::WrongLength { len: 62 });
        assert!(err.to_string().contains("62"));
        assert_eq!(
            Cipher::from_hex("").unwrap_err(),
            KeyError::WrongLength { len: 0 }
        );
        // Multi-byte characters are counted as characters, not bytes.
        let err = Cipher::from_hex(&format!("{}é", &HEX[..63])).unwrap_err();
        assert!(matches!(err, KeyError::NotHex { position: 63 }));
    }

    #[test]
    fn hex_key_with_non_hex_character_names_the_position_not_the_key() {
        let bad = format!("{}g{}", &HEX[..10], &HEX[11..]);
        let err = Cipher::from_hex(&bad).unwrap_err();
        assert_eq!(err, KeyError::NotHex { position: 10 });
        assert!(!err.to_string().contains(&bad));
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let cipher = Cipher::from_hex(HEX).unwrap();
        assert_eq!(format!("{cipher:?}"), "Cipher(..)");
    }

    #[test]
    fn wrong_key_is_rejected() {
        let a = Cipher::new([1; 32]);
        let b = Cipher::new([2; 32]);
        let (nonce, mut sealed) = seal(&a, b"body");
        assert_eq!(
            b.open_in_place(nonce, b"aad", &mut sealed).unwrap_err(),
            CipherError::Open
        );
    }

    #[test]
    fn altered_aad_is_rejected() {
        let a = Cipher::new([1; 32]);
        let (nonce, mut sealed) = seal(&a, b"body");
        assert!(a.open_in_place(nonce, b"AAD", &mut sealed).is_err());
    }

    #[test]
    fn nonces_differ() {
        let a = Cipher::new([1; 32]);
        assert_ne!(a.nonce().unwrap(), a.nonce().unwrap());
    }
}
