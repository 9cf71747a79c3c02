//! Detection of ambiguous HTTP/1.1 request framing, the raw material of
//! request smuggling.
//!
//! hyper quietly normalises a request that carries both `Content-Length` and
//! `Transfer-Encoding` (it drops the length and closes the connection after
//! the response), so by the time the request reaches the proxy's service the
//! evidence is gone. RFC 9112 §6.3 lets a server reject such a request, and a
//! proxy in front of an identity provider should: this module watches the
//! bytes hyper reads on an HTTP/1 connection, finds each request head,
//! follows the body framing to the next head, and queues one [`Verdict`] per
//! request in order. The service pops the verdict for each request and
//! answers `400` (with `Connection: close`) when it is ambiguous.
//!
//! The sniffer is deliberately conservative: whenever it sees something it
//! does not follow (an HTTP/2 preface, a malformed chunk, a head over the
//! size limit) it switches itself off for the connection; hyper's own parser
//! then decides, and it rejects what it cannot parse.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The framing verdict for one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Unambiguous framing.
    Clean,
    /// A smuggling shape; the reason names it.
    Ambiguous(&'static str),
}

/// Verdicts of one connection, in request order.
#[derive(Debug, Default)]
pub struct Verdicts {
    queue: Mutex<VecDeque<Verdict>>,
    off: AtomicBool,
}

impl Verdicts {
    /// The verdict for the next request, or `None` if the sniffer stopped
    /// following this connection (hyper's parser decides alone then).
    pub fn next(&self) -> Option<Verdict> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        self.queue.lock().ok()?.pop_front()
    }

    fn push(&self, verdict: Verdict) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.push_back(verdict);
        }
    }

    fn turn_off(&self) {
        self.off.store(true, Ordering::Relaxed);
    }
}

/// Most header lines the sniffer parses; beyond that it steps aside and lets
/// hyper apply its own limit.
const MAX_SNIFF_HEADERS: usize = 256;

#[derive(Debug)]
enum State {
    /// Accumulating a request head.
    Head,
    /// Skipping a fixed-length body.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize { size: u64, digits: u8, in_ext: bool },
    /// Skipping chunk data.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data.
    ChunkDataEnd { saw_cr: bool },
    /// Reading trailer lines after the last chunk.
    Trailer { line_len: usize },
    /// Not following this connection any more.
    Off,
}

/// Follows HTTP/1.1 request framing over the bytes of one connection.
#[derive(Debug)]
pub(crate) struct Sniffer {
    state: State,
    head: Vec<u8>,
    max_head: usize,
}

impl Sniffer {
    /// A sniffer that gives up on heads larger than `max_head` bytes.
    pub(crate) fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            max_head,
        }
    }

    /// Whether the sniffer still follows the connection.
    pub(crate) fn is_off(&self) -> bool {
        matches!(self.state, State::Off)
    }

    /// Consumes bytes read from the connection, reporting one verdict per
    /// complete request head.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], verdicts: &mut dyn FnMut(Verdict)) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head => {
                    if self.head.is_empty() {
                        // RFC 9112 §2.2: ignore empty lines before a request line.
                        let skip = bytes
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    // Usually a whole head arrives in one read: parse it
                    // where it lies, and copy only a partial one.
                    let direct = self.head.is_empty();
                    let before = self.head.len();
                    let parsed = if direct {
                        parse_head(bytes)
                    } else {
                        self.head.extend_from_slice(bytes);
                        parse_head(&self.head)
                    };
                    match parsed {
                        HeadParse::Partial => {
                            if direct {
                                self.head.extend_from_slice(bytes);
                            }
                            if self.head.len() > self.max_head {
                                self.state = State::Off;
                            }
                            return;
                        }
                        HeadParse::Invalid => {
                            self.state = State::Off;
                            return;
                        }
                        HeadParse::Complete { len, verdict, next } => {
                            verdicts(verdict);
                            bytes = &bytes[len - before..];
                            self.head.clear();
                            self.state = next;
                        }
                    }
                }
                State::Fixed(remaining) => {
                    let take = (*remaining).min(bytes.len() as u64);
                    *remaining -= take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize {
                    size,
                    digits,
                    in_ext,
                } => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    match byte {
                        b'\n' => {
                            if *digits == 0 {
                                self.state = State::Off;
                            } else if *size == 0 {
                                self.state = State::Trailer { line_len: 0 };
                            } else {
                                self.state = State::ChunkData(*size);
                            }
                        }
                        b'\r' => {}
                        _ if *in_ext => {}
                        b';' => *in_ext = true,
                        b' ' | b'\t' => *in_ext = true,
                        _ => match (byte as char).to_digit(16) {
                            Some(digit) if *digits < 16 => {
                                *size = (*size << 4) | u64::from(digit);
                                *digits += 1;
                            }
                            _ => self.state = State::Off,
                        },
                    }
                }
                State::ChunkData(remaining) => {
                    let take = (*remaining).min(bytes.len() as u64);
                    *remaining -= take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        self.state = State::ChunkDataEnd { saw_cr: false };
                    }
                }
                State::ChunkDataEnd { saw_cr } => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    match byte {
                        b'\r' if !*saw_cr => *saw_cr = true,
                        b'\n' => {
                            self.state = State::ChunkSize {
                                size: 0,
                                digits: 0,
                                in_ext: false,
                            }
                        }
                        _ => self.state = State::Off,
                    }
                }
                State::Trailer { line_len } => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    match byte {
                        b'\n' if *line_len == 0 => self.state = State::Head,
                        b'\n' => *line_len = 0,
                        b'\r' => {}
                        _ => *line_len += 1,
                    }
                }
            }
        }
    }
}

/// Parses the request head at the start of `buf`.
fn parse_head(buf: &[u8]) -> HeadParse {
    // Uninitialised slots: filling 256 empty headers first was a
    // memset of 8 KiB per request.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_SNIFF_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return HeadParse::Partial,
        Err(_) => return HeadParse::Invalid,
    };
    if request.method == Some("CONNECT") {
        // A tunnel follows; nothing to sniff.
        return HeadParse::Complete {
            len,
            verdict: Verdict::Clean,
            next: State::Off,
        };
    }
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut content_length: Option<u64> = None;
    let mut conflicting_lengths = false;
    let mut bad_length = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            te_count += 1;
            transfer_encoding = Some(header.value);
        } else if header.name.eq_ignore_ascii_case("content-length") {
            for part in header.value.split(|b| *b == b',') {
                match parse_length(part) {
                    Some(value) => match content_length {
                        Some(previous) if previous != value => conflicting_lengths = true,
                        _ => content_length = Some(value),
                    },
                    None => bad_length = true,
                }
            }
        }
    }
    let verdict = if transfer_encoding.is_some() && (content_length.is_some() || bad_length) {
        Verdict::Ambiguous("both Content-Length and Transfer-Encoding")
    } else if conflicting_lengths {
        Verdict::Ambiguous("conflicting Content-Length values")
    } else {
        Verdict::Clean
    };
    let next = match (transfer_encoding, content_length) {
        (Some(value), _) => {
            // Chunked must be the final coding of the (last) header;
            // anything else hyper refuses, so stop following.
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
            if te_count == 1 && trim(last).eq_ignore_ascii_case(b"chunked") {
                State::ChunkSize {
                    size: 0,
                    digits: 0,
                    in_ext: false,
                }
            } else {
                State::Off
            }
        }
        (None, Some(0)) => State::Head,
        (None, Some(length)) if !bad_length => State::Fixed(length),
        (None, Some(_)) => State::Off,
        (None, None) if bad_length => State::Off,
        (None, None) => State::Head,
    };
    HeadParse::Complete { len, verdict, next }
}

enum HeadParse {
    Partial,
    Invalid,
    Complete {
        len: usize,
        verdict: Verdict,
        next: State,
    },
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn parse_length(bytes: &[u8]) -> Option<u64> {
    let digits = trim(bytes);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// An I/O stream whose reads feed a [`Sniffer`]; writes pass through.
#[derive(Debug)]
pub(crate) struct SniffedIo<T> {
    inner: T,
    sniffer: Sniffer,
    verdicts: std::sync::Arc<Verdicts>,
}

impl<T> SniffedIo<T> {
    /// Wraps `inner`, reporting verdicts to `verdicts`.
    pub(crate) fn new(inner: T, max_head: usize, verdicts: std::sync::Arc<Verdicts>) -> Self {
        Self {
            inner,
            sniffer: Sniffer::new(max_head),
            verdicts,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SniffedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.sniffer.is_off() {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let verdicts = &this.verdicts;
                this.sniffer
                    .feed(new, &mut |verdict| verdicts.push(verdict));
                if this.sniffer.is_off() {
                    this.verdicts.turn_off();
                }
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SniffedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts_of(input: &[u8], split: usize) -> (Vec<Verdict>, bool) {
        let mut sniffer = Sniffer::new(64 << 10);
        let mut out = Vec::new();
        // Feed in pieces of `split` bytes, as a socket might deliver them.
        for piece in input.chunks(split.max(1)) {
            sniffer.feed(piece, &mut |v| out.push(v));
        }
        (out, sniffer.is_off())
    }

    fn every_split(input: &[u8]) -> Vec<Verdict> {
        let (reference, _) = verdicts_of(input, input.len());
        for split in 1..input.len() {
            let (verdicts, _) = verdicts_of(input, split);
            assert_eq!(verdicts, reference, "split at {split}");
        }
        reference
    }

    #[test]
    fn pipelined_clean_requests_each_get_a_verdict() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /clients HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /token HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
GET /end HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(every_split(input), vec![Verdict::Clean; 4]);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_ambiguous() {
        let input = b"POST /token HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            every_split(input),
            vec![Verdict::Ambiguous(
                "both Content-Length and Transfer-Encoding"
            )]
        );
        let reversed = b"POST /token HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";
        assert_eq!(
            every_split(reversed),
            vec![Verdict::Ambiguous(
                "both Content-Length and Transfer-Encoding"
            )]
        );
    }

    #[test]
    fn conflicting_lengths_are_ambiguous() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd";
        assert_eq!(
            every_split(input)[0],
            Verdict::Ambiguous("conflicting Content-Length values")
        );
        let same = b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\nabcdGET / HTTP/1.1\r\n\r\n";
        assert_eq!(every_split(same), vec![Verdict::Clean, Verdict::Clean]);
    }

    #[test]
    fn h2_preface_turns_the_sniffer_off() {
        let (verdicts, off) = verdicts_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 64);
        assert!(verdicts.is_empty());
        assert!(off);
    }

    #[test]
    fn oversized_head_turns_the_sniffer_off() {
        let mut sniffer = Sniffer::new(32);
        sniffer.feed(
            b"GET / HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            &mut |_| {},
        );
        assert!(sniffer.is_off());
    }

    #[test]
    fn non_chunked_transfer_encoding_stops_following() {
        let (verdicts, off) =
            verdicts_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxx", 64);
        assert_eq!(verdicts, vec![Verdict::Clean]);
        assert!(off);
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let (verdicts, off) = verdicts_of(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 3);
        assert_eq!(verdicts, vec![Verdict::Clean]);
        assert!(!off);
    }
}
