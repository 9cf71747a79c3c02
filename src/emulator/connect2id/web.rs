//! HTTP helpers of the Connect2id emulator: the OAuth-style error type with
//! its one status mapping, form and query decoding, URI checks, bearer
//! token extraction and streamed JSON bodies.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::{Map, Value};

use super::store::Cursor;
use crate::http::{Body, BoxError, channel_body, full, json_response};

/// A request the emulator refuses, rendered as
/// `{"error": ..., "error_description": ...}` plus any extra members.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: Map<String, Value>,
    www_authenticate: Option<&'static str>,
}

/// What a route handler returns.
pub(crate) type Reply = Result<Response<Body>, ApiError>;

impl ApiError {
    /// An error with an OAuth error code and a description.
    pub(crate) fn new(status: StatusCode, error: &str, description: impl Into<String>) -> Self {
        let mut body = Map::new();
        body.insert("error".to_owned(), Value::String(error.to_owned()));
        body.insert(
            "error_description".to_owned(),
            Value::String(description.into()),
        );
        Self {
            status,
            body,
            www_authenticate: None,
        }
    }

    /// Adds a member to the error object.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.body.insert(key.to_owned(), value.into());
        self
    }

    /// 400 `invalid_request`.
    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 404 with the given error code.
    pub(crate) fn not_found(error: &str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, description)
    }

    /// 401 `invalid_token` for a management API called without its bearer
    /// token.
    pub(crate) fn invalid_token() -> Self {
        let mut err = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "Unauthorized: Missing or invalid bearer token",
        );
        err.www_authenticate = Some("Bearer");
        err
    }

    /// 401 `invalid_client` from the token, introspection and revocation
    /// endpoints, with the `client_auth_id` Connect2id adds.
    pub(crate) fn invalid_client(client_id: Option<&str>) -> Self {
        let mut err = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
        if let Some(id) = client_id {
            err = err.with("client_auth_id", id);
        }
        err.www_authenticate = Some("Basic");
        err
    }

    /// 400 `invalid_grant`.
    pub(crate) fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// 405 for a method the path does not support.
    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "Method not allowed",
        )
    }

    /// 429, the answer of the throttle knob (the caller adds
    /// `Retry-After`).
    pub(crate) fn throttled() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "server_error",
            "Too many requests",
        )
    }

    /// 503 `server_error`, the answer of the error-rate knob.
    pub(crate) fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "Service temporarily unavailable",
        )
    }

    /// The status this error is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// Renders the error.
    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = json_response(self.status, &self.body);
        if let Some(scheme) = self.www_authenticate {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        response
    }
}

/// A `200 OK` JSON answer.
pub(crate) fn ok_json(value: &Value) -> Reply {
    Ok(json_response(StatusCode::OK, value))
}

/// A JSON answer with the given status.
pub(crate) fn json_with(status: StatusCode, value: &Value) -> Reply {
    Ok(json_response(status, value))
}

/// Parses a JSON request body, answering 400 when it is not JSON.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid_request(format!("Invalid JSON body: {err}")))
}

/// Parses a JSON object body.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match parse_json::<Value>(body)? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid_request("The JSON body must be an object")),
    }
}

/// Decoded `application/x-www-form-urlencoded` (or query string) pairs, in
/// order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Decodes `a=b&c=d`, with `+` as space and percent escapes.
    pub(crate) fn parse(text: &str) -> Self {
        let pairs = text
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        Self { pairs }
    }

    /// Decodes a body, which must be UTF-8.
    pub(crate) fn parse_bytes(body: &[u8]) -> Result<Self, ApiError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::invalid_request("The form body is not UTF-8"))?;
        Ok(Self::parse(text))
    }

    /// The first value of `name`, if present and not empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty())
    }

    /// Every pair, in order.
    pub(crate) fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// Adds `name=value` unless `name` is present.
    pub(crate) fn set_default(&mut self, name: &str, value: &str) {
        if self.get(name).is_none() {
            self.pairs.retain(|(key, _)| key != name);
            self.pairs.push((name.to_owned(), value.to_owned()));
        }
    }

    /// Whether `name` is `true`.
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    /// Whether any parameter appears twice (RFC 6749 §3.1 forbids it).
    pub(crate) fn has_repeats(&self) -> bool {
        self.pairs
            .iter()
            .enumerate()
            .any(|(i, (name, _))| self.pairs[..i].iter().any(|(other, _)| other == name))
    }

    /// The pairs as a JSON object (first value wins), for echoing an
    /// authorization request back to the login page.
    pub(crate) fn to_json(&self) -> Value {
        let mut map = Map::new();
        for (name, value) in &self.pairs {
            map.entry(name.clone())
                .or_insert_with(|| Value::String(value.clone()));
        }
        Value::Object(map)
    }
}

/// Decodes percent escapes and `+`; invalid escapes are kept literally.
pub(crate) fn percent_decode(text: &str) -> String {
    let hex = |byte: u8| -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            b'A'..=b'F' => Some(byte - b'A' + 10),
            _ => None,
        }
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let high = bytes.get(i + 1).copied().and_then(hex);
                let low = bytes.get(i + 2).copied().and_then(hex);
                if let (Some(high), Some(low)) = (high, low) {
                    out.push(high << 4 | low);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but the RFC 3986 unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Appends query parameters to a redirect URI.
pub(crate) fn append_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut out = uri.to_owned();
    let mut separator = if uri.contains('?') { '&' } else { '?' };
    for (name, value) in params {
        out.push(separator);
        out.push_str(&percent_encode(name));
        out.push('=');
        out.push_str(&percent_encode(value));
        separator = '&';
    }
    out
}

/// Whether `uri` is an absolute URI usable as a redirection endpoint: a
/// scheme, no fragment, no whitespace, and a host for `http`/`https`.
pub(crate) fn is_redirect_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || rest.is_empty() || uri.contains('#') || uri.contains(char::is_whitespace) {
        return false;
    }
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => rest
            .strip_prefix("//")
            .is_some_and(|authority| !authority.is_empty() && !authority.starts_with('/')),
        _ => true,
    }
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// A header value as text.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Buffers chunks of a streamed body and sends them when enough piled up,
/// so a million-record export never sits in memory.
#[derive(Debug)]
pub(crate) struct ChunkSink {
    sender: http_body_util::channel::Sender<Bytes, BoxError>,
    buffer: BytesMut,
}

/// Bytes buffered before a chunk is handed to hyper.
const CHUNK_BYTES: usize = 32 * 1024;

impl ChunkSink {
    /// Appends bytes to the pending chunk.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Sends the pending chunk if it is large enough. Returns false once the
    /// downstream has gone away, so the producer can stop.
    pub(crate) async fn flush_if_full(&mut self) -> bool {
        if self.buffer.len() < CHUNK_BYTES {
            return true;
        }
        self.flush().await
    }

    /// Sends whatever is pending.
    pub(crate) async fn flush(&mut self) -> bool {
        if self.buffer.is_empty() {
            return true;
        }
        let chunk = self.buffer.split().freeze();
        self.sender.send_data(chunk).await.is_ok()
    }
}

/// A `200 OK` JSON response whose body `produce` writes incrementally from
/// a background task.
pub(crate) fn streamed<F, Fut>(produce: F) -> Response<Body>
where
    F: FnOnce(ChunkSink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, body) = channel_body(4);
    let sink = ChunkSink {
        sender,
        buffer: BytesMut::with_capacity(CHUNK_BYTES * 2),
    };
    tokio::spawn(produce(sink));
    crate::http::json_body_response(StatusCode::OK, body)
}

/// Streams a whole dataset: `open`, the rendered items of every chunk
/// separated by commas, then `close`. `chunk` is called once per chunk, so
/// memory holds one chunk at a time however large the dataset.
pub(crate) fn stream_export<K, C>(
    open: &'static [u8],
    close: &'static [u8],
    mut chunk: C,
) -> Response<Body>
where
    K: Send + 'static,
    C: FnMut(&Cursor<K>) -> (Vec<String>, Cursor<K>) + Send + 'static,
{
    streamed(move |mut sink| async move {
        sink.push(open);
        let mut cursor = Cursor::Start;
        let mut first = true;
        loop {
            let (items, next) = chunk(&cursor);
            for item in items {
                if !first {
                    sink.push(b",");
                }
                first = false;
                sink.push(item.as_bytes());
            }
            if !sink.flush_if_full().await {
                return;
            }
            if matches!(next, Cursor::Done) {
                break;
            }
            cursor = next;
        }
        sink.push(close);
        sink.flush().await;
    })
}

/// Streams `items` as a JSON array (used for short lists whose elements
/// are already in memory, such as the records removed by a revocation).
pub(crate) fn streamed_array(items: Vec<Value>) -> Response<Body> {
    let mut items = Some(items);
    stream_export(b"[", b"]", move |_: &Cursor<()>| {
        let rendered = items
            .take()
            .unwrap_or_default()
            .iter()
            .map(Value::to_string)
            .collect();
        (rendered, Cursor::Done)
    })
}

/// A JSON response from already serialised text.
pub(crate) fn raw_json(status: StatusCode, text: String) -> Response<Body> {
    crate::http::json_body_response(status, full(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_escapes_and_plus() {
        let form = Form::parse("a=b+c&redirect_uri=https%3A%2F%2Fx.example%2Fcb&bad=%zz&e=");
        assert_eq!(form.get("a"), Some("b c"));
        assert_eq!(form.get("redirect_uri"), Some("https://x.example/cb"));
        assert_eq!(form.get("bad"), Some("%zz"));
        assert_eq!(form.get("e"), None);
        assert!(!form.has_repeats());
        assert!(Form::parse("a=1&a=2").has_repeats());
    }

    #[test]
    fn percent_encoding_round_trips() {
        let text = "a b&c=d/é";
        assert_eq!(percent_decode(&percent_encode(text)), text);
        assert_eq!(
            append_query("https://x/cb?k=1", &[("code", "a.b"), ("state", "s t")]),
            "https://x/cb?k=1&code=a.b&state=s%20t"
        );
    }

    #[test]
    fn redirect_uris_are_checked() {
        assert!(is_redirect_uri("https://app.example.com/cb"));
        assert!(is_redirect_uri("http://127.0.0.1:8080/cb?x=1"));
        assert!(is_redirect_uri("com.example.app:/oauth2redirect"));
        assert!(!is_redirect_uri("not a uri"));
        assert!(!is_redirect_uri("https:///nohost"));
        assert!(!is_redirect_uri("https://app.example.com/cb#frag"));
        assert!(!is_redirect_uri("/relative"));
    }
}
