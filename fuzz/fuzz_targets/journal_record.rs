//! The journal record decoder (`handover::journal::record`), on arbitrary
//! bytes: no panic, no allocation beyond the format's limit, a decoded
//! frame never claims more bytes than it was given, `parse` and `decode`
//! agree, anything encoded decodes back to itself, and no single flipped
//! bit in a real frame decodes.
#![no_main]

use handover::journal::Cipher;
use handover::journal::record::{FrameError, decode, encode, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cipher = Cipher::new([7; 32]);
    // Walk the bytes as a segment is walked: frame after frame.
    let mut rest = data;
    while !rest.is_empty() {
        let parsed = parse(rest);
        match decode(rest, &cipher) {
            Ok(decoded) => {
                assert!(decoded.frame_len <= rest.len());
                let frame = parsed.expect("decode succeeded, so parse does");
                assert_eq!(frame.seq, decoded.seq);
                assert_eq!(frame.frame_len, decoded.frame_len);
                rest = &rest[decoded.frame_len..];
            }
            Err(FrameError::Decrypt) => {
                let frame = parsed.expect("only a parsed frame can fail to decrypt");
                assert!(frame.frame_len <= rest.len());
                rest = &rest[frame.frame_len..];
            }
            Err(err) => {
                assert_eq!(parsed.err(), Some(err));
                rest = &rest[1..];
            }
        }
    }
    // Round trip: the input as a plaintext.
    let seq = data.len() as u64;
    let frame = encode(seq, data, &cipher).expect("small plaintexts encode");
    let decoded = decode(&frame, &cipher).expect("what was encoded decodes");
    assert_eq!((decoded.seq, decoded.plaintext.as_slice()), (seq, data));
    assert_eq!(decoded.frame_len, frame.len());
    // Any one flipped bit in a real frame is caught, never decoded as
    // another record.
    if let Some(&pick) = data.first() {
        let mut bad = frame.clone();
        let at = (usize::from(pick) * 31 + data.len()) % bad.len();
        bad[at] ^= 1 << (pick % 8);
        assert!(
            decode(&bad, &cipher).is_err(),
            "a flipped bit at {at} decoded"
        );
    }
});
