//! Credentials follow the primary (DESIGN.md §6): a management call from
//! the login page backend or an admin tool presents the *source's* bearer
//! token for that API; after the flip it reaches the target, which knows
//! only its own token. The proxy swaps the token of the other side for the
//! primary's, per API, so integrations keep working unchanged (and the
//! reverse after a rollback). Tokens are compared in constant time; any
//! other token passes through untouched.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};

use crate::model::Side;
use crate::servers::connect2id::{Api, ApiTokens};

/// Both sides' management tokens.
#[derive(Debug, Clone)]
pub struct Credentials {
    base_path: String,
    source: ApiTokens,
    target: ApiTokens,
}

impl Credentials {
    /// The tokens of both sides; endpoints are under `base_path`.
    pub fn new(base_path: &str, source: ApiTokens, target: ApiTokens) -> Self {
        Self {
            base_path: base_path.trim_end_matches('/').to_owned(),
            source,
            target,
        }
    }

    fn tokens(&self, side: Side) -> &ApiTokens {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// Replaces the other side's token with `primary`'s on a management
    /// call. Returns whether it did.
    pub(crate) fn follow_primary(
        &self,
        path: &str,
        headers: &mut HeaderMap,
        primary: Side,
    ) -> bool {
        let Some(relative) = path.strip_prefix(self.base_path.as_str()) else {
            return false;
        };
        let Some(api) = Api::of_path(relative) else {
            return false;
        };
        let Some(presented) = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return false;
        };
        let other = self.tokens(primary.other()).of(api);
        let own = self.tokens(primary).of(api);
        if other == own || !other.matches(presented.as_bytes()) {
            return false;
        }
        match HeaderValue::from_str(&format!("Bearer {}", own.expose())) {
            Ok(mut value) => {
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Secret;

    fn credentials() -> Credentials {
        let mut source = ApiTokens::single("source-token");
        source.session_store = Secret::new("source-sessions");
        Credentials::new("/c2id", source, ApiTokens::single("target-token"))
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    #[test]
    fn source_tokens_are_swapped_for_the_targets_after_the_flip() {
        let credentials = credentials();
        let mut headers = bearer("source-sessions");
        assert!(credentials.follow_primary(
            "/c2id/session-store/rest/v2/sessions",
            &mut headers,
            Side::Target
        ));
        assert_eq!(headers[AUTHORIZATION], "Bearer target-token");
        let mut headers = bearer("source-token");
        assert!(credentials.follow_primary("/c2id/clients/abc", &mut headers, Side::Target));
        assert_eq!(headers[AUTHORIZATION], "Bearer target-token");
    }

    #[test]
    fn other_tokens_paths_and_directions_pass_untouched() {
        let credentials = credentials();
        // The source is primary: source tokens are right already.
        let mut headers = bearer("source-token");
        assert!(!credentials.follow_primary("/c2id/clients", &mut headers, Side::Source));
        // A client's own access token on a public endpoint.
        let mut headers = bearer("source-token");
        assert!(!credentials.follow_primary("/c2id/userinfo", &mut headers, Side::Target));
        // A token that belongs to another API.
        let mut headers = bearer("source-token");
        assert!(!credentials.follow_primary(
            "/c2id/session-store/rest/v2/sessions",
            &mut headers,
            Side::Target
        ));
        // After a rollback, target tokens become source tokens.
        let mut headers = bearer("target-token");
        assert!(credentials.follow_primary(
            "/c2id/authz-store/rest/v3/authorizations",
            &mut headers,
            Side::Source
        ));
        assert_eq!(headers[AUTHORIZATION], "Bearer source-token");
    }
}
