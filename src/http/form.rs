//! `application/x-www-form-urlencoded` helpers (query strings, form bodies,
//! the `parameters` strings of Authlete's endpoint backends) over the
//! `form_urlencoded` and `percent-encoding` crates.

use base64::Engine as _;

/// Decodes `input` into `(name, value)` pairs, in order. Invalid UTF-8 is
/// replaced rather than refused: servers are lenient here.
pub fn parse(input: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(input.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

/// The first value of `name` in `pairs`.
pub fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Percent-decodes a URL path segment (`+` stays a plus).
pub(crate) fn decode_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Form-encodes one value (as in HTTP Basic client credentials, RFC 6749
/// §2.3.1).
pub(crate) fn encode_component(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Percent-encodes one URL path segment.
pub(crate) fn encode_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Encodes `pairs` as a form body.
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A `client_secret_basic` Authorization header value (RFC 6749 §2.3.1:
/// both parts form-encoded before joining).
pub(crate) fn basic_auth(client_id: &str, secret: &str) -> String {
    let pair = format!(
        "{}:{}",
        encode_component(client_id),
        encode_component(secret)
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_decodes_plus_and_escapes() {
        let pairs = parse("grant_type=refresh_token&scope=openid+email&x=%41%2f&flag&bad=%zz%4");
        assert_eq!(first(&pairs, "grant_type"), Some("refresh_token"));
        assert_eq!(first(&pairs, "scope"), Some("openid email"));
        assert_eq!(first(&pairs, "x"), Some("A/"));
        assert_eq!(first(&pairs, "flag"), Some(""));
        assert_eq!(first(&pairs, "bad"), Some("%zz%4"));
        assert_eq!(first(&pairs, "missing"), None);
    }

    #[test]
    fn path_segments_keep_plus() {
        assert_eq!(decode_segment("a+b%20c"), "a+b c");
    }

    #[test]
    fn encode_round_trips() {
        let body = encode([("token", "a b+c/="), ("quiet", "true")]);
        assert_eq!(
            parse(&body),
            [
                ("token".to_owned(), "a b+c/=".to_owned()),
                ("quiet".to_owned(), "true".to_owned())
            ]
        );
    }
}
