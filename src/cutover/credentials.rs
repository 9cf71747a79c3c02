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
//! Management tokens come from the configuration, identical on every
//! instance of a fleet: they are matched in memory. Registration tokens
//! come from the sync, which may have run on another instance: they are
//! looked up in the map (a database read in a fleet), only for a
//! `/clients/{id}` call presenting a token other than the management
//! tokens, and only once a flip happened (before the first flip no client
//! holds a token of the target). Every other request is rewritten without
//! I/O.
//!
//! Tokens are compared in constant time; any other token passes through
//! untouched.

use std::sync::Arc;

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};

use super::Phases;
use crate::http::form;
use crate::model::{Secret, Side};
use crate::proxy::{BoxFuture, Rewriter};
use crate::servers::connect2id::{Api, ApiTokens};
use crate::store::Registrations;

/// Both sides' management tokens, and the clients' registration tokens.
#[derive(Debug, Clone)]
pub struct Credentials {
    base_path: String,
    source: ApiTokens,
    target: ApiTokens,
    registrations: Option<(Arc<Registrations>, Arc<Phases>)>,
}

/// What [`Credentials::follow_locally`] did.
#[derive(Debug)]
enum Followed {
    /// Swapped a management token.
    Swapped,
    /// Nothing to swap.
    Untouched,
    /// A `/clients/{id}` call with a token only the registration map can
    /// tell: [`Credentials::look_up`] finishes it.
    LookUp(Pending),
}

/// A registration token swap that needs the map.
#[derive(Debug)]
struct Pending {
    client_id: String,
    presented: Secret,
    primary: Side,
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
    /// `registrations` knows them, once `phases` has seen a flip.
    pub fn with_registrations(
        mut self,
        registrations: Arc<Registrations>,
        phases: Arc<Phases>,
    ) -> Self {
        self.registrations = Some((registrations, phases));
        self
    }

    fn tokens(&self, side: Side) -> &ApiTokens {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// Replaces the other side's management token with `primary`'s on a
    /// management call, from memory; says when a registration token swap
    /// needs the map.
    fn follow_locally(&self, path: &str, headers: &mut HeaderMap, primary: Side) -> Followed {
        let Some(relative) = path.strip_prefix(self.base_path.as_str()) else {
            return Followed::Untouched;
        };
        let Some(api) = Api::of_path(relative) else {
            return Followed::Untouched;
        };
        let Some(presented) = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return Followed::Untouched;
        };
        let other = self.tokens(primary.other()).of(api);
        let own = self.tokens(primary).of(api);
        if other != own && other.matches(presented.as_bytes()) {
            return if set_bearer(headers, own.expose()) {
                Followed::Swapped
            } else {
                Followed::Untouched
            };
        }
        if api != Api::Clients {
            return Followed::Untouched;
        }
        let Some((_, phases)) = &self.registrations else {
            return Followed::Untouched;
        };
        let Some(encoded) = relative.strip_prefix("/clients/") else {
            return Followed::Untouched;
        };
        if encoded.is_empty() || encoded.contains('/') || phases.current().epoch <= 1 {
            return Followed::Untouched;
        }
        Followed::LookUp(Pending {
            client_id: form::decode_segment(encoded),
            presented: Secret::new(presented),
            primary,
        })
    }

    /// Finishes a registration token swap: the primary's registration
    /// access token for the client when the call presented the other
    /// side's. Returns whether it swapped.
    async fn look_up(&self, pending: Pending, headers: &mut HeaderMap) -> bool {
        let Some((registrations, _)) = &self.registrations else {
            return false;
        };
        let Some(entry) = registrations.lookup(&pending.client_id).await else {
            return false;
        };
        let (own, other) = match pending.primary {
            Side::Source => (entry.source, entry.target),
            Side::Target => (entry.target, entry.source),
        };
        let (Some(own), Some(other)) = (own, other) else {
            return false;
        };
        own != other
            && Secret::new(&other).matches(pending.presented.expose().as_bytes())
            && set_bearer(headers, &own)
    }
}

impl Rewriter for Credentials {
    fn rewrite<'a>(
        &'a self,
        path: &'a str,
        headers: &'a mut HeaderMap,
        to: Side,
    ) -> Option<BoxFuture<'a, ()>> {
        match self.follow_locally(path, headers, to) {
            Followed::Swapped | Followed::Untouched => None,
            Followed::LookUp(pending) => Some(Box::pin(async move {
                self.look_up(pending, headers).await;
            })),
        }
    }
}

/// Sets `Authorization: Bearer <token>`, marked sensitive; false when the
/// token cannot be a header value (then nothing changes).
fn set_bearer(headers: &mut HeaderMap, token: &str) -> bool {
    match HeaderValue::from_str(&format!("Bearer {token}")) {
        Ok(mut value) => {
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cutover::Event;
    use crate::journal::Cipher;

    impl Credentials {
        /// Both steps of a rewrite; whether it swapped.
        async fn follow_primary(&self, path: &str, headers: &mut HeaderMap, primary: Side) -> bool {
            match self.follow_locally(path, headers, primary) {
                Followed::Swapped => true,
                Followed::Untouched => false,
                Followed::LookUp(pending) => self.look_up(pending, headers).await,
            }
        }
    }

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

    #[tokio::test]
    async fn source_tokens_are_swapped_for_the_targets_after_the_flip() {
        let credentials = credentials();
        let mut headers = bearer("source-sessions");
        assert!(
            credentials
                .follow_primary(
                    "/c2id/session-store/rest/v2/sessions",
                    &mut headers,
                    Side::Target
                )
                .await
        );
        assert_eq!(headers[AUTHORIZATION], "Bearer target-token");
        let mut headers = bearer("source-token");
        assert!(
            credentials
                .follow_primary("/c2id/clients/abc", &mut headers, Side::Target)
                .await
        );
        assert_eq!(headers[AUTHORIZATION], "Bearer target-token");
    }

    #[tokio::test]
    async fn a_self_managing_clients_token_is_swapped_for_the_primarys() {
        let dir = tempfile::tempdir().unwrap();
        let map = crate::journal::Registrations::open(dir.path(), Cipher::new([1; 32])).unwrap();
        map.update("app 1", |entry| {
            entry.source = Some("rat-at-source".into());
            entry.target = Some("rat-at-target".into());
        })
        .unwrap();
        let phases = Arc::new(Phases::load(dir.path()).unwrap());
        let credentials = credentials().with_registrations(
            Arc::new(Registrations::local(Arc::new(map))),
            Arc::clone(&phases),
        );
        // Before any flip no client holds the target's token: nothing is
        // looked up, the token is left as it is.
        let mut headers = bearer("rat-at-target");
        assert!(matches!(
            credentials.follow_locally("/c2id/clients/app%201", &mut headers, Side::Source),
            Followed::Untouched
        ));
        phases.apply(Event::Begin).unwrap();
        phases.apply(Event::Flip).unwrap();
        let mut headers = bearer("rat-at-source");
        assert!(
            credentials
                .follow_primary("/c2id/clients/app%201", &mut headers, Side::Target)
                .await
        );
        assert_eq!(headers[AUTHORIZATION], "Bearer rat-at-target");
        // The primary's own token, another client's path, the collection:
        // untouched.
        let mut headers = bearer("rat-at-target");
        assert!(
            !credentials
                .follow_primary("/c2id/clients/app%201", &mut headers, Side::Target)
                .await
        );
        let mut headers = bearer("rat-at-source");
        assert!(
            !credentials
                .follow_primary("/c2id/clients/other", &mut headers, Side::Target)
                .await
        );
        assert!(
            !credentials
                .follow_primary("/c2id/clients", &mut headers, Side::Target)
                .await
        );
        // Only a single client's path is looked up: the collection and
        // the other APIs are decided from memory.
        for path in [
            "/c2id/clients",
            "/c2id/clients/app/x",
            "/c2id/authz-store/rest/v3/authorizations",
        ] {
            assert!(
                matches!(
                    credentials.follow_locally(path, &mut headers, Side::Target),
                    Followed::Untouched
                ),
                "{path}"
            );
        }
        // After a rollback, the target's token becomes the source's.
        let mut headers = bearer("rat-at-target");
        assert!(
            credentials
                .follow_primary("/c2id/clients/app%201", &mut headers, Side::Source)
                .await
        );
        assert_eq!(headers[AUTHORIZATION], "Bearer rat-at-source");
    }

    #[tokio::test]
    async fn other_tokens_paths_and_directions_pass_untouched() {
        let credentials = credentials();
        // The source is primary: source tokens are right already.
        let mut headers = bearer("source-token");
        assert!(
            !credentials
                .follow_primary("/c2id/clients", &mut headers, Side::Source)
                .await
        );
        // A client's own access token on a public endpoint.
        let mut headers = bearer("source-token");
        assert!(
            !credentials
                .follow_primary("/c2id/userinfo", &mut headers, Side::Target)
                .await
        );
        // A token that belongs to another API.
        let mut headers = bearer("source-token");
        assert!(
            !credentials
                .follow_primary(
                    "/c2id/session-store/rest/v2/sessions",
                    &mut headers,
                    Side::Target
                )
                .await
        );
        // After a rollback, target tokens become source tokens.
        let mut headers = bearer("target-token");
        assert!(
            credentials
                .follow_primary(
                    "/c2id/authz-store/rest/v3/authorizations",
                    &mut headers,
                    Side::Source
                )
                .await
        );
        assert_eq!(headers[AUTHORIZATION], "Bearer source-token");
    }
}
