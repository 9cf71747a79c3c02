//! Record framing: pure functions from (seq, plaintext) to bytes and back.
//!
//! ```text
//! offset  size  field
//!      0     4  len    u32 LE: number of bytes after the crc field
//!      4     4  crc    u32 LE: CRC-32 (IEEE, crc32fast) of those `len` bytes
//!      8     8  seq    u64 LE
//!     16     1  flags  reserved, 0 (a reader refuses bits it does not know)
//!     17    12  nonce  random per record
//!     29     n  ciphertext of the plaintext (n = plaintext length)
//!   29+n    16  Poly1305 tag; the associated data is seq ‖ flags
//! ```
//!
//! The CRC is there to tell a torn or rotted record from a good one cheaply
//! and without the key; the AEAD tag is there for confidentiality and to stop
//! anyone with write access to the disk from forging, editing or moving a
//! record (seq is authenticated, so a ciphertext copied to another position
//! does not open).
//!
//! [`decode`] distinguishes an **incomplete** frame (fewer bytes than the
//! header, or than `len`, says: what a write cut short by a crash leaves)
//! from a **corrupt** one (impossible length, CRC mismatch, unknown flags,
//! decryption failure). Recovery (in `segment.rs`) decides what each means
//! for the file as a whole.

use super::cipher::{Cipher, CipherError, NONCE_BYTES, TAG_BYTES};

/// Bytes before the CRC-covered part: `len` and `crc`.
pub(crate) const PREFIX_LEN: usize = 8;

/// Fixed bytes inside the CRC-covered part besides the ciphertext: seq,
/// flags, nonce and tag.
pub(crate) const OVERHEAD: usize = 8 + 1 + NONCE_BYTES + TAG_BYTES;

/// Smallest legal `len` (an empty plaintext).
pub(crate) const MIN_LEN: u32 = OVERHEAD as u32;

/// Largest plaintext the format allows: 16 MiB.
///
/// This is a property of the on-disk format, not a tuning knob: readers treat
/// a `len` above it as corruption. That is what lets recovery call a
/// bit-flipped length "corrupt" instead of mistaking it for a record that was
/// cut short (and truncating everything after it), and it bounds the
/// allocation a damaged length can cause. Appends are limited far below it
/// by `Config::max_record_bytes`, so lowering that setting never makes
/// existing records unreadable.
pub(crate) const MAX_PLAINTEXT: usize = 16 * 1024 * 1024;

/// Largest legal `len`.
pub(crate) const MAX_LEN: u32 = (MAX_PLAINTEXT + OVERHEAD) as u32;

/// The only flags value this version writes and accepts.
pub(crate) const FLAGS_NONE: u8 = 0;

const SEQ_AT: usize = PREFIX_LEN;
const FLAGS_AT: usize = SEQ_AT + 8;
const NONCE_AT: usize = FLAGS_AT + 1;
const CIPHERTEXT_AT: usize = NONCE_AT + NONCE_BYTES;

/// Why bytes could not be turned into a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The plaintext exceeds [`MAX_PLAINTEXT`].
    #[error("record too large for the format: {len} bytes, limit {limit}")]
    TooLarge {
        /// Plaintext length.
        len: usize,
        /// [`MAX_PLAINTEXT`].
        limit: usize,
    },
    /// Nonce generation or sealing failed.
    #[error("cannot encrypt record: {0}")]
    Cipher(#[from] CipherError),
}

/// Why bytes do not decode as a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header or its `len` needs: a write that was cut
    /// short (or a length field damaged into a larger plausible value).
    #[error("incomplete record: needs {needed} bytes, {available} present")]
    Incomplete {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// `len` is below [`MIN_LEN`] or above [`MAX_LEN`]: no writer produces it.
    #[error("impossible record length {len} (allowed {MIN_LEN}..={MAX_LEN})")]
    BadLength {
        /// The length field as read.
        len: u32,
    },
    /// The CRC over the record does not match the stored one.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC stored in the frame.
        stored: u32,
        /// CRC computed over the bytes present.
        computed: u32,
    },
    /// The flags byte has bits this version does not know.
    #[error("unknown record flags {flags:#04x}")]
    UnknownFlags {
        /// The flags byte.
        flags: u8,
    },
    /// The CRC is good but the AEAD tag does not verify.
    #[error("record does not decrypt (wrong journal key or tampered record)")]
    Decrypt,
}

impl FrameError {
    /// Whether this is [`FrameError::Incomplete`] (possibly a torn write)
    /// rather than corruption.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, FrameError::Incomplete { .. })
    }
}

/// A frame whose length and CRC check out, not yet decrypted.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// Total bytes the frame occupies (prefix included).
    pub frame_len: usize,
    bytes: &'a [u8],
}

/// A fully decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The record's sequence number.
    pub seq: u64,
    /// The decrypted plaintext.
    pub plaintext: Vec<u8>,
    /// Total bytes the frame occupies (prefix included).
    pub frame_len: usize,
}

/// Appends the frame for (`seq`, `plaintext`) to `out`, with a fresh nonce,
/// and returns its length.
pub(crate) fn encode_into(
    out: &mut Vec<u8>,
    seq: u64,
    plaintext: &[u8],
    cipher: &Cipher,
) -> Result<usize, EncodeError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EncodeError::TooLarge {
            len: plaintext.len(),
            limit: MAX_PLAINTEXT,
        });
    }
    let nonce = cipher.nonce()?;
    let start = out.len();
    let len = u32::try_from(OVERHEAD + plaintext.len())
        .expect("bounded by MAX_PLAINTEXT, far below u32::MAX");
    out.reserve(PREFIX_LEN + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled in below
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(FLAGS_NONE);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let frame = &mut out[start..];
    let (head, ciphertext) = frame.split_at_mut(CIPHERTEXT_AT);
    let tag = match cipher.seal_in_place(nonce, &head[SEQ_AT..NONCE_AT], ciphertext) {
        Ok(tag) => tag,
        Err(err) => {
            // Leave `out` as we found it: callers batch frames in one buffer.
            out.truncate(start);
            return Err(err.into());
        }
    };
    out.extend_from_slice(&tag);
    let frame = &mut out[start..];
    let crc = crc32fast::hash(&frame[PREFIX_LEN..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(frame.len())
}

/// The frame for (`seq`, `plaintext`), with a fresh nonce.
pub fn encode(seq: u64, plaintext: &[u8], cipher: &Cipher) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(PREFIX_LEN + OVERHEAD + plaintext.len());
    encode_into(&mut out, seq, plaintext, cipher)?;
    Ok(out)
}

/// The total frame length announced by a frame's first [`PREFIX_LEN`]
/// bytes, or why it is impossible. Lets a reader learn how much to read.
pub(crate) fn frame_len(prefix: &[u8; PREFIX_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if !(MIN_LEN..=MAX_LEN).contains(&len) {
        return Err(FrameError::BadLength { len });
    }
    Ok(PREFIX_LEN + len as usize)
}

/// Checks the frame at the start of `buf` (length, CRC, flags) without
/// decrypting it. Bytes after the frame are ignored.
pub fn parse(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Err(FrameError::Incomplete {
            needed: PREFIX_LEN,
            available: buf.len(),
        });
    };
    let total = frame_len(prefix)?;
    let Some(bytes) = buf.get(..total) else {
        return Err(FrameError::Incomplete {
            needed: total,
            available: buf.len(),
        });
    };
    let stored = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let computed = crc32fast::hash(&bytes[PREFIX_LEN..]);
    if stored != computed {
        return Err(FrameError::CrcMismatch { stored, computed });
    }
    let flags = bytes[FLAGS_AT];
    if flags != FLAGS_NONE {
        return Err(FrameError::UnknownFlags { flags });
    }
    let seq = u64::from_le_bytes(
        *bytes[SEQ_AT..]
            .first_chunk::<8>()
            .expect("total >= MIN_LEN covers the seq field"),
    );
    Ok(Frame {
        seq,
        frame_len: total,
        bytes,
    })
}

impl Frame<'_> {
    /// Decrypts the frame's plaintext.
    pub fn open(&self, cipher: &Cipher) -> Result<Vec<u8>, FrameError> {
        let nonce = *self.bytes[NONCE_AT..]
            .first_chunk::<NONCE_BYTES>()
            .expect("total >= MIN_LEN covers the nonce");
        let mut sealed = self.bytes[CIPHERTEXT_AT..].to_vec();
        let plaintext_len = cipher
            .open_in_place(nonce, &self.bytes[SEQ_AT..NONCE_AT], &mut sealed)
            .map_err(|_| FrameError::Decrypt)?
            .len();
        sealed.truncate(plaintext_len);
        Ok(sealed)
    }
}

/// Decodes and decrypts the frame at the start of `buf`. Bytes after the
/// frame are ignored; [`Decoded::frame_len`] says where the next one starts.
pub fn decode(buf: &[u8], cipher: &Cipher) -> Result<Decoded, FrameError> {
    let frame = parse(buf)?;
    Ok(Decoded {
        seq: frame.seq,
        plaintext: frame.open(cipher)?,
        frame_len: frame.frame_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::new([7; 32])
    }

    #[test]
    fn round_trip() {
        let c = cipher();
        for body in [&b""[..], b"x", b"client:abc", &[0xff; 5000]] {
            let frame = encode(42, body, &c).unwrap();
            assert_eq!(frame.len(), PREFIX_LEN + OVERHEAD + body.len());
            let decoded = decode(&frame, &c).unwrap();
            assert_eq!(decoded.seq, 42);
            assert_eq!(decoded.plaintext, body);
            assert_eq!(decoded.frame_len, frame.len());
        }
    }

    #[test]
    fn frames_concatenate_and_decode_one_at_a_time() {
        let c = cipher();
        let mut buf = Vec::new();
        encode_into(&mut buf, 1, b"one", &c).unwrap();
        encode_into(&mut buf, 2, b"two", &c).unwrap();
        let first = decode(&buf, &c).unwrap();
        let second = decode(&buf[first.frame_len..], &c).unwrap();
        assert_eq!((first.seq, &first.plaintext[..]), (1, &b"one"[..]));
        assert_eq!((second.seq, &second.plaintext[..]), (2, &b"two"[..]));
        assert_eq!(first.frame_len + second.frame_len, buf.len());
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext() {
        let frame = encode(1, b"refresh-token-value-0123456789", &cipher()).unwrap();
        assert!(
            !frame
                .windows(b"refresh-token".len())
                .any(|w| w == b"refresh-token")
        );
    }

    #[test]
    fn same_body_twice_gets_different_nonces() {
        let c = cipher();
        assert_ne!(encode(1, b"a", &c).unwrap(), encode(1, b"a", &c).unwrap());
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let c = cipher();
        let frame = encode(9, b"some body bytes", &c).unwrap();
        for cut in 0..frame.len() {
            let err = decode(&frame[..cut], &c).unwrap_err();
            assert!(err.is_incomplete(), "cut at {cut}: {err:?}");
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let c = cipher();
        let frame = encode(9, b"some body bytes", &c).unwrap();
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                let err = decode(&bad, &c).unwrap_err();
                let expected = match byte {
                    // A flipped length is either impossible or points past
                    // (or before) the real end; never a valid frame.
                    0..=3 => matches!(
                        err,
                        FrameError::BadLength { .. }
                            | FrameError::Incomplete { .. }
                            | FrameError::CrcMismatch { .. }
                    ),
                    // crc, seq, flags, nonce, ciphertext, tag
                    _ => matches!(err, FrameError::CrcMismatch { .. }),
                };
                assert!(expected, "byte {byte} bit {bit}: {err:?}");
            }
        }
    }

    /// Rewrites the CRC after an edit: what someone with write access to the
    /// disk could do. Only the AEAD catches it.
    fn recrc(frame: &mut [u8]) {
        let crc = crc32fast::hash(&frame[PREFIX_LEN..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn tampering_behind_a_valid_crc_fails_to_decrypt() {
        let c = cipher();
        let frame = encode(9, b"some body bytes", &c).unwrap();
        // seq (authenticated as associated data), nonce, ciphertext, tag
        for byte in [SEQ_AT, NONCE_AT, CIPHERTEXT_AT + 3, frame.len() - 1] {
            let mut bad = frame.clone();
            bad[byte] ^= 0x10;
            recrc(&mut bad);
            assert_eq!(decode(&bad, &c).unwrap_err(), FrameError::Decrypt, "{byte}");
        }
    }

    #[test]
    fn unknown_flags_are_refused() {
        let c = cipher();
        let mut frame = encode(9, b"x", &c).unwrap();
        frame[FLAGS_AT] = 0x80;
        recrc(&mut frame);
        assert_eq!(
            decode(&frame, &c).unwrap_err(),
            FrameError::UnknownFlags { flags: 0x80 }
        );
    }

    #[test]
    fn wrong_key_fails_to_decrypt() {
        let frame = encode(9, b"x", &cipher()).unwrap();
        assert_eq!(
            decode(&frame, &Cipher::new([8; 32])).unwrap_err(),
            FrameError::Decrypt
        );
        // The CRC check alone does not need the key.
        assert_eq!(parse(&frame).unwrap().seq, 9);
    }

    #[test]
    fn impossible_lengths_are_corrupt_not_incomplete() {
        let c = cipher();
        for len in [0, MIN_LEN - 1, MAX_LEN + 1, u32::MAX] {
            let mut frame = encode(1, b"x", &c).unwrap();
            frame[..4].copy_from_slice(&len.to_le_bytes());
            assert_eq!(
                decode(&frame, &c).unwrap_err(),
                FrameError::BadLength { len }
            );
        }
    }

    #[test]
    fn oversized_plaintext_is_refused_at_encode() {
        let big = vec![0; MAX_PLAINTEXT + 1];
        assert!(matches!(
            encode(1, &big, &cipher()),
            Err(EncodeError::TooLarge { .. })
        ));
    }
}
