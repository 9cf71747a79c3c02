//! OpenID Connect Back-Channel Logout 1.0, when
//! `Strictness::backchannel_logout` is on: when a subject session ends, every
//! relying party recorded on it (member `rps`) that registered a
//! `backchannel_logout_uri` is sent a logout token.
//!
//! A real Connect2id server notifies on session-store `DELETE` and logout
//! (RN 15.6) and on expiry by its purge task (RN 14.9, 15.2). That is what
//! makes a migration target dangerous while it mirrors: its own idle expiry
//! or quota closing can log users out of relying parties while the source
//! still holds the session. Every notification is recorded (with its
//! delivery outcome once known) so tests and rehearsals can count them.
//!
//! Logout tokens are Ed25519-signed JWTs typed `logout+jwt` (RN 12.10) that
//! expire after 5 minutes (RN 15.7), with `iss`, `aud`, `iat`, `exp`, `jti`,
//! `events`, `sub` and `sid` (the value the session's ID tokens carry).
//! Delivery is a form `POST` of `logout_token` over plain HTTP; other
//! schemes are recorded as undeliverable (the emulator has no TLS client
//! trust to offer).

use std::sync::{Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};

use super::Service;
use super::records::Session;
use super::sessions::RELYING_PARTIES;
use super::web::percent_encode;

/// How long a logout token is valid, in seconds (RN 15.7).
const LOGOUT_TOKEN_LIFETIME: u64 = 300;

/// The `events` member of a logout token.
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// One back-channel logout notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackchannelLogout {
    /// The issuer (tenant or alias) that sent it.
    pub issuer: String,
    /// The relying party notified.
    pub client_id: String,
    /// Its `backchannel_logout_uri`.
    pub uri: String,
    /// The subject logged out.
    pub sub: String,
    /// The ended session's SID (as in its ID tokens' `sid`).
    pub sid: String,
    /// Why the session ended: `deleted`, `logout`, `quota`, `expired` or
    /// `device_secret revoked`.
    pub reason: String,
    /// Emulator time of the notification, epoch seconds.
    pub at: u64,
    /// The HTTP status the relying party answered, once delivered.
    pub status: Option<u16>,
    /// Why delivery failed, if it did.
    pub error: Option<String>,
}

/// Sends and records notifications; shared by every tenant.
#[derive(Default)]
pub(crate) struct Notifier {
    sent: Mutex<Vec<BackchannelLogout>>,
    client: OnceLock<Client<HttpConnector, Full<Bytes>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    /// Every notification so far, oldest first.
    pub(crate) fn notifications(&self) -> Vec<BackchannelLogout> {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, notice: BackchannelLogout) -> usize {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.push(notice);
        sent.len() - 1
    }

    fn outcome(&self, index: usize, status: Option<u16>, error: Option<String>) {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notice) = sent.get_mut(index) {
            notice.status = status;
            notice.error = error;
        }
    }

    fn client(&self) -> Client<HttpConnector, Full<Bytes>> {
        self.client
            .get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
            .clone()
    }
}

impl Service {
    /// Called after a subject session was removed, for whatever reason.
    pub(crate) fn session_ended(&self, key: &str, session: &Session, reason: &str) {
        if !self.strict().backchannel_logout {
            return;
        }
        let Some(Value::Array(rps)) = session.extra.get(RELYING_PARTIES) else {
            return;
        };
        let sid = self.keys.keyed(key);
        for client_id in rps.iter().filter_map(Value::as_str) {
            let Some(stored) = self.store.client(client_id) else {
                continue;
            };
            let uri = serde_json::from_str::<Value>(&stored.info)
                .ok()
                .and_then(|info| {
                    info.get("backchannel_logout_uri")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            if let Some(uri) = uri {
                self.notify(client_id, &uri, &session.sub, &sid, reason);
            }
        }
    }

    fn notify(&self, client_id: &str, uri: &str, sub: &str, sid: &str, reason: &str) {
        let now = self.now();
        let claims = json!({
            "iss": self.issuer(),
            "aud": client_id,
            "iat": now,
            "exp": now + LOGOUT_TOKEN_LIFETIME,
            "jti": self.keys.random_string::<16>(),
            "events": { LOGOUT_EVENT: {} },
            "sub": sub,
            "sid": sid,
        });
        let token = self.keys.sign_jwt("logout+jwt", &claims);
        let index = self.backchannel.record(BackchannelLogout {
            issuer: self.issuer().to_owned(),
            client_id: client_id.to_owned(),
            uri: uri.to_owned(),
            sub: sub.to_owned(),
            sid: sid.to_owned(),
            reason: reason.to_owned(),
            at: now,
            status: None,
            error: None,
        });
        tracing::debug!(reason, "sending a back-channel logout notification");
        let notifier = self.backchannel.clone();
        if !uri.starts_with("http://") {
            notifier.outcome(index, None, Some("only http:// is delivered".to_owned()));
            return;
        }
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "logout_token={}",
                percent_encode(&token)
            ))));
        let request = match request {
            Ok(request) => request,
            Err(err) => {
                notifier.outcome(index, None, Some(err.to_string()));
                return;
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            notifier.outcome(index, None, Some("no async runtime".to_owned()));
            return;
        };
        let client = notifier.client();
        runtime.spawn(async move {
            match client.request(request).await {
                Ok(response) => notifier.outcome(index, Some(response.status().as_u16()), None),
                Err(err) => notifier.outcome(index, None, Some(err.to_string())),
            }
        });
    }
}
