//! The one redaction step for text that quotes an upstream.
//!
//! An upstream's error text (a status line, an `error_description`, an
//! Authlete `resultMessage`, a parser's complaint about its body) is not
//! ours: a server that repeats its input in errors puts the client secret,
//! our management token or a refresh token into it. Every such text passes
//! through [`text`] (or [`error_body`], which also picks the safe parts of an
//! error body) before it reaches a log line, a dead-letter reason, the admin
//! API or the CLI. Nothing downstream of this step redacts again.
//!
//! What is removed, each replaced by [`REDACTED`]:
//!
//! - the credential after an HTTP auth scheme (`Bearer x`, `Basic x`,
//!   `DPoP x`);
//! - the value after a secret-named field (`client_secret`, `*token*`,
//!   `password`, `sid`, `SID-Key`, `*key`, `code`, `assertion`, `cookie`,
//!   ...), in JSON (`"name":"value"`, also escaped), form (`name=value`) and
//!   header (`Name: value`) spelling;
//! - JWTs (`eyJ...` with three or five dot-separated parts);
//! - any other secret-shaped word: 16 or more token characters with a part
//!   that is not plain lowercase prose (mixed case, digits), which catches
//!   client secrets, session ids, opaque tokens, hex keys and UUIDs while
//!   keeping paths, host names and error codes readable.
//!
//! The limits: a secret shorter than 16 characters that is not labelled
//! by a known field name (a guessable password quoted as bare prose) is not
//! recognised; identifiers that look random (long client ids) are removed
//! too, which costs readability, not safety. The step is idempotent.

use serde_json::Value;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Longest upstream description kept, in characters (after redaction, so a
/// cut never leaves the head of a secret behind).
pub const MAX_DESCRIPTION_CHARS: usize = 160;

/// Shortest unlabelled word treated as a secret by its shape.
const MIN_SECRET_SHAPED_LEN: usize = 16;

/// `text` with every secret-shaped part replaced by [`REDACTED`].
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut armed = Armed::No;
    let mut rest = text;
    while !rest.is_empty() {
        let word_len = rest
            .char_indices()
            .find(|&(_, c)| !is_token_char(c))
            .map_or(rest.len(), |(i, _)| i);
        if word_len == 0 {
            let gap_len = rest
                .char_indices()
                .find(|&(_, c)| is_token_char(c))
                .map_or(rest.len(), |(i, _)| i);
            let gap = &rest[..gap_len];
            armed = armed.across(gap);
            out.push_str(gap);
            rest = &rest[gap_len..];
            continue;
        }
        let word = &rest[..word_len];
        rest = &rest[word_len..];
        if armed != Armed::No {
            if is_auth_scheme(word) {
                // `Authorization: Bearer x`: keep the scheme, hide x.
                armed = Armed::ByScheme;
                out.push_str(word);
            } else {
                armed = Armed::No;
                out.push_str(REDACTED);
            }
            continue;
        }
        if is_auth_scheme(word) {
            armed = Armed::ByScheme;
            out.push_str(word);
        } else if is_secret_name(word) {
            armed = Armed::ByName;
            out.push_str(word);
        } else if looks_secret(word) {
            out.push_str(REDACTED);
        } else {
            out.push_str(word);
        }
    }
    out
}

/// Whether the next word is a value to hide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    No,
    /// After a secret-named field: the value follows `:` or `=` or a
    /// quote (`"name": "value"`, `name=value`, `Name: value`), not a mere
    /// space, so prose such as "the refresh token is invalid" stays whole.
    ByName,
    /// After an auth scheme: the credential follows one space.
    ByScheme,
}

impl Armed {
    /// Whether the arming survives the non-word text `gap`.
    fn across(self, gap: &str) -> Self {
        let only = |allowed: fn(char) -> bool| gap.chars().all(allowed);
        match self {
            Self::No => Self::No,
            Self::ByName
                if only(is_value_separator) && gap.chars().any(|c| c != ' ' && c != '\t') =>
            {
                Self::ByName
            }
            Self::ByScheme if only(|c| c == ' ') => Self::ByScheme,
            _ => Self::No,
        }
    }
}

/// The safe summary of an upstream error body: the OAuth `error` code (or
/// Authlete's `resultCode`) and a redacted, shortened description;
/// `"(no error body)"` when the body is neither. Never the rest of the
/// body.
pub fn error_body(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => error_json(&value),
        Err(_) => "(no error body)".to_owned(),
    }
}

/// [`error_body`] of a body already parsed.
pub fn error_json(value: &Value) -> String {
    let field = |name: &str| value.get(name).and_then(Value::as_str);
    let (code, description) = match (field("error"), field("resultCode")) {
        (Some(error), _) => (error, field("error_description")),
        (None, Some(code)) => (code, field("resultMessage")),
        (None, None) => return "(no error body)".to_owned(),
    };
    // RFC 6749 §5.2 codes are short ASCII words; anything else is not a
    // code we can repeat safely.
    let code = if !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !looks_secret(code)
    {
        code
    } else {
        "unknown_error"
    };
    match description {
        Some(description) if !description.trim().is_empty() => {
            format!("{code}: {}", shorten(&text(description)))
        }
        _ => code.to_owned(),
    }
}

/// At most [`MAX_DESCRIPTION_CHARS`] characters of `text`, with `...` when
/// cut.
pub fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_DESCRIPTION_CHARS {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(MAX_DESCRIPTION_CHARS).collect();
    short.push_str("...");
    short
}

/// Characters of tokens, ids and keys: base64, base64url, percent
/// encoding and JWT dots. `=` is left out so that `name=value` splits;
/// padding that follows a secret is harmless.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '%')
}

/// What may stand between a secret-named field and its value: quotes
/// (also JSON-escaped), `:`, `=` and spaces.
fn is_value_separator(c: char) -> bool {
    matches!(c, '"' | '\'' | ':' | '=' | ' ' | '\\' | '\t')
}

fn is_auth_scheme(word: &str) -> bool {
    ["bearer", "basic", "dpop", "negotiate", "digest"]
        .iter()
        .any(|scheme| word.eq_ignore_ascii_case(scheme))
}

/// Whether `word` names a field whose value is secret.
fn is_secret_name(word: &str) -> bool {
    let lower = word.trim_matches(['-', '_', '.']).to_ascii_lowercase();
    const CONTAINS: [&str; 11] = [
        "secret",
        "token",
        "password",
        "passwd",
        "credential",
        "assertion",
        "cookie",
        "authorization",
        "apikey",
        "api_key",
        "private",
    ];
    const ENDS: [&str; 6] = ["sid", "key", "_code", "-code", "verifier", "rft"];
    CONTAINS.iter().any(|part| lower.contains(part))
        || ENDS.iter().any(|end| lower.ends_with(end))
        || lower == "code"
}

/// Whether an unlabelled word has the shape of a secret: a JWT, or long
/// enough with a part that is not plain lowercase prose.
fn looks_secret(word: &str) -> bool {
    let word = word.trim_matches(['.', '/', '-', '_', '~']);
    if is_jwt(word) {
        return true;
    }
    if word.len() < MIN_SECRET_SHAPED_LEN || word.contains("://") {
        return false;
    }
    word.split(['/', '.', '-', '_', '~', '%', '+'])
        .any(|part| !is_prose(part))
}

/// A part of a path, host or identifier that reads as words: lowercase
/// letters, or short (`v3`, `c2id`, `a1b2`).
fn is_prose(part: &str) -> bool {
    part.len() <= 4 || part.bytes().all(|b| b.is_ascii_lowercase())
}

/// A compact JWS (three parts) or JWE (five), header first.
fn is_jwt(word: &str) -> bool {
    let parts = word.split('.').count();
    word.starts_with("eyJ") && (parts == 3 || parts == 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Zq3vW9xK_p2Lr8sT4uY6aB1cD5eF7gH0";

    #[test]
    fn bearer_and_basic_credentials_are_removed() {
        assert_eq!(
            text("Authorization: Bearer abc123"),
            "Authorization: Bearer [redacted]"
        );
        assert_eq!(text("basic dXNlcjpwYXNz"), "basic [redacted]");
        assert_eq!(
            text("authorization: Basic Zm9v=="),
            "authorization: Basic [redacted]=="
        );
    }

    #[test]
    fn values_of_secret_fields_are_removed_in_every_spelling() {
        for (input, expected) in [
            (
                r#"{"client_secret":"hunter2","client_name":"app"}"#,
                r#"{"client_secret":"[redacted]","client_name":"app"}"#,
            ),
            (
                r#"{\"preferred_client_secret\":\"hunter2\"}"#,
                r#"{\"preferred_client_secret\":\"[redacted]\"}"#,
            ),
            (
                "grant_type=refresh_token&refresh_token=abc&client_id=x",
                "grant_type=refresh_token&refresh_token=[redacted]&client_id=x",
            ),
            ("SID-Key: s1d", "SID-Key: [redacted]"),
            ("code=abc&state=xyz", "code=[redacted]&state=xyz"),
            ("password = 'pw1'", "password = '[redacted]'"),
        ] {
            assert_eq!(text(input), expected, "{input}");
        }
    }

    #[test]
    fn secret_shaped_words_are_removed_without_a_label() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
        assert_eq!(text(&format!("bad {jwt} here")), "bad [redacted] here");
        assert_eq!(text(&format!("echo {SECRET}!")), "echo [redacted]!");
        let hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        assert_eq!(text(hex), REDACTED);
        assert_eq!(
            text("uuid 123e4567-e89b-12d3-a456-426614174000"),
            "uuid [redacted]"
        );
    }

    #[test]
    fn prose_paths_hosts_and_codes_are_kept() {
        for kept in [
            "target answered 400 to POST /clients: invalid_client_metadata",
            "cannot connect to target: https://c2id-new.internal/c2id/authz-store/rest/v3/authorizations",
            "A109201 Bad request",
            "expected value at line 1 column 2",
            "request to source failed: connection reset by peer",
            "the refresh token is invalid or the client secret expired",
        ] {
            assert_eq!(text(kept), kept);
        }
    }

    #[test]
    fn redaction_is_idempotent() {
        let input = format!(r#"Bearer {SECRET} {{"client_secret":"{SECRET}"}} {SECRET}"#);
        let once = text(&input);
        assert!(!once.contains(SECRET));
        assert_eq!(text(&once), once);
    }

    #[test]
    fn error_bodies_keep_the_code_and_a_redacted_short_description() {
        let body = format!(
            r#"{{"error":"invalid_client_metadata","error_description":"Invalid redirect_uris in {{\"client_secret\":\"{SECRET}\"}}","client_secret":"x"}}"#
        );
        assert_eq!(
            error_body(body.as_bytes()),
            r#"invalid_client_metadata: Invalid redirect_uris in {"client_secret":"[redacted]"}"#
        );
        assert_eq!(error_body(b"<html>"), "(no error body)");
        assert_eq!(error_body(b"{}"), "(no error body)");
        let authlete = br#"{"resultCode":"A109201","resultMessage":"Bad request"}"#;
        assert_eq!(error_body(authlete), "A109201: Bad request");
        let odd = format!(r#"{{"error":"{SECRET}"}}"#);
        assert_eq!(error_body(odd.as_bytes()), "unknown_error");
    }

    #[test]
    fn long_descriptions_are_cut_after_redaction() {
        let description = format!("{} {SECRET}", "word ".repeat(31));
        let body =
            serde_json::json!({"error": "invalid_request", "error_description": description});
        let summary = error_body(body.to_string().as_bytes());
        assert!(summary.ends_with("..."), "{summary}");
        assert!(!summary.contains(&SECRET[..8]), "{summary}");
    }
}
