//! Credentials follow the primary (DESIGN.md §6): a management call from
//! the login page backend or an admin tool presents the *source's* bearer
//! token for that API; after the flip it reaches the target, which knows
//! only its own token. The proxy swaps the token of the other side for the
//! primary's, per API, so integrations keep working unchanged (and the
//! reverse after a rollback). Tokens are compared in constant time; any
//! other token passes through untouched.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};

use crate::model::Secret;
use crate::model::Side;
use crate::servers::connect2id::ApiTokens;

/// The management APIs, by path prefix under the base path.
const APIS: [(&str, Api); 6] = [
    ("/clients", Api::Clients),
    ("/authz-sessions/", Api::AuthzSessions),
    ("/direct-authz/", Api::AuthzSessions),
    ("/logout-sessions/", Api::AuthzSessions),
    ("/authz-store/", Api::AuthzStore),
    ("/session-store/", Api::SessionStore),
];

#[derive(Debug, Clone, Copy)]
enum Api {
    Clients,
    AuthzSessions,
    AuthzStore,
    SessionStore,
}

fn token(tokens: &ApiTokens, api: Api) -> &Secret {
    match api {
        Api::Clients => &tokens.clients,
        Api::AuthzSessions => &tokens.authz_sessions,
        Api::AuthzStore => &tokens.authz_store,
        Api::SessionStore => &tokens.session_store,
    }
}

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
    pub fn follow_primary(&self, path: &str, headers: &mut HeaderMap, primary: Side) -> bool {
        let Some(relative) = path.strip_prefix(self.base_path.as_str()) else {
            return false;
        };
        let Some(api) = APIS
            .iter()
            .find(|(prefix, _)| {
                relative.starts_with(prefix) || relative == prefix.trim_end_matches('/')
            })
            .map(|(_, api)| *api)
        else {
            return false;
        };
        let Some(presented) = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return false;
        };
        let other = token(self.tokens(primary.other()), api);
        let own = token(self.tokens(primary), api);
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
