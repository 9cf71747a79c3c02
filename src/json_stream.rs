//! Incremental splitting of one huge JSON document into its top-level
//! members, for the dataset exports (`GET /clients` and the authz-store
//! export are one JSON array; the session export is one JSON object keyed by
//! SID). Bytes are fed as they arrive; each complete member comes out as its
//! own byte slice, to be parsed on its own. Memory is bounded by the largest
//! member (capped), never by the document.
//!
//! The splitter only tracks what it needs to find member boundaries
//! (nesting depth, strings and escapes); each member is validated when the
//! caller parses it. A document that is not an array (or object), ends
//! early, or has bytes after its end is an error naming the byte offset.

use bytes::{Bytes, BytesMut};

/// Largest single member by default: far above any real record (a client
/// with an inline JWK set is a few KiB), small enough to bound memory.
pub const DEFAULT_MAX_MEMBER_BYTES: usize = 4 << 20;

/// Which container the document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// `[ member, ... ]`
    Array,
    /// `{ "key": member, ... }`
    Object,
}

/// One top-level member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The key, for objects.
    pub key: Option<String>,
    /// The member's JSON text.
    pub value: Bytes,
}

/// Why a document could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A byte that cannot appear there.
    #[error("malformed JSON at byte {offset}: {message}")]
    Malformed {
        /// Offset from the start of the document.
        offset: u64,
        /// What was expected.
        message: &'static str,
    },
    /// A member larger than the cap.
    #[error("JSON member at byte {offset} is larger than {limit} bytes")]
    TooLarge {
        /// Where the member starts.
        offset: u64,
        /// The cap.
        limit: usize,
    },
    /// The document ended before its closing bracket.
    #[error("JSON document ends early at byte {offset}")]
    Truncated {
        /// The document length.
        offset: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening bracket.
    Start,
    /// After the opening bracket or a comma: a member (or, first, the
    /// closing bracket) comes next.
    BeforeMember { first: bool },
    /// Inside an object key string.
    Key { escaped: bool },
    /// After a key, before the colon.
    BeforeColon,
    /// After the colon, before the value.
    BeforeValue,
    /// Inside a member.
    Member,
    /// After a member: a comma or the closing bracket.
    AfterMember,
    /// After the closing bracket: only whitespace.
    End,
}

/// The incremental splitter (public for the fuzz targets in `fuzz/`).
#[derive(Debug)]
pub struct Splitter {
    container: Container,
    state: State,
    max_member: usize,
    /// Bytes consumed so far.
    offset: u64,
    /// The key of the current member.
    key: BytesMut,
    /// The current member's bytes.
    member: BytesMut,
    member_start: u64,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Whether the member is a scalar (ends at `,` / `]` / `}` / space).
    scalar: bool,
}

impl Splitter {
    /// A splitter for a document of the given container kind.
    pub fn new(container: Container, max_member: usize) -> Self {
        Self {
            container,
            state: State::Start,
            max_member,
            offset: 0,
            key: BytesMut::new(),
            member: BytesMut::new(),
            member_start: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            scalar: false,
        }
    }

    fn malformed(&self, message: &'static str) -> Error {
        Error::Malformed {
            offset: self.offset,
            message,
        }
    }

    fn close(&self) -> u8 {
        match self.container {
            Container::Array => b']',
            Container::Object => b'}',
        }
    }

    /// Feeds the next bytes; complete members are pushed to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Member>) -> Result<(), Error> {
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            match self.state {
                State::Start => {
                    if !byte.is_ascii_whitespace() {
                        let open = match self.container {
                            Container::Array => b'[',
                            Container::Object => b'{',
                        };
                        if byte != open {
                            return Err(self.malformed(match self.container {
                                Container::Array => "expected a JSON array",
                                Container::Object => "expected a JSON object",
                            }));
                        }
                        self.state = State::BeforeMember { first: true };
                    }
                }
                State::BeforeMember { first } => {
                    if byte.is_ascii_whitespace() {
                    } else if first && byte == self.close() {
                        self.state = State::End;
                    } else {
                        match self.container {
                            Container::Object => {
                                if byte != b'"' {
                                    return Err(self.malformed("expected a key string"));
                                }
                                self.key.clear();
                                self.key.extend_from_slice(b"\"");
                                self.state = State::Key { escaped: false };
                            }
                            Container::Array => {
                                self.start_member(byte)?;
                                // The Member state consumes this byte.
                                continue;
                            }
                        }
                    }
                }
                State::Key { escaped } => {
                    self.key.extend_from_slice(&[byte]);
                    if self.key.len() > self.max_member {
                        return Err(Error::TooLarge {
                            offset: self.offset,
                            limit: self.max_member,
                        });
                    }
                    self.state = match (escaped, byte) {
                        (true, _) => State::Key { escaped: false },
                        (false, b'\\') => State::Key { escaped: true },
                        (false, b'"') => State::BeforeColon,
                        (false, _) => State::Key { escaped: false },
                    };
                }
                State::BeforeColon => {
                    if byte == b':' {
                        self.state = State::BeforeValue;
                    } else if !byte.is_ascii_whitespace() {
                        return Err(self.malformed("expected ':' after a key"));
                    }
                }
                State::BeforeValue => {
                    if !byte.is_ascii_whitespace() {
                        self.start_member(byte)?;
                        // The Member state consumes this byte.
                        continue;
                    }
                }
                State::Member => {
                    // Fast path: copy a run of bytes that cannot end the
                    // member or change the nesting.
                    if self.scalar {
                        if byte == b',' || byte == self.close() || byte.is_ascii_whitespace() {
                            self.end_member(out)?;
                            continue; // re-examine the byte in AfterMember
                        }
                        self.push_member(&[byte])?;
                    } else {
                        let (run, closed) = self.scan(&bytes[i..]);
                        self.push_member(&bytes[i..i + run])?;
                        self.offset += run as u64;
                        i += run;
                        if closed {
                            self.end_member(out)?;
                        }
                        continue;
                    }
                }
                State::AfterMember => {
                    if byte == b',' {
                        self.state = State::BeforeMember { first: false };
                    } else if byte == self.close() {
                        self.state = State::End;
                    } else if !byte.is_ascii_whitespace() {
                        return Err(self.malformed("expected ',' or the closing bracket"));
                    }
                }
                State::End => {
                    if !byte.is_ascii_whitespace() {
                        return Err(self.malformed("bytes after the end of the document"));
                    }
                }
            }
            i += 1;
            self.offset += 1;
        }
        Ok(())
    }

    /// Scans a structured member (object, array or string) from the start of
    /// `bytes`, updating nesting; returns how many bytes belong to it and
    /// whether the member closed (it stops right after the closing byte).
    fn scan(&mut self, bytes: &[u8]) -> (usize, bool) {
        for (i, &byte) in bytes.iter().enumerate() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
                _ => {}
            }
        }
        (bytes.len(), false)
    }

    fn start_member(&mut self, byte: u8) -> Result<(), Error> {
        self.member.clear();
        self.member_start = self.offset;
        self.state = State::Member;
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
        match byte {
            b'{' | b'[' | b'"' => {
                self.scalar = false;
            }
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                self.scalar = true;
            }
            _ => return Err(self.malformed("expected a JSON value")),
        }
        Ok(())
    }

    fn push_member(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.member.len() + bytes.len() > self.max_member {
            return Err(Error::TooLarge {
                offset: self.member_start,
                limit: self.max_member,
            });
        }
        self.member.extend_from_slice(bytes);
        Ok(())
    }

    fn end_member(&mut self, out: &mut Vec<Member>) -> Result<(), Error> {
        let key = match self.container {
            Container::Array => None,
            Container::Object => Some(
                serde_json::from_slice::<String>(&self.key)
                    .map_err(|_| self.malformed("invalid key string"))?,
            ),
        };
        out.push(Member {
            key,
            value: self.member.split().freeze(),
        });
        self.state = State::AfterMember;
        Ok(())
    }

    /// Checks that the document ended properly.
    pub fn finish(&self) -> Result<(), Error> {
        if self.state == State::End {
            Ok(())
        } else {
            Err(Error::Truncated {
                offset: self.offset,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn split_all(container: Container, text: &[u8], chunk: usize) -> Result<Vec<Member>, Error> {
        let mut splitter = Splitter::new(container, DEFAULT_MAX_MEMBER_BYTES);
        let mut out = Vec::new();
        for piece in text.chunks(chunk.max(1)) {
            splitter.feed(piece, &mut out)?;
        }
        splitter.finish()?;
        Ok(out)
    }

    #[test]
    fn arrays_split_into_members_at_any_chunking() {
        let text = br#" [ {"client_id":"a","x":[1,{"y":"]}\"["}]}, "str\"ing", 12.5e3, true, null, -4, [] ] "#;
        for chunk in 1..text.len() {
            let members = split_all(Container::Array, text, chunk).unwrap();
            let values: Vec<Value> = members
                .iter()
                .map(|m| serde_json::from_slice(&m.value).unwrap())
                .collect();
            assert_eq!(
                values,
                [
                    json!({"client_id":"a","x":[1,{"y":"]}\"["}]}),
                    json!("str\"ing"),
                    json!(12500.0),
                    json!(true),
                    json!(null),
                    json!(-4),
                    json!([])
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn objects_split_into_keyed_members() {
        let text = br#"{"N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q" : {"sub":"alice"}, "k\"2": {"sub":"bob"} }"#;
        for chunk in 1..text.len() {
            let members = split_all(Container::Object, text, chunk).unwrap();
            assert_eq!(members.len(), 2);
            assert_eq!(
                members[0].key.as_deref(),
                Some("N4ICV2CQmTu6KLbrJKQSXw.KDtRkxEw76uDsobEL5zz1Q")
            );
            assert_eq!(members[1].key.as_deref(), Some("k\"2"));
            assert_eq!(
                serde_json::from_slice::<Value>(&members[1].value).unwrap(),
                json!({"sub":"bob"})
            );
        }
        assert!(split_all(Container::Object, b"{}", 1).unwrap().is_empty());
        assert!(split_all(Container::Array, b"[]", 1).unwrap().is_empty());
    }

    #[test]
    fn malformed_and_truncated_documents_are_errors() {
        assert!(matches!(
            split_all(Container::Array, b"{}", 4),
            Err(Error::Malformed { offset: 0, .. })
        ));
        assert!(matches!(
            split_all(Container::Array, b"[1,2", 4),
            Err(Error::Truncated { offset: 4 })
        ));
        assert!(matches!(
            split_all(Container::Array, b"[1 2]", 4),
            Err(Error::Malformed { offset: 3, .. })
        ));
        assert!(matches!(
            split_all(Container::Array, b"[1] x", 4),
            Err(Error::Malformed { offset: 4, .. })
        ));
        assert!(matches!(
            split_all(Container::Object, b"{1:2}", 4),
            Err(Error::Malformed { offset: 1, .. })
        ));
        assert!(matches!(
            split_all(Container::Array, b"[{\"a\":", 2),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn members_over_the_cap_are_refused() {
        let mut splitter = Splitter::new(Container::Array, 16);
        let mut out = Vec::new();
        let result = splitter.feed(br#"[{"a":"bbbbbbbbbbbbbbbbbbbbbbbb"}]"#, &mut out);
        assert!(matches!(
            result,
            Err(Error::TooLarge {
                offset: 1,
                limit: 16
            })
        ));
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z\"\\\\\\]\\[{}, ]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\"]{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_array_round_trips_at_any_chunking(
            members in prop::collection::vec(arbitrary_json(), 0..8),
            chunk in 1usize..64,
            pretty in any::<bool>(),
        ) {
            let document = Value::Array(members.clone());
            let text = if pretty { serde_json::to_vec_pretty(&document) } else { serde_json::to_vec(&document) }.unwrap();
            let split = split_all(Container::Array, &text, chunk).unwrap();
            let values: Vec<Value> = split.iter().map(|m| serde_json::from_slice(&m.value).unwrap()).collect();
            prop_assert_eq!(values, members);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), chunk in 1usize..8) {
            let _ = split_all(Container::Array, &bytes, chunk);
            let _ = split_all(Container::Object, &bytes, chunk);
        }
    }
}
