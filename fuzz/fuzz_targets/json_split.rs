//! The JSON export splitter (`handover::json_stream`), fed arbitrary bytes
//! in arbitrary chunks. Checks: no panic; the members do not depend on how
//! the document was chunked; and whenever serde_json accepts the whole
//! document as an array (an object), the splitter yields exactly its
//! elements (members, keys included) in order.
#![no_main]

use handover::json_stream::{Container, Member, Splitter};
use libfuzzer_sys::fuzz_target;

/// The input is `flags chunk document`: flags bit 0 = an object (else an
/// array), bit 1 = a small member cap (the next byte); `chunk` = the size
/// of the pieces the document is fed in (0 = whole). Plain bytes, so that
/// seeds are readable (`fuzz/seeds/json_split/`).
struct Input<'a> {
    object: bool,
    chunks: Vec<u8>,
    small_cap: Option<u8>,
    document: &'a [u8],
}

impl<'a> Input<'a> {
    fn of(data: &'a [u8]) -> Option<Self> {
        let (&flags, rest) = data.split_first()?;
        let (&chunk, rest) = rest.split_first()?;
        let (small_cap, document) = if flags & 2 != 0 {
            let (&cap, rest) = rest.split_first()?;
            (Some(cap), rest)
        } else {
            (None, rest)
        };
        Some(Self {
            object: flags & 1 != 0,
            chunks: if chunk == 0 { Vec::new() } else { vec![chunk] },
            small_cap,
            document,
        })
    }
}

fn split(
    container: Container,
    cap: usize,
    document: &[u8],
    chunks: &[u8],
) -> Result<Vec<Member>, handover::json_stream::Error> {
    let mut splitter = Splitter::new(container, cap);
    let mut out = Vec::new();
    let mut rest = document;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let size = if chunks.is_empty() {
            rest.len()
        } else {
            usize::from(*sizes.next().unwrap_or(&1)).max(1)
        };
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        splitter.feed(piece, &mut out)?;
        rest = tail;
    }
    splitter.finish()?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::of(data) else {
        return;
    };
    let container = if input.object {
        Container::Object
    } else {
        Container::Array
    };
    let cap = input
        .small_cap
        .map_or(handover::json_stream::DEFAULT_MAX_MEMBER_BYTES, usize::from);
    let chunked = split(container, cap, input.document, &input.chunks);
    let whole = split(container, cap, input.document, &[]);
    match (&chunked, &whole) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "chunking changed the members"),
        (Err(_), Err(_)) => {}
        _ => panic!("chunking changed the outcome: {chunked:?} vs {whole:?}"),
    }
    let Ok(members) = whole else {
        // Must not be a document serde_json reads as this container with
        // every member under the cap.
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(input.document) {
            // Every member's text is shorter than the document.
            let refused = input.document.len() <= cap
                && matches!(
                    (&value, container),
                    (serde_json::Value::Array(_), Container::Array)
                        | (serde_json::Value::Object(_), Container::Object)
                );
            assert!(!refused, "a valid document was refused");
        }
        return;
    };
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(input.document) {
        match (value, container) {
            (serde_json::Value::Array(items), Container::Array) => {
                assert_eq!(items.len(), members.len());
                for (item, member) in items.iter().zip(&members) {
                    assert_eq!(member.key, None);
                    let parsed: serde_json::Value = serde_json::from_slice(&member.value)
                        .expect("a member of a valid array parses");
                    assert_eq!(&parsed, item);
                }
            }
            (serde_json::Value::Object(map), Container::Object) => {
                // serde_json keeps the last of duplicate keys; compare
                // against the members' last occurrence of each key.
                let mut last = std::collections::BTreeMap::new();
                for member in &members {
                    let key = member.key.clone().expect("object members have keys");
                    let parsed: serde_json::Value = serde_json::from_slice(&member.value)
                        .expect("a member of a valid object parses");
                    last.insert(key, parsed);
                }
                assert_eq!(last.len(), map.len());
                for (key, value) in &map {
                    assert_eq!(last.get(key), Some(value), "{key}");
                }
            }
            (value, _) => panic!("the splitter accepted a {value:?} as the other container"),
        }
    }
});
