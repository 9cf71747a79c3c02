//! `application/x-www-form-urlencoded` decoding, for query strings, form
//! request bodies and the `parameters` strings that endpoint backend APIs
//! (`/auth/token`, `/auth/revocation`, `/auth/introspection/standard`)
//! receive verbatim from the OAuth client.

/// Splits `input` into decoded `(name, value)` pairs, in order. Malformed
/// escapes are kept literally and invalid UTF-8 is replaced, as lenient
/// servers do: the emulator should not be stricter than Authlete.
pub(super) fn parse(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name, true), decode(value, true))
        })
        .collect()
}

/// The first value of `name` in `pairs`.
pub(super) fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Percent-decodes `input`; `plus_as_space` for form encoding (not for
/// path segments).
pub(super) fn decode(input: &str, plus_as_space: bool) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_as_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
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
    fn path_decoding_keeps_plus() {
        assert_eq!(decode("a+b%20c", false), "a+b c");
    }
}
