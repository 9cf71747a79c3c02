//! Credentials follow the primary (DESIGN.md §6): a management call from
//! the login page backend or an admin tool presents the *source's* bearer
//! token for that API; after the flip it reaches the target, which knows
//! only its own token. The proxy swaps the token of the other side for the
//! primary's, per API, so integrations keep working unchanged (and the
//! reverse after a rollback).
//!
//! The same holds for self-managing clients (RFC 7592, domain-gaps Q1.3):
//! each server mints its own registration access token for a client and
//! none can be imported, so a client calling `/clients/{id}` with the
//! other side's token gets the primary's instead, from the sync's
//! [`Registrations`] map. The first update at the new primary hands the
//! client that server's own token.
//!
//! Tokens are compared in constant time; any other token passes through
//! untouched.

use std::sync::Arc;

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};

use crate::http::form;
use crate::journal::Registrations;
use crate::model::{Secret, Side};
use crate::servers::connect2id::{Api, ApiTokens};

/// Both sides' management tokens, and the clients' registration tokens.
#[derive(Debug, Clone)]
pub struct Credentials {
    base_path: String,
    source: ApiTokens,
    target: ApiTokens,
    registrations: Option<Arc<Registrations>>,
}

impl Credentials {
    /// The tokens of both sides; endpoints are under `base_path`.
    pub fn new(base_path: &str, source: ApiTokens, target: ApiTokens) -> Self {
        Self {
            base_path: base_path.trim_end_matches('/').to_owned(),
            source,
            target,
            registrations: None,
        }
    }

    /// Swaps self-managing clients' registration access tokens too, as
    /// `registrations` knows them.
    pub fn with_registrations(mut self, registrations: Arc<Registrations>) -> Self {
        self.registrations = Some(registrations);
        self
    }

    /// The primary's registration access token for the client of a
    /// `/clients/{id}` call that presented the other side's.
    fn registration_token(&self, relative: &str, presented: &str, primary: Side) -> Option<String> {
        let encoded = relative.strip_prefix("/clients/")?;
        if encoded.is_empty() || encoded.contains('/') {
            return None;
        }
        let entry = self
            .registrations
            .as_ref()?
            .get(&form::decode_segment(encoded))?;
        let (own, other) = match primary {
            Side::Source => (entry.source?, entry.target?),
            Side::Target => (entry.target?, entry.source?),
        };
        (own != other && Secret::new(&other).matches(presented.as_bytes())).then_some(own)
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
        let replacement = if other != own && other.matches(presented.as_bytes()) {
            own.expose().to_owned()
        } else if api == Api::Clients
            && let Some(token) = self.registration_token(relative, presented, primary)
        {
            token
        } else {
            return false;
        };
        match HeaderValue::from_str(&format!("Bearer {replacement}")) {
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
    fn a_self_managing_clients_token_is_swapped_for_the_primarys() {
        let dir = tempfile::tempdir().unwrap();
        let map = Arc::new(
            Registrations::open(dir.path(), crate::journal::Cipher::new([1; 32])).unwrap(),
        );
        map.update("app 1", |entry| {
            entry.source = Some("rat-at-source".into());
            entry.target = Some("rat-at-target".into());
        })
        .unwrap();
        let credentials = credentials().with_registrations(map);
        let mut headers = bearer("rat-at-source");
        assert!(credentials.follow_primary("/c2id/clients/app%201", &mut headers, Side::Target));
        assert_eq!(headers[AUTHORIZATION], "Bearer rat-at-target");
        // The primary's own token, another client's path, the collection:
        // untouched.
        let mut headers = bearer("rat-at-target");
        assert!(!credentials.follow_primary("/c2id/clients/app%201", &mut headers, Side::Target));
        let mut headers = bearer("rat-at-source");
        assert!(!credentials.follow_primary("/c2id/clients/other", &mut headers, Side::Target));
        assert!(!credentials.follow_primary("/c2id/clients", &mut headers, Side::Target));
        // After a rollback, the target's token becomes the source's.
        let mut headers = bearer("rat-at-target");
        assert!(credentials.follow_primary("/c2id/clients/app%201", &mut headers, Side::Source));
        assert_eq!(headers[AUTHORIZATION], "Bearer rat-at-source");
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
