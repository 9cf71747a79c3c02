//! How strictly the emulator reads the Authlete API where the team's
//! reading (`spec/authlete.md`) and the real service may differ.
//!
//! Every switch has two values. The **lenient** one is the reading the
//! emulator has always had, and what the product was written against; the
//! **strict** one is what the public material says, or, where it is silent,
//! the reading most hostile to the proxy (each switch says which). Both stay
//! selectable so that a test can prove the product copes with the strict
//! reading, and the product suites keep running while it does not yet.
//!
//! | switch | lenient (default) | strict ([`Strictness::real`]) | source |
//! |---|---|---|---|
//! | [`documented_paths`](Strictness::documented_paths) | extra layouts and methods accepted (v2 `/api/service/get`, v3 `/api/{id}/service/get/list`, `PUT` update, `POST` secret refresh) | exactly the documented path and method per version, else 404/405 | v2/v3 OpenAPI, `authlete-java-common` path constants |
//! | [`owner_credentials`](Strictness::owner_credentials) | v2 service APIs take the service's API key | v2 `/api/service/get/{apiKey}` and `/api/service/get/list` need the service *owner* key and secret | v2 OpenAPI `security: ServiceOwnerCredentials` |
//! | [`documented_aliases`](Strictness::documented_aliases) | an alias works wherever a client is named | no alias in `client/update/{clientId}` (numeric in both SDKs), `client/get/{clientId}`, `client/delete/{clientId}` (documented with "a client ID"; an alias there is unverified, spec §7 q4) nor in `clientId` of v3 `auth/token/create` | SDK path formats (`%d`), OpenAPI field types |
//! | [`client_update`](Strictness::client_update) | [`ClientUpdate::Merge`]: omitted fields keep their value | [`ClientUpdate::Replace`]: omitted fields reset | spec §4.4 (inferred; the API takes a full `Client`) |
//! | [`rate_limit`](Strictness::rate_limit) | none | [`REAL_RATE_LIMIT`], 429 + `Retry-After` | none published: invented, hostile |
//! | [`sweep_unused_after`](Strictness::sweep_unused_after) | never | [`REAL_SWEEP_UNUSED_AFTER`] (90 days) | [KB-SWEEP] |
//! | [`duplicate_token`](Strictness::duplicate_token) | [`DuplicateToken::InventedCodes`] (400 `A109208`/`A109209`) | [`DuplicateToken::ServerError`] (500 `A001101`) | undocumented (spec §7 q1): hostile |
//! | [`client_single_access_token`](Strictness::client_single_access_token) | the client's `singleAccessTokenPerSubject` is stored, not honoured | honoured like the service flag | v2 OpenAPI `Client.singleAccessTokenPerSubject` |
//! | [`typed_client_metadata`](Strictness::typed_client_metadata) | client metadata kept as given | typed and enum-checked as Authlete's schema says (`jwks` is a *string*), else 400 | v2/v3 OpenAPI `Client` schema |
//! | [`documented_revoke_order`](Strictness::documented_revoke_order) | `/auth/token/revoke` removes the pairs matching *all* criteria | the first criterion in the documented order wins, the others are ignored | `TokenRevokeRequest` javadoc |
//! | [`batch_duration`](Strictness::batch_duration) | a token batch runs as soon as it is accepted (done within milliseconds) | it stays in progress for [`REAL_BATCH_DURATION`] (`max(1 s, 2 ms a token)`), its status without a `result` and its tokens absent until then | asynchronous: spec §5.2; the duration is invented (no public figure), the in-progress shape hostile (the SDK's `Result` has only `SUCCEEDED` and `FAILED`) |
//!
//! The strict preset is a reading, not a recording: where a row says
//! "hostile", no public material settles the question and the emulator
//! picks the answer that hurts a careless client most.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The cap [`Strictness::real`] puts on the request rate. Authlete
/// publishes no limit (spec §5.1); 50 requests a second per service is an
/// invented, deliberately modest figure, low enough that a proxy which
/// ignores `Retry-After` meets it under load.
pub const REAL_RATE_LIMIT: RateLimit = RateLimit {
    requests: 50,
    per: Duration::from_secs(1),
};

/// How long a token may go unused before [`Strictness::real`] deletes it:
/// Authlete's 90 days ([KB-SWEEP]).
pub const REAL_SWEEP_UNUSED_AFTER: Duration = Duration::from_secs(90 * 24 * 3_600);

/// How long [`Strictness::real`] keeps a token batch in progress: at
/// least a second, 2 ms a token beyond 500. Authlete publishes no figure;
/// the batch is documented as asynchronous (spec §5.2), and this invented
/// one is long enough that a client must poll more than once, so a client
/// that polls in a tight loop shows in a count of its calls.
pub const REAL_BATCH_DURATION: BatchDuration = BatchDuration {
    floor: Duration::from_secs(1),
    per_token: Duration::from_millis(2),
};

/// How long an accepted token batch stays in progress: the larger of
/// `floor` and `per_token` times its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDuration {
    /// The shortest time in progress.
    pub floor: Duration,
    /// Time per item.
    pub per_token: Duration,
}

impl BatchDuration {
    /// How long a batch of `tokens` items stays in progress.
    pub fn of(self, tokens: usize) -> Duration {
        let per = self
            .per_token
            .saturating_mul(u32::try_from(tokens).unwrap_or(u32::MAX));
        per.max(self.floor)
    }
}

impl fmt::Display for BatchDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max({}ms, {}ms/token)",
            self.floor.as_millis(),
            self.per_token.as_millis()
        )
    }
}

/// What `/client/update/{clientId}` does with the fields its body omits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientUpdate {
    /// They keep their current value (a patch). The product's partial
    /// updates rely on this.
    Merge,
    /// They are reset to their defaults: the body replaces the client, as
    /// an API taking a full `Client` object most plausibly does (spec
    /// §4.4), so a partial update wipes settings made on the Authlete side.
    Replace,
}

/// How `/auth/token/create` (and a batch item) answers a value whose hash
/// Authlete already holds. The real answer is undocumented (spec §7 q1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateToken {
    /// 400, action `BAD_REQUEST`, `A109208` (access token) or `A109209`
    /// (refresh token), message saying the hash "already exists": codes the
    /// emulator invented.
    InventedCodes,
    /// 500, action `INTERNAL_SERVER_ERROR`, `A001101` "Authlete Server
    /// error.": the only documented generic failure code. The SDK javadoc
    /// says the token "cannot be inserted", which reads like a unique-index
    /// violation surfacing as a server error. Nothing in the answer says
    /// "duplicate", and it looks transient, so a client must confirm by
    /// introspection instead of matching a code.
    ServerError,
}

/// A cap on requests per fixed window, answered with 429 and
/// `Retry-After` (whole seconds, at least 1) once reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window.
    pub per: Duration,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}ms", self.requests, self.per.as_millis())
    }
}

/// The switches, one field each; see the module documentation for what
/// each value means and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strictness {
    /// Only documented paths and methods, per version.
    pub documented_paths: bool,
    /// v2 service APIs need the service owner's credentials.
    pub owner_credentials: bool,
    /// Client id aliases only where Authlete documents them.
    pub documented_aliases: bool,
    /// Merge or replace on `/client/update`.
    pub client_update: ClientUpdate,
    /// A request-rate cap; `None` for none.
    pub rate_limit: Option<RateLimit>,
    /// Delete tokens unused for this long; `None` never does.
    pub sweep_unused_after: Option<Duration>,
    /// The answer to a duplicate token value.
    pub duplicate_token: DuplicateToken,
    /// Honour the client-level `singleAccessTokenPerSubject`.
    pub client_single_access_token: bool,
    /// Type- and enum-check client metadata.
    pub typed_client_metadata: bool,
    /// `/auth/token/revoke` follows the documented precedence of criteria.
    pub documented_revoke_order: bool,
    /// How long a token batch stays in progress after it was accepted;
    /// `None`: it runs at once.
    pub batch_duration: Option<BatchDuration>,
}

impl Default for Strictness {
    /// [`Strictness::lenient`].
    fn default() -> Self {
        Self::lenient()
    }
}

impl Strictness {
    /// Every switch at its lenient value: the emulator as it has always
    /// been (except that `client/update` merges, see [`ClientUpdate`]).
    pub const fn lenient() -> Self {
        Self {
            documented_paths: false,
            owner_credentials: false,
            documented_aliases: false,
            client_update: ClientUpdate::Merge,
            rate_limit: None,
            sweep_unused_after: None,
            duplicate_token: DuplicateToken::InventedCodes,
            client_single_access_token: false,
            typed_client_metadata: false,
            documented_revoke_order: false,
            batch_duration: None,
        }
    }

    /// Every switch at its strict value: the closest reading of the real
    /// service, hostile where the material is silent.
    pub const fn real() -> Self {
        Self {
            documented_paths: true,
            owner_credentials: true,
            documented_aliases: true,
            client_update: ClientUpdate::Replace,
            rate_limit: Some(REAL_RATE_LIMIT),
            sweep_unused_after: Some(REAL_SWEEP_UNUSED_AFTER),
            duplicate_token: DuplicateToken::ServerError,
            client_single_access_token: true,
            typed_client_metadata: true,
            documented_revoke_order: true,
            batch_duration: Some(REAL_BATCH_DURATION),
        }
    }

    /// Sets one switch to its strict (`true`) or lenient value. A strict
    /// rate limit, sweep or batch duration takes the [`real`](Self::real) figures; set the
    /// field directly for others.
    pub fn set(&mut self, switch: Switch, strict: bool) {
        let from = if strict {
            Self::real()
        } else {
            Self::lenient()
        };
        match switch {
            Switch::Paths => self.documented_paths = from.documented_paths,
            Switch::OwnerCredentials => self.owner_credentials = from.owner_credentials,
            Switch::Aliases => self.documented_aliases = from.documented_aliases,
            Switch::ReplaceUpdate => self.client_update = from.client_update,
            Switch::RateLimit => self.rate_limit = from.rate_limit,
            Switch::Sweep => self.sweep_unused_after = from.sweep_unused_after,
            Switch::ResultCodes => self.duplicate_token = from.duplicate_token,
            Switch::ClientSingleToken => {
                self.client_single_access_token = from.client_single_access_token;
            }
            Switch::TypedClientMetadata => self.typed_client_metadata = from.typed_client_metadata,
            Switch::RevokeOrder => self.documented_revoke_order = from.documented_revoke_order,
            Switch::SlowBatch => self.batch_duration = from.batch_duration,
        }
    }

    /// Whether a switch is at its strict value.
    pub fn is_strict(&self, switch: Switch) -> bool {
        match switch {
            Switch::Paths => self.documented_paths,
            Switch::OwnerCredentials => self.owner_credentials,
            Switch::Aliases => self.documented_aliases,
            Switch::ReplaceUpdate => self.client_update == ClientUpdate::Replace,
            Switch::RateLimit => self.rate_limit.is_some(),
            Switch::Sweep => self.sweep_unused_after.is_some(),
            Switch::ResultCodes => self.duplicate_token == DuplicateToken::ServerError,
            Switch::ClientSingleToken => self.client_single_access_token,
            Switch::TypedClientMetadata => self.typed_client_metadata,
            Switch::RevokeOrder => self.documented_revoke_order,
            Switch::SlowBatch => self.batch_duration.is_some(),
        }
    }
}

/// One switch by name, as `handover emulate --strict NAME` and
/// `--lenient NAME` take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// `paths`: [`Strictness::documented_paths`].
    Paths,
    /// `owner-credentials`: [`Strictness::owner_credentials`].
    OwnerCredentials,
    /// `aliases`: [`Strictness::documented_aliases`].
    Aliases,
    /// `replace-update`: [`Strictness::client_update`].
    ReplaceUpdate,
    /// `rate-limit`: [`Strictness::rate_limit`].
    RateLimit,
    /// `sweep`: [`Strictness::sweep_unused_after`].
    Sweep,
    /// `result-codes`: [`Strictness::duplicate_token`].
    ResultCodes,
    /// `client-single-token`: [`Strictness::client_single_access_token`].
    ClientSingleToken,
    /// `typed-client-metadata`: [`Strictness::typed_client_metadata`].
    TypedClientMetadata,
    /// `revoke-order`: [`Strictness::documented_revoke_order`].
    RevokeOrder,
    /// `slow-batch`: [`Strictness::batch_duration`].
    SlowBatch,
}

impl Switch {
    /// Every switch, in the order of the module table.
    pub(crate) const ALL: [Self; 11] = [
        Self::Paths,
        Self::OwnerCredentials,
        Self::Aliases,
        Self::ReplaceUpdate,
        Self::RateLimit,
        Self::Sweep,
        Self::ResultCodes,
        Self::ClientSingleToken,
        Self::TypedClientMetadata,
        Self::RevokeOrder,
        Self::SlowBatch,
    ];

    /// The command-line name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Paths => "paths",
            Self::OwnerCredentials => "owner-credentials",
            Self::Aliases => "aliases",
            Self::ReplaceUpdate => "replace-update",
            Self::RateLimit => "rate-limit",
            Self::Sweep => "sweep",
            Self::ResultCodes => "result-codes",
            Self::ClientSingleToken => "client-single-token",
            Self::TypedClientMetadata => "typed-client-metadata",
            Self::RevokeOrder => "revoke-order",
            Self::SlowBatch => "slow-batch",
        }
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A switch name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Authlete emulator switch {name:?} (expected one of: {expected})")]
pub struct UnknownSwitch {
    /// The name given.
    pub name: String,
    /// The names there are.
    pub expected: String,
}

impl FromStr for Switch {
    type Err = UnknownSwitch;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|switch| switch.name() == text)
            .ok_or_else(|| UnknownSwitch {
                name: text.to_owned(),
                expected: Self::ALL.map(Self::name).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_switch_flips_between_the_presets_and_round_trips_its_name() {
        for switch in Switch::ALL {
            assert_eq!(switch.name().parse::<Switch>(), Ok(switch));
            assert!(!Strictness::lenient().is_strict(switch), "{switch}");
            assert!(Strictness::real().is_strict(switch), "{switch}");
            let mut one = Strictness::lenient();
            one.set(switch, true);
            assert!(one.is_strict(switch), "{switch}");
            let others = Switch::ALL.into_iter().filter(|s| *s != switch);
            assert!(others.clone().all(|s| !one.is_strict(s)), "{switch}");
            one.set(switch, false);
            assert_eq!(one, Strictness::lenient(), "{switch}");
        }
        let err = "nope".parse::<Switch>().expect_err("unknown");
        assert!(err.to_string().contains("slow-batch"), "{err}");
    }

    #[test]
    fn a_batch_takes_the_floor_or_its_size_whichever_is_longer() {
        assert_eq!(REAL_BATCH_DURATION.of(0), Duration::from_secs(1));
        assert_eq!(REAL_BATCH_DURATION.of(500), Duration::from_secs(1));
        assert_eq!(REAL_BATCH_DURATION.of(2_000), Duration::from_secs(4));
    }
}
