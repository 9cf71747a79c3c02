//! The PostgreSQL store: the fleet's shared journal, dead letters and
//! control state.
//!
//! # Schema (version [`SCHEMA_VERSION`])
//!
//! ```text
//! handover_schema       (id = 1, version)              the migration level
//! handover_journal      (seq, lane, record, appended_ms, claimed_by, claimed_until,
//!                        epoch)                                                          (epoch: version 3)
//! handover_journal_seq  sequence of journal seqs
//! handover_dead_letters (id, lane, reason, record, dead_ms)
//! handover_dead_letter_seq
//! handover_control      (id = 1, phase, epoch, flipped_at_ms, version,
//!                        hold_id, hold_coordinator, hold_until)                          (hold_*: version 3)
//! handover_members      (instance, admin_url, version, phase, renewed_at, lease_until,  (version 2)
//!                        hold_ack, hold_state, backfill)                                 (version 3)
//! handover_registrations (client, entry, secret_changed_at)                              (version 4)
//! handover_backfill     (id = 1, state, runner, runner_until, watching, started_at,     (version 5)
//!                        elapsed_ms, rate_limit, concurrency)
//! handover_backfill_checkpoints (dataset, checkpoint, rate, error, saved_at)            (version 5)
//! handover_backfill_touched     (lane)                                                  (version 5)
//! ```
//!
//! `lane` is the 16-byte keyed tag of the record's key; `record` is the
//! journal's own encrypted record frame (`journal::record`, ChaCha20-
//! Poly1305 under the journal key, the seq authenticated): the database
//! holds no token, session id or key in clear. A `reason` never names a
//! secret (the sync layer redacts).
//!
//! `handover_registrations` holds one row per client: `client` is the tag
//! of its client_id, `entry` its credentials (registration access tokens
//! on both sides, bearer secrets) sealed in the same record frame, with the
//! client_id inside so that a row moved under another tag is refused, and
//! `secret_changed_at` (epoch seconds) in clear so the cutover pre-flight
//! counts recent secret changes in SQL. An update is a read-modify-write
//! under the row's lock (`SELECT ... FOR UPDATE` in one transaction), so
//! instances changing different parts of one entry at once keep both.
//!
//! # Migrations
//!
//! Every instance migrates at start, under a session-level advisory lock
//! ([`MIGRATION_LOCK`]): several instances starting at once on an empty
//! database take turns, and the later ones find the work done. Each step
//! runs in its own transaction with the version bump; a database newer than
//! this build is refused ([`Error::SchemaTooNew`]).
//!
//! # Claims
//!
//! One owner per lane (key), fleet-wide: a lane in which any record is
//! held under a live lease (by anyone), or was appended at a newer epoch
//! than the claimer's, is never handed out. Every lane has an advisory
//! lock of its own (two keys: one for all lanes, then the lane tag's
//! first four bytes; see `lane_lock_keys!`), and a claim is one
//! transaction of two statements:
//!
//! 1. the pick ([`CLAIM_PICK`]) finds free lanes, oldest first, and locks
//!    each with `pg_try_advisory_xact_lock`, which never waits: a lane
//!    whose lock another claim (or the backfill) holds is skipped and the
//!    next candidate tried, until enough are locked. It locks only the
//!    lanes it returns (see the statement), and leaves them in a setting
//!    of the transaction (`handover.claim_lanes`);
//! 2. the take ([`CLAIM_TAKE`]), a statement of its own, so its snapshot
//!    is taken once the locks were granted, checks those lanes again
//!    (live lease, newer epoch), takes their rows `FOR UPDATE SKIP
//!    LOCKED` (so a claim never waits for an ack's delete in flight) and
//!    marks them claimed.
//!
//! The locks are released at commit, after the claim became visible. So
//! of two claims of one lane, the second locks it only after the first
//! committed (else it skips the lane), and its take sees the first's
//! lease. The check cannot be made in the statement that takes the locks:
//! a statement's snapshot is taken before it runs, so it could miss a
//! claim committed while it waited for the lock, and take a row appended
//! to the lane since then (`FOR UPDATE` re-reads only the rows it locks,
//! not the rest of the lane). The price: a lane another claim took while
//! the pick ran is locked, then found held by the take, so a claim under
//! contention may return fewer lanes than it asked for; the next claim
//! looks again.
//!
//! Claims of different lanes never wait for each other. (Before, every
//! claim first took one fleet-wide lock, [`CLAIM_LOCK`], so the fleet's
//! claims took turns: with three instances, waiting for it was a database
//! session's most frequent state, benches/README.md §9.) Two lanes whose
//! tags share their first four bytes share a lock: one of them is skipped
//! for a transaction, nothing worse. The backfill's claim (a record of its
//! own, inserted only into a lane untouched and empty) takes the lock of
//! its one lane the waiting way, then checks and inserts in a statement of
//! its own: atomic against claims of that lane in the same way. No
//! transaction waits for a lane's lock while holding another's, so these
//! locks never deadlock.
//!
//! A fleet upgraded one instance at a time runs both builds at once, and
//! the older one's claims know only [`CLAIM_LOCK`]. So every claim here
//! (and the backfill's) still takes it first, in shared mode: claims of
//! this build never wait for each other on it, and each waits for, and
//! excludes, an older build's claim, which takes it exclusively.
//!
//! Round trips: a claim is one (`BEGIN`, the shared lock, pick, take and
//! `COMMIT` sent back to back; the lanes go from one statement to the
//! next in the server, not through the client), where it was three (four
//! when the oldest rows gave nothing: the whole table's look was a
//! statement of its own); the backfill's claim is two (its seq, then the
//! rest), where it was four. Lease times use the database's clock only.
//!
//! # The fleet's backfill
//!
//! One row says who runs the backfill (`runner`, under a lease like a
//! member's) and where the pass is; one row per dataset holds its
//! checkpoint (the same JSON as the local checkpoint file, its key hash a
//! [`Cipher::tag`]). While a pass is unfinished (`watching`), every append
//! also records its lanes in `handover_backfill_touched`, in the same
//! statement: the durable "live traffic touched this key since the export
//! began" that outlives the records themselves (applied records are
//! deleted). See [`super::BackfillStore`] for the rules built on it.
//!
//! # Group commit
//!
//! Appends go through one writer task per instance: it takes every append
//! queued at that moment (up to [`super::MAX_GROUP_RECORDS`] records) and
//! commits them in one statement (a transaction of its own: seqs drawn,
//! then one insert), then answers each. Appends arriving
//! during a commit form the next group.
//!
//! # Pool
//!
//! A small bounded pool: at most `pool_size` connections, idle ones reused,
//! broken ones dropped; a waiter waits for a permit, not a busy loop.
//!
//! # Prepared statements
//!
//! A statement given as text is prepared (one round trip, and the server
//! parses and plans it) at every call, then run (a second one). So each
//! pooled connection keeps the statements it prepared, by their text
//! ([`Conn::prepared`]): after its first use there, a statement costs one
//! round trip and no parsing. They go with the connection when it breaks.
//! Statements that must follow one another without a decision in between
//! are sent back to back (issued together, awaited together; the server
//! runs them in order): a claim and an ack are one round trip each, their
//! `BEGIN` and `COMMIT` included.
//!
//! Schema changes and cached statements: migrations run in
//! [`Postgres::open`], before any traffic, with statements given as text,
//! and the connection's cache is emptied after them anyway. Another
//! instance's migration (a newer build, while this one runs) only adds
//! tables and columns: the server plans a cached statement again after
//! such a change, and every statement here names its result columns, so
//! none changes its result type.
//!
//! # Change notices
//!
//! A change of the control row (a hold published, a flip, an abort) and a
//! hold acknowledgement are announced with `NOTIFY` on [`CHANGES_CHANNEL`]
//! after they committed. One more connection per instance, outside the
//! pool, `LISTEN`s to it and wakes [`super::Handle::changes`]'s watchers, so
//! instances see a hold or a flip within a round trip instead of at their
//! next poll. It is a hint, never the state: the watchers read the rows
//! anyway, they keep polling (more slowly while the listener is connected),
//! and a lost listener connection is opened again with a backoff, counted
//! as a change (whatever was announced meanwhile is read then).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Connection, GenericClient, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use super::tls::MakeRustls;
use super::{
    Claimed, Config, Control, DeadLetter, Depth, Error, Kind, LaneTag, Record, Seq, from_unix_ms,
    unix_ms,
};
use crate::journal::{Cipher, ClientCredentials, record};

/// The channel changes of the control row and hold acknowledgements are
/// announced on (module doc, "Change notices").
pub const CHANGES_CHANNEL: &str = "handover_control";

/// The listener's first wait before it connects again after losing its
/// connection; it doubles up to [`LISTEN_BACKOFF_MAX`].
const LISTEN_BACKOFF: Duration = Duration::from_millis(100);
/// The listener's longest wait between attempts to connect.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i32 = 5;

/// Advisory lock key held while migrating ("handover" in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x6861_6e64_6f76_0001;

/// Advisory lock key of the fleet's claims: taken shared by every claim of
/// this build (so they never wait for each other on it), exclusively by
/// builds before it, whose claims relied on it alone (module doc,
/// "Claims": a fleet upgraded one instance at a time).
const CLAIM_LOCK: i64 = 0x6861_6e64_6f76_0002;

/// Takes [`CLAIM_LOCK`] (its parameter) shared until the transaction ends.
const CLAIM_LOCK_SHARE: &str = "SELECT pg_advisory_xact_lock_shared($1)";

/// The two keys of the advisory lock of the lane tag `$lane` (SQL), as
/// arguments of `pg_(try_)advisory_xact_lock` (module doc, "Claims"):
/// 1751215716 (0x68616e64, "hand" in ASCII) for every lane, then the tag's
/// first four bytes (it is a keyed hash: they are as good as any). Two-key
/// advisory locks are a space of their own: none is [`MIGRATION_LOCK`]. A
/// macro, so that the statements stay constants.
macro_rules! lane_lock_keys {
    ($lane:literal) => {
        concat!(
            "1751215716, ('x' || encode(substring(",
            $lane,
            " FROM 1 FOR 4), 'hex'))::bit(32)::integer"
        )
    };
}

/// A claim's first statement: picks up to $1 lanes and locks each
/// (module doc, "Claims"), then leaves them in the transaction's
/// `handover.claim_lanes` setting for [`CLAIM_TAKE`].
///
/// Candidates come first from the oldest unclaimed rows (at most four
/// looked at per lane wanted), by the primary key: usually the free lanes
/// are there, and a backlog of thousands of rows made grouping the whole
/// table on every claim expensive. Only if that locks none (the oldest
/// rows all belong to lanes held, not yet claimable, or being claimed
/// by others) is the whole table grouped, oldest lanes first, so no free
/// lane waits behind a busy one. Either way a candidate is a lane none of
/// whose rows is held under a live lease or was appended after the
/// claimer's epoch, in this statement's snapshot (the lock makes it worth
/// re-checking in the next).
///
/// The lock is a filter above each candidate list's own `LIMIT`, which
/// PostgreSQL never pushes a condition below: so it is evaluated on the
/// candidates in order, until $1 were locked, and never on a row the
/// statement then drops (without that `LIMIT` it went into the grouping
/// and locked every candidate). The second list is a sub-select
/// `coalesce` reaches only when the first is empty, so it is not run
/// otherwise. Parameters: $1 lanes wanted, $2 epoch.
const CLAIM_PICK: &str = concat!(
    "
    WITH oldest AS (
        SELECT lane FROM (
            SELECT c.lane FROM (
                SELECT lane, min(seq) AS first FROM (
                    SELECT lane, seq FROM handover_journal
                    WHERE claimed_until IS NULL OR claimed_until <= now()
                    ORDER BY seq LIMIT $1::bigint * 4
                ) unclaimed
                GROUP BY lane
            ) c
            WHERE NOT EXISTS (
                SELECT 1 FROM handover_journal j
                WHERE j.lane = c.lane AND (j.claimed_until > now() OR j.epoch > $2::bigint)
            )
            ORDER BY c.first LIMIT $1::bigint * 4
        ) free
        WHERE pg_try_advisory_xact_lock(",
    lane_lock_keys!("free.lane"),
    ")
        LIMIT $1::bigint
    ), anywhere AS (
        SELECT lane FROM (
            SELECT lane FROM handover_journal
            WHERE lane NOT IN (SELECT lane FROM handover_journal WHERE claimed_until > now())
            GROUP BY lane HAVING max(epoch) <= $2::bigint
            ORDER BY min(seq) LIMIT $1::bigint * 4
        ) free
        WHERE pg_try_advisory_xact_lock(",
    lane_lock_keys!("free.lane"),
    ")
        LIMIT $1::bigint
    )
    SELECT set_config('handover.claim_lanes', coalesce(
        (SELECT array_agg(lane) FROM oldest),
        (SELECT array_agg(lane) FROM anywhere),
        '{}')::text, true)"
);

/// A claim's second statement: of the lanes [`CLAIM_PICK`] locked, those
/// still free in this statement's snapshot (taken after the locks were
/// granted, so it holds every claim committed before), every row of
/// them not locked by a delete in flight, marked claimed. Parameters: $1
/// owner, $2 lease (ms), $3 epoch.
const CLAIM_TAKE: &str = "
    WITH lanes AS (
        SELECT l.lane FROM unnest(current_setting('handover.claim_lanes')::bytea[]) AS l (lane)
        WHERE NOT EXISTS (
            SELECT 1 FROM handover_journal j
            WHERE j.lane = l.lane AND (j.claimed_until > now() OR j.epoch > $3::bigint)
        )
    ), taken AS (
        SELECT seq FROM handover_journal
        WHERE lane IN (SELECT lane FROM lanes)
        FOR UPDATE SKIP LOCKED
    )
    UPDATE handover_journal j
    SET claimed_by = $1, claimed_until = now() + $2::bigint * interval '1 millisecond'
    FROM taken WHERE j.seq = taken.seq
    RETURNING j.seq, j.lane, j.record, j.appended_ms";

/// Takes the advisory lock of lane $1, waiting for it, until the
/// transaction ends (the backfill's claim: one lane).
const LANE_LOCK_TAKE: &str = concat!(
    "SELECT pg_advisory_xact_lock(",
    lane_lock_keys!("$1::bytea"),
    ")"
);

/// The backfill's claim: a record of its own into lane $2, claimed by $5,
/// only if live traffic has not touched the lane during the pass and no
/// record of it is pending. Parameters: $1 seq, $2 lane, $3 sealed record,
/// $4 append time (ms), $5 owner, $6 lease (ms).
const BACKFILL_INSERT: &str = "
    INSERT INTO handover_journal
        (seq, lane, record, appended_ms, epoch, claimed_by, claimed_until)
    SELECT $1, $2, $3, $4, 0, $5, now() + $6::bigint * interval '1 millisecond'
    WHERE NOT EXISTS (SELECT 1 FROM handover_backfill_touched WHERE lane = $2)
      AND NOT EXISTS (SELECT 1 FROM handover_journal WHERE lane = $2)
    RETURNING seq";

/// An ack: its records go (parameter: their seqs).
const ACK_DELETE: &str = "DELETE FROM handover_journal WHERE seq = ANY($1)";

/// Each migration, in order: `MIGRATIONS[n - 1]` takes the schema to `n`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE handover_journal (
        seq bigint PRIMARY KEY,
        lane bytea NOT NULL,
        record bytea NOT NULL,
        appended_ms bigint NOT NULL,
        claimed_by text,
        claimed_until timestamptz
    );
    CREATE INDEX handover_journal_lane ON handover_journal (lane, seq);
    CREATE INDEX handover_journal_claimed ON handover_journal (claimed_until)
        WHERE claimed_until IS NOT NULL;
    CREATE SEQUENCE handover_journal_seq;
    CREATE TABLE handover_dead_letters (
        id bigint PRIMARY KEY,
        lane bytea NOT NULL,
        reason text NOT NULL,
        record bytea NOT NULL,
        dead_ms bigint NOT NULL
    );
    CREATE SEQUENCE handover_dead_letter_seq;
    CREATE TABLE handover_control (
        id smallint PRIMARY KEY CHECK (id = 1),
        phase text NOT NULL,
        epoch bigint NOT NULL,
        flipped_at_ms bigint,
        version bigint NOT NULL
    );
    INSERT INTO handover_control (id, phase, epoch, flipped_at_ms, version)
        VALUES (1, 'mirroring', 1, NULL, 0);
",
    "
    CREATE TABLE handover_members (
        instance text PRIMARY KEY,
        admin_url text NOT NULL,
        version text NOT NULL,
        phase text NOT NULL,
        renewed_at timestamptz NOT NULL,
        lease_until timestamptz NOT NULL
    );
",
    // The lease-fenced cutover: the hold the coordinator publishes and each
    // member's acknowledgement of it.
    "
    ALTER TABLE handover_control
        ADD COLUMN hold_id bigint,
        ADD COLUMN hold_coordinator text,
        ADD COLUMN hold_until timestamptz;
    ALTER TABLE handover_journal ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
    ALTER TABLE handover_members
        ADD COLUMN hold_ack bigint,
        ADD COLUMN hold_state text,
        ADD COLUMN backfill text NOT NULL DEFAULT '';
",
    // The fleet's client credential map (`super::Registrations`): one row
    // per client, keyed by the client_id's tag, its tokens sealed; when its
    // secret last changed in clear, for the cutover pre-flight's counts.
    "
    CREATE TABLE handover_registrations (
        client bytea PRIMARY KEY,
        entry bytea NOT NULL,
        secret_changed_at bigint
    );
    CREATE INDEX handover_registrations_secret_changed
        ON handover_registrations (secret_changed_at) WHERE secret_changed_at IS NOT NULL;
",
    // The fleet's backfill: who runs it, its checkpoints, and the lanes
    // live traffic touched while a pass is unfinished.
    "
    CREATE TABLE handover_backfill (
        id smallint PRIMARY KEY CHECK (id = 1),
        state text NOT NULL,
        runner text,
        runner_until timestamptz,
        watching boolean NOT NULL,
        started_at timestamptz,
        elapsed_ms bigint,
        rate_limit bigint NOT NULL,
        concurrency bigint NOT NULL
    );
    -- A fleet upgraded after its backfill finished keeps it finished (each
    -- member reported its own backfill before this table existed): the
    -- cutover pre-flight must not ask for a second pass.
    INSERT INTO handover_backfill (id, state, watching, rate_limit, concurrency)
        VALUES (1, CASE WHEN EXISTS (SELECT 1 FROM handover_members WHERE backfill = 'done')
                        THEN 'done' ELSE 'idle' END, false, 0, 0);
    CREATE TABLE handover_backfill_checkpoints (
        dataset text PRIMARY KEY,
        checkpoint text NOT NULL,
        rate double precision NOT NULL DEFAULT 0,
        error text,
        saved_at timestamptz NOT NULL
    );
    CREATE TABLE handover_backfill_touched (
        lane bytea PRIMARY KEY
    );
",
];

/// What `handover check` learns about the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema {
    /// The version found (0: no handover tables yet; `serve` creates them).
    pub found: i32,
    /// [`SCHEMA_VERSION`].
    pub supported: i32,
}

/// The error text of a client error: the database's message (with its
/// SQLSTATE) or the client's, never the connection string.
pub(super) fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Whether `err` is rustls refusing the server's certificate (it comes
/// wrapped in the `io::Error` of the TLS stream).
fn certificate_refused(err: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let refused = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if matches!(refused, Some(rustls::Error::InvalidCertificate(_))) {
            return true;
        }
        source = cause.source();
    }
    false
}

#[derive(Debug, Clone)]
enum Tls {
    None,
    Rustls(MakeRustls),
}

/// A bounded pool of connections.
#[derive(Debug)]
struct Pool {
    config: tokio_postgres::Config,
    tls: Tls,
    /// What the server's certificate is checked against, for the error
    /// of a refused one (the operator's `ca_file`, or the system roots).
    trust: String,
    idle: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
}

/// A connection and the statements prepared on it (module doc,
/// "Prepared statements"): they live and die with it.
#[derive(Debug)]
struct Session {
    client: Client,
    /// Keyed by their text: every statement is a constant.
    statements: HashMap<&'static str, Statement>,
}

/// A connection borrowed from the pool; back to it when dropped (unless
/// it broke).
struct Conn<'a> {
    session: Option<Session>,
    pool: &'a Pool,
    _permit: OwnedSemaphorePermit,
}

impl Conn<'_> {
    fn session(&mut self) -> &mut Session {
        self.session.as_mut().expect("present until dropped")
    }

    /// `sql` prepared on this connection: parsed by the server at its
    /// first use here, reused after that. Prepare before opening a
    /// transaction and pass the statement to it.
    async fn prepared(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        let session = self.session();
        if let Some(statement) = session.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = session.client.prepare(sql).await?;
        session.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// [`Client::query`] of `sql` [prepared](Self::prepared) here.
    async fn query_cached(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepared(sql).await?;
        self.query(&statement, params).await
    }

    /// [`Client::query_one`] of `sql` [prepared](Self::prepared) here.
    async fn query_one_cached(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        let statement = self.prepared(sql).await?;
        self.query_one(&statement, params).await
    }

    /// [`Client::query_opt`] of `sql` [prepared](Self::prepared) here.
    async fn query_opt_cached(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepared(sql).await?;
        self.query_opt(&statement, params).await
    }

    /// [`Client::execute`] of `sql` [prepared](Self::prepared) here.
    async fn execute_cached(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepared(sql).await?;
        self.execute(&statement, params).await
    }

    /// Forgets the statements prepared so far (a schema change may have
    /// changed what they return); they are prepared again when used.
    fn forget_statements(&mut self) {
        self.session().statements.clear();
    }
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.session.as_ref().expect("present until dropped").client
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.session().client
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        // A broken connection goes with its statements: a new one starts
        // with none.
        if let Some(session) = self.session.take()
            && !session.client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(session);
        }
    }
}

impl Pool {
    fn new(config: &Config) -> Result<Self, Error> {
        let Kind::Postgres { url } = &config.kind else {
            return Err(Error::InvalidConfig {
                field: "store.kind",
                reason: "not a PostgreSQL store".to_owned(),
            });
        };
        let (text, verify_full) = ssl_verification(url.expose());
        let mut pg: tokio_postgres::Config = text.parse().map_err(|_| Error::InvalidConfig {
            field: "store.url",
            reason: "not a PostgreSQL connection URL or key=value string".to_owned(),
        })?;
        pg.connect_timeout(config.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("handover");
        }
        // libpq's meaning of sslmode, which operators know: `prefer` and
        // `require` encrypt without checking the server's certificate,
        // unless a CA is given (`[store] ca_file`, like libpq's root
        // certificate file); `verify-ca` / `verify-full` check it against
        // that CA or the system roots (rustls always checks the name too).
        let tls = if pg.get_ssl_mode() == SslMode::Disable {
            Tls::None
        } else {
            let client = if verify_full || config.ca_file.is_some() {
                crate::tls::client_config(config.ca_file.as_deref())
            } else {
                crate::tls::unverified_client_config()
            }
            .map_err(|err| Error::InvalidConfig {
                field: "store.ca_file",
                reason: err.to_string(),
            })?;
            Tls::Rustls(MakeRustls::new(client))
        };
        let trust = match &config.ca_file {
            Some(path) => format!("store.ca_file {}", path.display()),
            None => {
                "the system's root certificates (set store.ca_file for a private CA)".to_owned()
            }
        };
        Ok(Self {
            config: pg,
            tls,
            trust,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(config.pool_size.max(1))),
        })
    }

    async fn get(&self, op: &'static str) -> Result<Conn<'_>, Error> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some(session) if session.client.is_closed() => {}
                Some(session) => {
                    return Ok(Conn {
                        session: Some(session),
                        pool: self,
                        _permit: permit,
                    });
                }
                None => break,
            }
        }
        let client = self.connect(op).await?;
        Ok(Conn {
            session: Some(Session {
                client,
                statements: HashMap::new(),
            }),
            pool: self,
            _permit: permit,
        })
    }

    async fn connect(&self, op: &'static str) -> Result<Client, Error> {
        self.connect_notifying(op, None).await
    }

    /// A new connection, outside the pool's bound; its notifications (see
    /// `LISTEN`) go to `notices`, which is dropped when the connection ends.
    async fn connect_notifying(
        &self,
        op: &'static str,
        notices: Option<mpsc::UnboundedSender<()>>,
    ) -> Result<Client, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres(op, &err);
        let client = match &self.tls {
            Tls::None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(fail)?;
                tokio::spawn(drive(connection, notices));
                client
            }
            Tls::Rustls(tls) => {
                let (client, connection) =
                    self.config.connect(tls.clone()).await.map_err(|err| {
                        let refused = certificate_refused(&err);
                        let mut error = fail(err);
                        // Say where to look: the certificate or the CA
                        // configured, not the network.
                        if refused && let Error::Postgres { message, .. } = &mut error {
                            message.push_str("; the database's certificate was checked against ");
                            message.push_str(&self.trust);
                        }
                        error
                    })?;
                tokio::spawn(drive(connection, notices));
                client
            }
        };
        Ok(client)
    }

    fn close(&self) {
        self.permits.close();
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Runs a connection until it ends, passing its notifications on to
/// `notices` (dropped at the end, which tells the listener).
async fn drive<S, T>(mut connection: Connection<S, T>, notices: Option<mpsc::UnboundedSender<()>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => {
                if let Some(notices) = &notices {
                    let _ = notices.send(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                tracing::debug!(error = %describe(&err), "store connection ended");
                return;
            }
            None => return,
        }
    }
}

/// The listener (module doc, "Change notices"): `LISTEN`s on a connection
/// of its own, connects again with a backoff when it breaks, until `stop`.
async fn listen(pool: Arc<Pool>, changes: watch::Sender<super::Changes>, stop: CancellationToken) {
    let mut backoff = LISTEN_BACKOFF;
    loop {
        let (notices, mut noticed) = mpsc::unbounded_channel();
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            connected = pool.connect_notifying("listen for changes", Some(notices)) => connected,
        };
        match connected {
            Ok(client) => {
                let statement = format!("LISTEN {CHANGES_CHANNEL}");
                let listening = tokio::select! {
                    () = stop.cancelled() => return,
                    listening = client.batch_execute(&statement) => listening,
                };
                match listening {
                    Ok(()) => {
                        backoff = LISTEN_BACKOFF;
                        // Connected again: whatever was announced while
                        // nobody listened is read now.
                        changes.send_modify(|seen| {
                            seen.listening = true;
                            seen.notices += 1;
                        });
                        loop {
                            tokio::select! {
                                () = stop.cancelled() => return,
                                notice = noticed.recv() => match notice {
                                    Some(()) => changes.send_modify(|seen| seen.notices += 1),
                                    None => break,
                                },
                            }
                        }
                        changes.send_modify(|seen| seen.listening = false);
                        tracing::debug!("the store's change listener lost its connection");
                    }
                    Err(err) => {
                        tracing::debug!(error = %describe(&err), "cannot listen for the store's changes");
                    }
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot connect the store's change listener"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

/// Announces a committed change on [`CHANGES_CHANNEL`]: a hint (module
/// doc), so a failure only costs the other instances their next poll.
async fn announce(conn: &Client) {
    if let Err(err) = conn
        .batch_execute(&format!("NOTIFY {CHANGES_CHANNEL}"))
        .await
    {
        tracing::debug!(error = %describe(&err), "cannot announce a change of the store");
    }
}

struct AppendRequest {
    /// Lane tag, body, epoch.
    records: Vec<(LaneTag, Vec<u8>, i64)>,
    reply: oneshot::Sender<Result<Vec<Seq>, Error>>,
}

/// The PostgreSQL store.
#[derive(Debug)]
pub struct Postgres {
    pool: Arc<Pool>,
    cipher: Cipher,
    writer: mpsc::UnboundedSender<AppendRequest>,
    /// What the listener heard (module doc, "Change notices").
    changes: watch::Receiver<super::Changes>,
    /// Ends the listener.
    stop: CancellationToken,
    /// Backfill claims in flight at once ([`BACKFILL_CLAIMS`]).
    backfill_claims: Semaphore,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The listener holds a connection of its own.
        self.stop.cancel();
    }
}

/// Backfill claims one instance runs at once. Each is one short
/// transaction (module doc, "Claims"); the backfill's dozens of writes in
/// flight must leave the pool to the appends a client waits for, the
/// claims and the lease renewals.
const BACKFILL_CLAIMS: usize = 2;

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

/// Reads the schema version without changing anything.
pub(super) async fn probe(config: &Config) -> Result<Schema, Error> {
    let pool = Pool::new(config)?;
    let conn = pool.get("connect").await?;
    let fail = |err: tokio_postgres::Error| Error::postgres("read schema version", &err);
    let exists = conn
        .query_one("SELECT to_regclass('handover_schema') IS NOT NULL", &[])
        .await
        .map_err(fail)?
        .get::<_, bool>(0);
    let found = if exists {
        conn.query_opt("SELECT version FROM handover_schema WHERE id = 1", &[])
            .await
            .map_err(fail)?
            .map_or(0, |row| row.get::<_, i32>(0))
    } else {
        0
    };
    Ok(Schema {
        found,
        supported: SCHEMA_VERSION,
    })
}

async fn migrate(client: &mut Client) -> Result<(), Error> {
    let fail = |err: tokio_postgres::Error| Error::postgres("migrate schema", &err);
    client
        .query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    let result = migrate_locked(client).await;
    // A dropped connection releases the lock too.
    let unlocked = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail);
    result.and(unlocked.map(drop))
}

async fn migrate_locked(client: &mut Client) -> Result<(), Error> {
    let fail = |err: tokio_postgres::Error| Error::postgres("migrate schema", &err);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS handover_schema (
                 id smallint PRIMARY KEY CHECK (id = 1),
                 version integer NOT NULL
             );
             INSERT INTO handover_schema (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;",
        )
        .await
        .map_err(fail)?;
    let found: i32 = client
        .query_one("SELECT version FROM handover_schema WHERE id = 1", &[])
        .await
        .map_err(fail)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for version in found + 1..=SCHEMA_VERSION {
        let step = MIGRATIONS[usize::try_from(version - 1).expect("versions start at 1")];
        let tx = client.transaction().await.map_err(fail)?;
        tx.batch_execute(step).await.map_err(fail)?;
        tx.execute(
            "UPDATE handover_schema SET version = $1 WHERE id = 1",
            &[&version],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(version, "migrated the store schema");
    }
    Ok(())
}

/// `sslmode=verify-ca` / `verify-full` (libpq's, which the client does
/// not parse) become `require` plus "check the certificate".
pub(super) fn ssl_verification(url: &str) -> (String, bool) {
    let mut verify = false;
    let text = ["verify-full", "verify-ca"]
        .iter()
        .fold(url.to_owned(), |text, mode| {
            let needle = format!("sslmode={mode}");
            if text.contains(&needle) {
                verify = true;
                text.replace(&needle, "sslmode=require")
            } else {
                text
            }
        });
    (text, verify)
}

fn to_i64(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn to_seq(value: i64) -> Seq {
    u64::try_from(value).unwrap_or(0)
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

impl Postgres {
    /// Connects, migrates the schema, and starts the writer task.
    pub(super) async fn open(config: &Config, cipher: Cipher) -> Result<Self, Error> {
        let pool = Arc::new(Pool::new(config)?);
        {
            let mut conn = pool.get("connect").await?;
            migrate(&mut conn).await?;
            // Nothing was prepared through the cache yet; should that ever
            // change, no statement prepared before the migration may outlive it.
            conn.forget_statements();
        }
        let (writer, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(Arc::clone(&pool), cipher.clone(), queue));
        let (announced, changes) = watch::channel(super::Changes::default());
        let stop = CancellationToken::new();
        tokio::spawn(listen(Arc::clone(&pool), announced, stop.clone()));
        Ok(Self {
            pool,
            cipher,
            writer,
            changes,
            stop,
            backfill_claims: Semaphore::new(BACKFILL_CLAIMS),
        })
    }

    pub(super) async fn append(&self, records: Vec<Record>, epoch: u64) -> Result<Vec<Seq>, Error> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let epoch = to_i64(epoch);
        let records = records
            .into_iter()
            .map(|record| (self.cipher.tag(&record.lane), record.body, epoch))
            .collect();
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(AppendRequest { records, reply })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    pub(super) async fn claim(
        &self,
        owner: &str,
        max_lanes: usize,
        lease: Duration,
        epoch: u64,
    ) -> Result<Vec<Claimed>, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("claim", &err);
        let mut conn = self.pool.get("claim").await?;
        let share = conn.prepared(CLAIM_LOCK_SHARE).await.map_err(fail)?;
        let pick = conn.prepared(CLAIM_PICK).await.map_err(fail)?;
        let take = conn.prepared(CLAIM_TAKE).await.map_err(fail)?;
        let limit = i64::try_from(max_lanes).unwrap_or(i64::MAX);
        let epoch = to_i64(epoch);
        let share_params: [&(dyn ToSql + Sync); 1] = [&CLAIM_LOCK];
        let pick_params: [&(dyn ToSql + Sync); 2] = [&limit, &epoch];
        let take_params: [&(dyn ToSql + Sync); 3] = [&owner, &lease_ms(lease), &epoch];
        // The whole transaction is sent at once (`biased`: polled, hence
        // sent, in this order), one round trip: no decision is made here
        // between its statements (the lanes pass from the pick to the take
        // in the transaction's setting), and the server runs each after
        // the one before, the take in a snapshot of its own taken once the
        // pick's locks were granted, as if awaited in turn. So no lane's
        // lock is held across a round trip. Once sent, it runs to its end
        // whatever happens here (as an ack does; the claimer awaits it): a
        // failed statement aborts the transaction, its COMMIT then rolls
        // back, and the first error is the one reported.
        let (begun, shared, picked, taken, committed) = tokio::join!(
            biased;
            conn.batch_execute("BEGIN"),
            conn.query_one(&share, &share_params),
            conn.execute(&pick, &pick_params),
            conn.query(&take, &take_params),
            conn.batch_execute("COMMIT"),
        );
        begun.map_err(fail)?;
        shared.map_err(fail)?;
        picked.map_err(fail)?;
        let rows = taken.map_err(fail)?;
        committed.map_err(fail)?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut unreadable = None;
        for row in &rows {
            let seq = to_seq(row.get(0));
            let opened = lane(row.get(1), seq, "journal").and_then(|lane| {
                Ok(Claimed {
                    seq,
                    lane,
                    body: self.open_record(row.get(2), seq, "journal")?,
                    appended_at: from_unix_ms(row.get(3)),
                })
            });
            match opened {
                Ok(record) => claimed.push(record),
                Err(err) => {
                    // Never skipped silently: it stays claimed (so it does
                    // not spin) and comes back when the lease expires.
                    tracing::error!(error = %err, "cannot read a shared journal record; it stays in the journal");
                    unreadable = Some(err);
                }
            }
        }
        // Nothing readable at all (a wrong journal key): the caller must
        // know; otherwise the readable records go ahead.
        if let Some(err) = unreadable
            && claimed.is_empty()
        {
            return Err(err);
        }
        claimed.sort_by_key(|c| c.seq);
        Ok(claimed)
    }

    pub(super) async fn extend(&self, owner: &str, lease: Duration) -> Result<u64, Error> {
        let mut conn = self.pool.get("extend claims").await?;
        conn.execute_cached(
            "UPDATE handover_journal
             SET claimed_until = now() + $2::bigint * interval '1 millisecond'
             WHERE claimed_by = $1",
            &[&owner, &lease_ms(lease)],
        )
        .await
        .map_err(|err| Error::postgres("extend claims", &err))
    }

    pub(super) async fn release(&self, owner: &str) -> Result<u64, Error> {
        let mut conn = self.pool.get("release claims").await?;
        conn.execute_cached(
            "UPDATE handover_journal SET claimed_by = NULL, claimed_until = NULL
             WHERE claimed_by = $1",
            &[&owner],
        )
        .await
        .map_err(|err| Error::postgres("release claims", &err))
    }

    pub(super) async fn ack(&self, seqs: &[Seq]) -> Result<(), Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = seqs.iter().copied().map(to_i64).collect();
        let fail = |err: tokio_postgres::Error| Error::postgres("ack", &err);
        let mut conn = self.pool.get("ack").await?;
        let delete = conn.prepared(ACK_DELETE).await.map_err(fail)?;
        // An ack need not wait for its WAL flush: one lost with a database
        // crash brings its records back, and applying a key again copies
        // the primary's current state once more (delivery is at least
        // once anyway; the records carry their epoch, so none is applied
        // in a direction it was not made for). Appends stay synchronous:
        // they are the promise made to the client.
        //
        // The whole transaction is sent at once (`biased`: in this order),
        // one round trip. Once sent, it runs to its end whatever happens
        // here (the connection goes back to the pool outside any
        // transaction): a failed delete aborts it, and its COMMIT then
        // rolls back.
        let params: [&(dyn ToSql + Sync); 1] = [&seqs];
        let (begun, deleted, committed) = tokio::join!(
            biased;
            conn.batch_execute("BEGIN; SET LOCAL synchronous_commit TO OFF"),
            conn.execute(&delete, &params),
            conn.batch_execute("COMMIT"),
        );
        begun.map_err(fail)?;
        deleted.map_err(fail)?;
        committed.map_err(fail)?;
        Ok(())
    }

    pub(super) async fn depth(&self) -> Result<Depth, Error> {
        let mut conn = self.pool.get("read depth").await?;
        let row = conn
            .query_one_cached(
                "SELECT count(*), min(appended_ms) FROM handover_journal",
                &[],
            )
            .await
            .map_err(|err| Error::postgres("read depth", &err))?;
        Ok(Depth {
            records: to_seq(row.get(0)),
            oldest: row.get::<_, Option<i64>>(1).map(from_unix_ms),
        })
    }

    pub(super) async fn glance(&self) -> Result<super::Glance, Error> {
        let mut conn = self.pool.get("read depth").await?;
        let row = conn
            .query_one_cached(
                "SELECT (SELECT count(*) FROM handover_journal),
                        (SELECT min(appended_ms) FROM handover_journal),
                        (SELECT count(*) FROM handover_dead_letters)",
                &[],
            )
            .await
            .map_err(|err| Error::postgres("read depth", &err))?;
        Ok(super::Glance {
            depth: Depth {
                records: to_seq(row.get(0)),
                oldest: row.get::<_, Option<i64>>(1).map(from_unix_ms),
            },
            dead_letters: to_seq(row.get(2)),
        })
    }

    pub(super) async fn bury(&self, claimed: &Claimed, reason: &str) -> Result<u64, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("bury", &err);
        let mut conn = self.pool.get("bury").await?;
        let statements = InsertDeadLetter::prepare(&mut conn).await.map_err(fail)?;
        let delete = conn
            .prepared("DELETE FROM handover_journal WHERE seq = $1")
            .await
            .map_err(fail)?;
        let tx = conn.transaction().await.map_err(fail)?;
        let id = insert_dead_letter(
            &tx,
            &statements,
            &self.cipher,
            &claimed.lane,
            reason,
            &claimed.body,
        )
        .await?;
        tx.execute(&delete, &[&to_i64(claimed.seq)])
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(id)
    }

    pub(super) async fn dead_letter(
        &self,
        lane: &[u8],
        reason: &str,
        body: &[u8],
    ) -> Result<u64, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("dead letter", &err);
        let mut conn = self.pool.get("dead letter").await?;
        let statements = InsertDeadLetter::prepare(&mut conn).await.map_err(fail)?;
        let tx = conn.transaction().await.map_err(fail)?;
        let id = insert_dead_letter(
            &tx,
            &statements,
            &self.cipher,
            &self.cipher.tag(lane),
            reason,
            body,
        )
        .await?;
        tx.commit().await.map_err(fail)?;
        Ok(id)
    }

    pub(super) async fn lane_pending(&self, lane: &[u8]) -> Result<bool, Error> {
        let tag = self.cipher.tag(lane);
        let mut conn = self.pool.get("read a lane").await?;
        let row = conn
            .query_one_cached(
                "SELECT EXISTS (SELECT 1 FROM handover_journal WHERE lane = $1)",
                &[&tag.as_slice()],
            )
            .await
            .map_err(|err| Error::postgres("read a lane", &err))?;
        Ok(row.get(0))
    }

    pub(super) async fn pending_among(&self, seqs: &[Seq]) -> Result<u64, Error> {
        let seqs: Vec<i64> = seqs.iter().copied().map(to_i64).collect();
        let mut conn = self.pool.get("read pending").await?;
        let row = conn
            .query_one_cached(
                "SELECT count(*) FROM handover_journal WHERE seq = ANY($1)",
                &[&seqs],
            )
            .await
            .map_err(|err| Error::postgres("read pending", &err))?;
        Ok(to_seq(row.get(0)))
    }

    pub(super) async fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        let mut conn = self.pool.get("list dead letters").await?;
        let rows = conn
            .query_cached(
                "SELECT id, reason, record, dead_ms FROM handover_dead_letters ORDER BY id",
                &[],
            )
            .await
            .map_err(|err| Error::postgres("list dead letters", &err))?;
        rows.iter()
            .map(|row| {
                let id = to_seq(row.get(0));
                Ok(DeadLetter {
                    id,
                    reason: row.get(1),
                    body: self.open_record(row.get(2), id, "dead letters")?,
                    dead_at: from_unix_ms(row.get(3)),
                })
            })
            .collect()
    }

    pub(super) async fn retry_dead_letters(&self, through: u64) -> Result<usize, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("retry dead letters", &err);
        let mut conn = self.pool.get("retry dead letters").await?;
        let statements = InsertRecords::prepare(&mut conn).await.map_err(fail)?;
        let tx = conn.transaction().await.map_err(fail)?;
        let rows = tx
            .query(
                "DELETE FROM handover_dead_letters WHERE id <= $1 RETURNING id, lane, record",
                &[&to_i64(through)],
            )
            .await
            .map_err(fail)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut letters = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = to_seq(row.get(0));
            letters.push((
                id,
                lane(row.get(1), id, "dead letters")?,
                self.open_record(row.get(2), id, "dead letters")?,
            ));
        }
        letters.sort_by_key(|(id, _, _)| *id);
        let records: Vec<(LaneTag, Vec<u8>, i64)> = letters
            .into_iter()
            .map(|(_, lane, body)| (lane, body, 0))
            .collect();
        insert_records(&tx, &statements, &self.cipher, &records).await?;
        tx.commit().await.map_err(fail)?;
        Ok(records.len())
    }

    pub(super) async fn control(&self) -> Result<Control, Error> {
        let mut conn = self.pool.get("read control").await?;
        let row = conn
            .query_one_cached(
                "SELECT phase, epoch, flipped_at_ms, version,
                        hold_id, hold_coordinator, hold_until <= now()
                 FROM handover_control WHERE id = 1",
                &[],
            )
            .await
            .map_err(|err| Error::postgres("read control", &err))?;
        let hold = match (
            row.get::<_, Option<i64>>(4),
            row.get::<_, Option<String>>(5),
        ) {
            (Some(id), Some(coordinator)) => Some(super::Hold {
                id: to_seq(id),
                coordinator,
                expired: row.get::<_, Option<bool>>(6).unwrap_or(true),
            }),
            _ => None,
        };
        Ok(Control {
            phase: row.get(0),
            epoch: to_seq(row.get(1)),
            flipped_at_ms: row.get::<_, Option<i64>>(2).map(to_seq),
            version: to_seq(row.get(3)),
            hold,
        })
    }

    pub(super) async fn set_control(
        &self,
        expected: u64,
        next: &super::NextControl,
    ) -> Result<Option<Control>, Error> {
        let mut conn = self.pool.get("write control").await?;
        let (coordinator, lasting) = match &next.hold {
            Some(hold) => (
                Some(hold.coordinator.as_str()),
                Some(lease_ms(hold.lasting)),
            ),
            None => (None, None),
        };
        // The hold's id is the version this write creates; its end is set
        // by the database's clock, like every lease.
        let row = conn
            .query_opt_cached(
                "UPDATE handover_control
                 SET phase = $1, epoch = $2, flipped_at_ms = $3, version = version + 1,
                     hold_id = CASE WHEN $5::text IS NULL THEN NULL ELSE version + 1 END,
                     hold_coordinator = $5::text,
                     hold_until = now() + $6::bigint * interval '1 millisecond'
                 WHERE id = 1 AND version = $4
                 RETURNING version",
                &[
                    &next.phase,
                    &to_i64(next.epoch),
                    &next.flipped_at_ms.map(to_i64),
                    &to_i64(expected),
                    &coordinator,
                    &lasting,
                ],
            )
            .await
            .map_err(|err| Error::postgres("write control", &err))?;
        if row.is_some() {
            announce(&conn).await;
        }
        Ok(row.map(|row| {
            let version = to_seq(row.get(0));
            Control {
                phase: next.phase.clone(),
                epoch: next.epoch,
                flipped_at_ms: next.flipped_at_ms,
                version,
                hold: next.hold.as_ref().map(|hold| super::Hold {
                    id: version,
                    coordinator: hold.coordinator.clone(),
                    expired: false,
                }),
            }
        }))
    }

    pub(super) async fn ack_hold(
        &self,
        instance: &str,
        hold: u64,
        ack: &super::HoldAck,
    ) -> Result<bool, Error> {
        let mut conn = self.pool.get("acknowledge hold").await?;
        let updated = conn
            .execute_cached(
                "UPDATE handover_members SET hold_ack = $2, hold_state = $3 WHERE instance = $1",
                &[&instance, &to_i64(hold), &ack.encode()],
            )
            .await
            .map_err(|err| Error::postgres("acknowledge hold", &err))?;
        if updated == 1 {
            announce(&conn).await;
        }
        Ok(updated == 1)
    }

    pub(super) async fn renew_member(
        &self,
        member: &super::Member,
        lease: Duration,
    ) -> Result<(), Error> {
        let mut conn = self.pool.get("renew lease").await?;
        conn.execute_cached(
            "INSERT INTO handover_members (instance, admin_url, version, phase, renewed_at, lease_until, backfill)
             VALUES ($1, $2, $3, $4, now(), now() + $5::bigint * interval '1 millisecond', $6)
             ON CONFLICT (instance) DO UPDATE SET admin_url = EXCLUDED.admin_url,
                 version = EXCLUDED.version, phase = EXCLUDED.phase,
                 renewed_at = EXCLUDED.renewed_at, lease_until = EXCLUDED.lease_until,
                 backfill = EXCLUDED.backfill",
            &[
                &member.instance,
                &member.admin_url,
                &member.version,
                &member.phase,
                &lease_ms(lease),
                &member.backfill,
            ],
        )
        .await
        .map_err(|err| Error::postgres("renew lease", &err))?;
        Ok(())
    }

    pub(super) async fn leave(&self, instance: &str) -> Result<(), Error> {
        let mut conn = self.pool.get("leave").await?;
        conn.execute_cached(
            "DELETE FROM handover_members WHERE instance = $1",
            &[&instance],
        )
        .await
        .map_err(|err| Error::postgres("leave", &err))?;
        Ok(())
    }

    pub(super) async fn members(&self) -> Result<Vec<super::MemberStatus>, Error> {
        let mut conn = self.pool.get("list members").await?;
        let rows = conn
            .query_cached(
                "SELECT instance, admin_url, version, phase,
                        (extract(epoch FROM now() - renewed_at) * 1000)::bigint,
                        lease_until > now(), hold_ack, hold_state, backfill
                 FROM handover_members ORDER BY instance",
                &[],
            )
            .await
            .map_err(|err| Error::postgres("list members", &err))?;
        Ok(rows
            .iter()
            .map(|row| super::MemberStatus {
                member: super::Member {
                    instance: row.get(0),
                    admin_url: row.get(1),
                    version: row.get(2),
                    phase: row.get(3),
                    backfill: row.get(8),
                },
                lease_age_ms: to_seq(row.get(4)),
                live: row.get(5),
                hold_ack: match (
                    row.get::<_, Option<i64>>(6),
                    row.get::<_, Option<String>>(7),
                ) {
                    (Some(hold), Some(state)) => {
                        Some((to_seq(hold), super::HoldAck::decode(&state)))
                    }
                    _ => None,
                },
            })
            .collect())
    }

    /// A client's entry in the shared credential map.
    pub(super) async fn registration(
        &self,
        client_id: &str,
    ) -> Result<Option<ClientCredentials>, Error> {
        let tag = self.cipher.tag(client_id.as_bytes());
        let mut conn = self.pool.get("read registration").await?;
        let row = conn
            .query_opt_cached(
                "SELECT entry FROM handover_registrations WHERE client = $1",
                &[&tag.as_slice()],
            )
            .await
            .map_err(|err| Error::postgres("read registration", &err))?;
        row.map(|row| self.open_entry(client_id, row.get(0)))
            .transpose()
    }

    /// Changes a client's entry with `change` (starting from an empty one)
    /// under its row lock; returns the entry as written.
    pub(super) async fn update_registration(
        &self,
        client_id: &str,
        change: impl Fn(&mut ClientCredentials),
    ) -> Result<ClientCredentials, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("write registration", &err);
        let tag = self.cipher.tag(client_id.as_bytes());
        let mut conn = self.pool.get("write registration").await?;
        // Most syncs of a client change none of its credentials: one read
        // (no transaction, no lock) tells, and a change that would leave
        // the entry as read is done as of that read.
        if let Some(row) = conn
            .query_opt_cached(
                "SELECT entry FROM handover_registrations WHERE client = $1",
                &[&tag.as_slice()],
            )
            .await
            .map_err(fail)?
        {
            let current = self.open_entry(client_id, row.get(0))?;
            let mut next = current.clone();
            change(&mut next);
            if next == current {
                return Ok(next);
            }
        }
        let empty = self.seal_entry(client_id, &ClientCredentials::default())?;
        let insert = conn
            .prepared(
                "INSERT INTO handover_registrations (client, entry) VALUES ($1, $2)
                 ON CONFLICT (client) DO NOTHING",
            )
            .await
            .map_err(fail)?;
        let lock = conn
            .prepared("SELECT entry FROM handover_registrations WHERE client = $1 FOR UPDATE")
            .await
            .map_err(fail)?;
        let update = conn
            .prepared(
                "UPDATE handover_registrations SET entry = $2, secret_changed_at = $3
                 WHERE client = $1",
            )
            .await
            .map_err(fail)?;
        let tx = conn.transaction().await.map_err(fail)?;
        // A row to lock even for a client's first entry: two instances
        // writing it first at once take turns on the primary key (the
        // second insert waits for the first to commit, then does nothing)
        // instead of one of them failing on it. The insert and the locking
        // read are sent back to back (`biased`: in this order); the server
        // runs the read once the insert is done.
        let client = tag.as_slice();
        let insert_params: [&(dyn ToSql + Sync); 2] = [&client, &empty];
        let lock_params: [&(dyn ToSql + Sync); 1] = [&client];
        let (inserted, locked) = tokio::join!(
            biased;
            tx.execute(&insert, &insert_params),
            tx.query_one(&lock, &lock_params),
        );
        inserted.map_err(fail)?;
        let row = locked.map_err(fail)?;
        let current = self.open_entry(client_id, row.get(0))?;
        let mut next = current.clone();
        change(&mut next);
        if next != current {
            tx.execute(
                &update,
                &[
                    &tag.as_slice(),
                    &self.seal_entry(client_id, &next)?,
                    &next.secret_changed_at.map(to_i64),
                ],
            )
            .await
            .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        Ok(next)
    }

    /// Deletes a client's entry.
    pub(super) async fn forget_registration(&self, client_id: &str) -> Result<(), Error> {
        let tag = self.cipher.tag(client_id.as_bytes());
        let mut conn = self.pool.get("forget registration").await?;
        conn.execute_cached(
            "DELETE FROM handover_registrations WHERE client = $1",
            &[&tag.as_slice()],
        )
        .await
        .map_err(|err| Error::postgres("forget registration", &err))?;
        Ok(())
    }

    /// How many clients' secrets changed at or after `since` (epoch s),
    /// and the latest change, fleet-wide.
    pub(super) async fn secret_changes(&self, since: u64) -> Result<(u64, Option<u64>), Error> {
        let mut conn = self.pool.get("count secret changes").await?;
        let row = conn
            .query_one_cached(
                "SELECT count(*) FILTER (WHERE secret_changed_at >= $1), max(secret_changed_at)
                 FROM handover_registrations",
                &[&to_i64(since)],
            )
            .await
            .map_err(|err| Error::postgres("count secret changes", &err))?;
        Ok((to_seq(row.get(0)), row.get::<_, Option<i64>>(1).map(to_seq)))
    }

    /// Inserts the entries of clients the map does not hold yet (an
    /// instance's own map, taken over); returns how many it inserted.
    pub(super) async fn adopt_registrations(
        &self,
        entries: &[(String, ClientCredentials)],
    ) -> Result<u64, Error> {
        let mut tags = Vec::with_capacity(entries.len());
        let mut sealed = Vec::with_capacity(entries.len());
        let mut changed = Vec::with_capacity(entries.len());
        for (client_id, credentials) in entries {
            tags.push(self.cipher.tag(client_id.as_bytes()).to_vec());
            sealed.push(self.seal_entry(client_id, credentials)?);
            changed.push(credentials.secret_changed_at.map(to_i64));
        }
        let mut conn = self.pool.get("adopt registrations").await?;
        conn.execute_cached(
            "INSERT INTO handover_registrations (client, entry, secret_changed_at)
             SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[])
             ON CONFLICT (client) DO NOTHING",
            &[&tags, &sealed, &changed],
        )
        .await
        .map_err(|err| Error::postgres("adopt registrations", &err))
    }

    fn seal_entry(
        &self,
        client_id: &str,
        credentials: &ClientCredentials,
    ) -> Result<Vec<u8>, Error> {
        let body = serde_json::to_vec(&SealedEntry {
            client_id: Cow::Borrowed(client_id),
            credentials: Cow::Borrowed(credentials),
        })
        .expect("a registration entry serialises");
        record::encode(ENTRY_SEQ, &body, &self.cipher).map_err(|err| {
            Error::UnreadableRegistration {
                reason: format!("cannot seal it: {err}"),
            }
        })
    }

    fn open_entry(&self, client_id: &str, sealed: &[u8]) -> Result<ClientCredentials, Error> {
        let unreadable = |reason: String| Error::UnreadableRegistration { reason };
        let decoded =
            record::decode(sealed, &self.cipher).map_err(|err| unreadable(err.to_string()))?;
        let entry: SealedEntry<'_> = serde_json::from_slice(&decoded.plaintext)
            .map_err(|_| unreadable("not a registration entry".to_owned()))?;
        if decoded.seq != ENTRY_SEQ || entry.client_id != client_id {
            return Err(unreadable(
                "sealed for another client (moved under this one's tag)".to_owned(),
            ));
        }
        Ok(entry.credentials.into_owned())
    }

    pub(super) async fn close(&self) {
        self.stop.cancel();
        self.pool.close();
    }

    pub(super) fn changes(&self) -> watch::Receiver<super::Changes> {
        self.changes.clone()
    }

    pub(super) fn tag(&self, data: &[u8]) -> LaneTag {
        self.cipher.tag(data)
    }

    fn open_record(&self, sealed: &[u8], seq: Seq, place: &'static str) -> Result<Vec<u8>, Error> {
        let decoded = record::decode(sealed, &self.cipher).map_err(|err| Error::Corrupt {
            place,
            seq,
            reason: err.to_string(),
        })?;
        if decoded.seq != seq {
            return Err(Error::Corrupt {
                place,
                seq,
                reason: format!("sealed as seq {}", decoded.seq),
            });
        }
        Ok(decoded.plaintext)
    }
}

/// The seq every sealed registration entry carries (the frame wants one;
/// the entry is bound to its client by the client_id inside).
const ENTRY_SEQ: Seq = 0;

/// A client's credentials as sealed in `handover_registrations`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedEntry<'a> {
    client_id: Cow<'a, str>,
    #[serde(flatten)]
    credentials: Cow<'a, ClientCredentials>,
}

/// The fleet's backfill (schema version 5; see [`super::BackfillStore`]).
impl Postgres {
    pub(super) async fn take_runner(
        &self,
        instance: &str,
        lease: Duration,
    ) -> Result<Option<super::BackfillRunner>, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("take the backfill", &err);
        let mut conn = self.pool.get("take the backfill").await?;
        // The row lock serializes two instances taking it at once: the
        // second re-reads the row the first wrote and finds it held.
        let taken = conn
            .execute_cached(
                "UPDATE handover_backfill
                 SET runner = $1, runner_until = now() + $2::bigint * interval '1 millisecond'
                 WHERE id = 1 AND (runner IS NULL OR runner = $1 OR runner_until <= now())",
                &[&instance, &lease_ms(lease)],
            )
            .await
            .map_err(fail)?;
        if taken == 1 {
            return Ok(None);
        }
        let row = conn
            .query_one_cached(
                "SELECT b.runner, m.admin_url, b.runner_until > now()
                 FROM handover_backfill b LEFT JOIN handover_members m ON m.instance = b.runner
                 WHERE b.id = 1",
                &[],
            )
            .await
            .map_err(fail)?;
        Ok(Some(super::BackfillRunner {
            instance: row.get::<_, Option<String>>(0).unwrap_or_default(),
            admin_url: row.get(1),
            live: row.get::<_, Option<bool>>(2).unwrap_or(false),
        }))
    }

    pub(super) async fn renew_runner(
        &self,
        instance: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        let mut conn = self.pool.get("renew the backfill").await?;
        let renewed = conn
            .execute_cached(
                "UPDATE handover_backfill
                 SET runner_until = now() + $2::bigint * interval '1 millisecond'
                 WHERE id = 1 AND runner = $1",
                &[&instance, &lease_ms(lease)],
            )
            .await
            .map_err(|err| Error::postgres("renew the backfill", &err))?;
        Ok(renewed == 1)
    }

    pub(super) async fn begin_pass(
        &self,
        instance: &str,
        rate_limit: u64,
        concurrency: u64,
    ) -> Result<Option<bool>, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("begin the backfill", &err);
        let mut conn = self.pool.get("begin the backfill").await?;
        let tx = conn.transaction().await.map_err(fail)?;
        let Some(row) = tx
            .query_opt(
                "SELECT state FROM handover_backfill WHERE id = 1 AND runner = $1 FOR UPDATE",
                &[&instance],
            )
            .await
            .map_err(fail)?
        else {
            return Ok(None);
        };
        let new_pass = row.get::<_, String>(0) == "done";
        if new_pass {
            tx.batch_execute(
                "DELETE FROM handover_backfill_checkpoints; DELETE FROM handover_backfill_touched;",
            )
            .await
            .map_err(fail)?;
        }
        // Watching starts before the runner opens any export (it commits
        // here first), and stays on until the pass is done.
        tx.execute(
            "UPDATE handover_backfill
             SET state = 'running', watching = true, started_at = now(), elapsed_ms = NULL,
                 rate_limit = $1, concurrency = $2
             WHERE id = 1",
            &[&to_i64(rate_limit), &to_i64(concurrency)],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(Some(new_pass))
    }

    pub(super) async fn publish_backfill(
        &self,
        instance: &str,
        update: &super::BackfillUpdate,
    ) -> Result<bool, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("publish the backfill", &err);
        let mut conn = self.pool.get("publish the backfill").await?;
        let tx = conn.transaction().await.map_err(fail)?;
        let done = update.state == "done";
        let finished = done || update.state == "failed";
        let updated = tx
            .execute(
                "UPDATE handover_backfill
                 SET state = $2, rate_limit = $3, concurrency = $4,
                     watching = watching AND NOT $5,
                     elapsed_ms = CASE WHEN $6
                         THEN (extract(epoch FROM now() - started_at) * 1000)::bigint
                         ELSE elapsed_ms END,
                     runner = CASE WHEN $7 THEN NULL ELSE runner END,
                     runner_until = CASE WHEN $7 THEN NULL ELSE runner_until END
                 WHERE id = 1 AND runner = $1",
                &[
                    &instance,
                    &update.state,
                    &to_i64(update.rate_limit),
                    &to_i64(update.concurrency),
                    &done,
                    &finished,
                    &update.release,
                ],
            )
            .await
            .map_err(fail)?;
        if updated == 1 && done {
            tx.execute("DELETE FROM handover_backfill_touched", &[])
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        Ok(updated == 1)
    }

    pub(super) async fn save_checkpoint(
        &self,
        instance: &str,
        checkpoint: &super::StoredCheckpoint,
    ) -> Result<bool, Error> {
        let mut conn = self.pool.get("save a backfill checkpoint").await?;
        // Only the runner writes: one that lost its lease must not put an
        // older checkpoint over its successor's.
        let saved = conn
            .execute_cached(
                "INSERT INTO handover_backfill_checkpoints (dataset, checkpoint, rate, error, saved_at)
                 SELECT $2, $3, $4, $5, now()
                 WHERE EXISTS (SELECT 1 FROM handover_backfill WHERE id = 1 AND runner = $1)
                 ON CONFLICT (dataset) DO UPDATE SET checkpoint = EXCLUDED.checkpoint,
                     rate = EXCLUDED.rate, error = EXCLUDED.error, saved_at = EXCLUDED.saved_at",
                &[
                    &instance,
                    &checkpoint.dataset,
                    &checkpoint.checkpoint,
                    &checkpoint.rate,
                    &checkpoint.error,
                ],
            )
            .await
            .map_err(|err| Error::postgres("save a backfill checkpoint", &err))?;
        Ok(saved == 1)
    }

    pub(super) async fn forget_checkpoint(
        &self,
        instance: &str,
        dataset: &str,
    ) -> Result<(), Error> {
        let mut conn = self.pool.get("forget a backfill checkpoint").await?;
        conn.execute_cached(
            "DELETE FROM handover_backfill_checkpoints
             WHERE dataset = $2
               AND EXISTS (SELECT 1 FROM handover_backfill WHERE id = 1 AND runner = $1)",
            &[&instance, &dataset],
        )
        .await
        .map_err(|err| Error::postgres("forget a backfill checkpoint", &err))?;
        Ok(())
    }

    pub(super) async fn mark_touched(&self, lanes: &[&[u8]]) -> Result<(), Error> {
        let tags: Vec<Vec<u8>> = lanes
            .iter()
            .map(|lane| self.cipher.tag(lane).to_vec())
            .collect();
        let mut conn = self.pool.get("mark touched keys").await?;
        conn.execute_cached(
            "INSERT INTO handover_backfill_touched (lane)
             SELECT DISTINCT lane FROM unnest($1::bytea[]) AS lane
             WHERE EXISTS (SELECT 1 FROM handover_backfill WHERE id = 1 AND watching)
             ON CONFLICT DO NOTHING",
            &[&tags],
        )
        .await
        .map_err(|err| Error::postgres("mark touched keys", &err))?;
        Ok(())
    }

    pub(super) async fn finish_backfill_write(&self, seq: Seq, lane: &[u8]) -> Result<bool, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("finish a backfill write", &err);
        let tag = self.cipher.tag(lane);
        let mut conn = self.pool.get("finish a backfill write").await?;
        let read = conn
            .prepared("SELECT EXISTS (SELECT 1 FROM handover_backfill_touched WHERE lane = $1)")
            .await
            .map_err(fail)?;
        let release = conn
            .prepared(
                "UPDATE handover_journal SET claimed_by = NULL, claimed_until = NULL WHERE seq = $1",
            )
            .await
            .map_err(fail)?;
        let delete = conn
            .prepared("DELETE FROM handover_journal WHERE seq = $1")
            .await
            .map_err(fail)?;
        let tx = conn.transaction().await.map_err(fail)?;
        let touched: bool = tx
            .query_one(&read, &[&tag.as_slice()])
            .await
            .map_err(fail)?
            .get(0);
        let statement = if touched { &release } else { &delete };
        tx.execute(statement, &[&to_i64(seq)]).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(touched)
    }

    pub(super) async fn read_backfill(&self) -> Result<super::SharedBackfill, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("read the backfill", &err);
        let mut conn = self.pool.get("read the backfill").await?;
        let row = conn
            .query_one_cached(
                "SELECT b.state, b.runner, m.admin_url, b.runner_until > now(), b.watching,
                        coalesce(b.elapsed_ms,
                                 (extract(epoch FROM now() - b.started_at) * 1000)::bigint),
                        b.rate_limit, b.concurrency
                 FROM handover_backfill b LEFT JOIN handover_members m ON m.instance = b.runner
                 WHERE b.id = 1",
                &[],
            )
            .await
            .map_err(fail)?;
        let checkpoints = conn
            .query_cached(
                "SELECT dataset, checkpoint, rate, error FROM handover_backfill_checkpoints
                 ORDER BY dataset",
                &[],
            )
            .await
            .map_err(fail)?
            .iter()
            .map(|row| super::StoredCheckpoint {
                dataset: row.get(0),
                checkpoint: row.get(1),
                rate: row.get(2),
                error: row.get(3),
            })
            .collect();
        Ok(super::SharedBackfill {
            state: row.get(0),
            runner: row
                .get::<_, Option<String>>(1)
                .map(|instance| super::BackfillRunner {
                    instance,
                    admin_url: row.get(2),
                    live: row.get::<_, Option<bool>>(3).unwrap_or(false),
                }),
            watching: row.get(4),
            elapsed_ms: row.get::<_, Option<i64>>(5).map(to_seq),
            rate_limit: to_seq(row.get(6)),
            concurrency: to_seq(row.get(7)),
            checkpoints,
        })
    }

    pub(super) async fn claim_for_backfill(
        &self,
        owner: &str,
        lane: &[u8],
        body: &[u8],
        lease: Duration,
    ) -> Result<Option<Seq>, Error> {
        let fail = |err: tokio_postgres::Error| Error::postgres("claim for the backfill", &err);
        let tag = self.cipher.tag(lane);
        let _turn = self
            .backfill_claims
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        let mut conn = self.pool.get("claim for the backfill").await?;
        // The seq is drawn first: the record is sealed under it. One drawn
        // for a record that is then not written is a gap, as after any
        // rolled-back append.
        let seq: i64 = conn
            .query_one_cached("SELECT nextval('handover_journal_seq')", &[])
            .await
            .map_err(fail)?
            .get(0);
        let sealed =
            record::encode(to_seq(seq), body, &self.cipher).map_err(|err| Error::Corrupt {
                place: "journal",
                seq: to_seq(seq),
                reason: err.to_string(),
            })?;
        let share = conn.prepared(CLAIM_LOCK_SHARE).await.map_err(fail)?;
        let lock = conn.prepared(LANE_LOCK_TAKE).await.map_err(fail)?;
        let insert = conn.prepared(BACKFILL_INSERT).await.map_err(fail)?;
        // The lane's lock (waiting for a claim deciding on it: one short
        // transaction), then the check and insert in a snapshot taken
        // after it: between them, no claim takes the lane (module doc,
        // "Claims"). Sent at once as in [`Self::claim`], one round trip.
        let lane = tag.as_slice();
        let appended_ms = unix_ms(SystemTime::now());
        let lease_ms = lease_ms(lease);
        let share_params: [&(dyn ToSql + Sync); 1] = [&CLAIM_LOCK];
        let lock_params: [&(dyn ToSql + Sync); 1] = [&lane];
        let insert_params: [&(dyn ToSql + Sync); 6] =
            [&seq, &lane, &sealed, &appended_ms, &owner, &lease_ms];
        let (begun, shared, locked, inserted, committed) = tokio::join!(
            biased;
            conn.batch_execute("BEGIN"),
            conn.query_one(&share, &share_params),
            conn.query_one(&lock, &lock_params),
            conn.query_opt(&insert, &insert_params),
            conn.batch_execute("COMMIT"),
        );
        begun.map_err(fail)?;
        shared.map_err(fail)?;
        locked.map_err(fail)?;
        let inserted = inserted.map_err(fail)?;
        committed.map_err(fail)?;
        Ok(inserted.map(|row| to_seq(row.get(0))))
    }
}

fn lane(bytes: &[u8], seq: Seq, place: &'static str) -> Result<LaneTag, Error> {
    LaneTag::try_from(bytes).map_err(|_| Error::Corrupt {
        place,
        seq,
        reason: format!("lane tag of {} bytes", bytes.len()),
    })
}

/// The statements of [`insert_dead_letter`], prepared on the connection
/// it runs on.
struct InsertDeadLetter {
    next_id: Statement,
    insert: Statement,
}

impl InsertDeadLetter {
    async fn prepare(conn: &mut Conn<'_>) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            next_id: conn
                .prepared("SELECT nextval('handover_dead_letter_seq')")
                .await?,
            insert: conn
                .prepared(
                    "INSERT INTO handover_dead_letters (id, lane, reason, record, dead_ms)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .await?,
        })
    }
}

/// Allocates an id, seals and inserts one dead letter within `tx` (of
/// the connection `statements` were prepared on).
async fn insert_dead_letter(
    tx: &tokio_postgres::Transaction<'_>,
    statements: &InsertDeadLetter,
    cipher: &Cipher,
    lane: &LaneTag,
    reason: &str,
    body: &[u8],
) -> Result<u64, Error> {
    let fail = |err: tokio_postgres::Error| Error::postgres("dead letter", &err);
    let id: i64 = tx
        .query_one(&statements.next_id, &[])
        .await
        .map_err(fail)?
        .get(0);
    let sealed = record::encode(to_seq(id), body, cipher).map_err(|err| Error::Corrupt {
        place: "dead letters",
        seq: to_seq(id),
        reason: err.to_string(),
    })?;
    tx.execute(
        &statements.insert,
        &[
            &id,
            &lane.as_slice(),
            &reason,
            &sealed,
            &unix_ms(SystemTime::now()),
        ],
    )
    .await
    .map_err(fail)?;
    Ok(to_seq(id))
}

/// The statements of [`insert_records`], prepared on the connection it
/// runs on.
struct InsertRecords {
    /// [`NEXT_SEQS`].
    next_seqs: Statement,
    /// [`INSERT_RECORDS`].
    insert: Statement,
}

impl InsertRecords {
    async fn prepare(conn: &mut Conn<'_>) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            next_seqs: conn.prepared(NEXT_SEQS).await?,
            insert: conn.prepared(INSERT_RECORDS).await?,
        })
    }
}

/// Draws $1 journal seqs.
const NEXT_SEQS: &str = "SELECT nextval('handover_journal_seq') FROM generate_series(1, $1)";

/// Inserts journal records (parameters: seqs, lanes, sealed records,
/// append times, epochs) and, while a backfill pass is unfinished, their
/// lanes as touched by live traffic (see [`insert_records`]).
const INSERT_RECORDS: &str = "
    WITH appended AS (
        INSERT INTO handover_journal (seq, lane, record, appended_ms, epoch)
        SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bigint[], $5::bigint[])
        RETURNING lane
    )
    INSERT INTO handover_backfill_touched (lane)
    SELECT DISTINCT lane FROM appended
    WHERE EXISTS (SELECT 1 FROM handover_backfill WHERE id = 1 AND watching)
    ON CONFLICT DO NOTHING";

/// Allocates seqs, seals and inserts `records` through `client` (a
/// connection, or a transaction of the connection `statements` were
/// prepared on).
async fn insert_records(
    client: &impl GenericClient,
    statements: &InsertRecords,
    cipher: &Cipher,
    records: &[(LaneTag, Vec<u8>, i64)],
) -> Result<Vec<Seq>, Error> {
    let fail = |err: tokio_postgres::Error| Error::postgres("append", &err);
    let count = i32::try_from(records.len()).unwrap_or(i32::MAX);
    let mut seqs: Vec<i64> = client
        .query(&statements.next_seqs, &[&count])
        .await
        .map_err(fail)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    seqs.sort_unstable();
    let now = unix_ms(SystemTime::now());
    let mut lanes = Vec::with_capacity(records.len());
    let mut sealed = Vec::with_capacity(records.len());
    let mut epochs = Vec::with_capacity(records.len());
    for (seq, (lane, body, epoch)) in seqs.iter().zip(records) {
        lanes.push(lane.to_vec());
        epochs.push(*epoch);
        sealed.push(
            record::encode(to_seq(*seq), body, cipher).map_err(|err| Error::Corrupt {
                place: "journal",
                seq: to_seq(*seq),
                reason: err.to_string(),
            })?,
        );
    }
    let times = vec![now; records.len()];
    // One statement: the records, and (while a backfill pass is
    // unfinished) their lanes as touched by live traffic. The flag is read
    // in this statement's snapshot: an append that misses a flag set
    // concurrently began before it was set, so the change it journals was
    // made at the primary before any export of that pass opened, and every
    // exported copy is at least as new. Being one statement, it is atomic
    // on its own: it needs no transaction around it.
    client
        .execute(
            &statements.insert,
            &[&seqs, &lanes, &sealed, &times, &epochs],
        )
        .await
        .map_err(fail)?;
    Ok(seqs.into_iter().map(to_seq).collect())
}

/// The writer task: one commit per group of queued appends.
async fn write_groups(
    pool: Arc<Pool>,
    cipher: Cipher,
    mut queue: mpsc::UnboundedReceiver<AppendRequest>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        let mut records = group[0].records.len();
        while records < super::MAX_GROUP_RECORDS {
            match queue.try_recv() {
                Ok(next) => {
                    records += next.records.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let all: Vec<(LaneTag, Vec<u8>, i64)> = group
            .iter()
            .flat_map(|request| request.records.iter().cloned())
            .collect();
        match commit_group(&pool, &cipher, &all).await {
            Ok(seqs) => {
                let mut rest = seqs.as_slice();
                for request in group {
                    let (mine, others) = rest.split_at(request.records.len());
                    rest = others;
                    let _ = request.reply.send(Ok(mine.to_vec()));
                }
            }
            Err(err) => {
                for request in group {
                    let _ = request.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

async fn commit_group(
    pool: &Pool,
    cipher: &Cipher,
    records: &[(LaneTag, Vec<u8>, i64)],
) -> Result<Vec<Seq>, Error> {
    let fail = |err: tokio_postgres::Error| Error::postgres("append", &err);
    let mut conn = pool.get("append").await?;
    let statements = InsertRecords::prepare(&mut conn).await.map_err(fail)?;
    // No transaction: the seqs are drawn outside any (a sequence ignores
    // rollbacks; a failed insert leaves a gap either way), and the insert
    // is one statement, committed on its own. Two round trips.
    insert_records(&*conn, &statements, cipher, records).await
}

/// A database of the tests' own (tests/support/pg.rs).
#[cfg(test)]
#[path = "../../tests/support/pg.rs"]
mod test_db;

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with a pool of one connection, on a fresh database.
    async fn one_connection_store(db: &test_db::TestDb) -> Postgres {
        let config = Config {
            pool_size: 1,
            ..Config::postgres(db.url.clone())
        };
        Postgres::open(&config, Cipher::new([7; 32])).await.unwrap()
    }

    /// An append, a claim of it, its ack and a read of the depth.
    async fn write_claim_ack(store: &Postgres) {
        let record = Record {
            lane: b"lane".to_vec(),
            body: b"body".to_vec(),
        };
        let seqs = store.append(vec![record], 0).await.unwrap();
        let claimed = store
            .claim("tester", 10, Duration::from_secs(60), u64::MAX)
            .await
            .unwrap();
        assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), seqs);
        store.ack(&seqs).await.unwrap();
        assert_eq!(store.depth().await.unwrap().records, 0);
    }

    const DEPTH: &str = "SELECT count(*), min(appended_ms) FROM handover_journal";

    /// How often each of `statements` is prepared on `conn`'s session.
    async fn prepared_on(conn: &Conn<'_>, statements: &[&str]) -> Vec<i64> {
        let mut counts = Vec::new();
        for statement in statements {
            let row = conn
                .query_one(
                    "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
                    &[statement],
                )
                .await
                .unwrap();
            counts.push(row.get(0));
        }
        counts
    }

    #[tokio::test]
    async fn a_connection_prepares_each_statement_once() {
        let db = test_db::TestDb::create().await;
        let store = one_connection_store(&db).await;
        let hot = [
            NEXT_SEQS,
            INSERT_RECORDS,
            CLAIM_LOCK_SHARE,
            CLAIM_PICK,
            CLAIM_TAKE,
            ACK_DELETE,
            DEPTH,
        ];
        write_claim_ack(&store).await;
        write_claim_ack(&store).await;
        let conn = store.pool.get("test").await.unwrap();
        assert_eq!(prepared_on(&conn, &hot).await, vec![1; hot.len()]);
        let cached = conn.session.as_ref().unwrap().statements.len();
        drop(conn);
        // Used again, nothing more is prepared.
        write_claim_ack(&store).await;
        let conn = store.pool.get("test").await.unwrap();
        assert_eq!(conn.session.as_ref().unwrap().statements.len(), cached);
        assert_eq!(prepared_on(&conn, &hot).await, vec![1; hot.len()]);
    }

    #[tokio::test]
    async fn a_broken_connection_goes_with_its_statements() {
        let db = test_db::TestDb::create().await;
        let store = one_connection_store(&db).await;
        write_claim_ack(&store).await;
        let pid: i32 = {
            let conn = store.pool.get("test").await.unwrap();
            conn.query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0)
        };
        let admin = db.client().await;
        let terminated: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(terminated);
        // Wait for the client to see its connection end, so that the next
        // operation finds it broken rather than failing on it.
        let waited = std::time::Instant::now();
        while !store.pool.idle.lock().unwrap()[0].client.is_closed() {
            assert!(waited.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Statements of the old connection reused on a new one would not
        // exist there ("prepared statement ... does not exist").
        write_claim_ack(&store).await;
        let conn = store.pool.get("test").await.unwrap();
        let now: i32 = conn
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(now, pid);
        assert_eq!(
            prepared_on(&conn, &[INSERT_RECORDS, CLAIM_PICK, CLAIM_TAKE, ACK_DELETE]).await,
            vec![1, 1, 1, 1]
        );
    }

    fn lane_record(lane: &str) -> Record {
        Record {
            lane: lane.as_bytes().to_vec(),
            body: b"body".to_vec(),
        }
    }

    /// The lanes a pick left for the take in the transaction of `client`.
    async fn picked(client: &impl GenericClient) -> Vec<Vec<u8>> {
        client
            .query_one(
                "SELECT current_setting('handover.claim_lanes')::bytea[]",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// How many lanes' advisory locks (the two-key form) `client`'s
    /// session holds.
    async fn lane_locks_held(client: &impl GenericClient) -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND objsubid = 2 AND pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until a session of `db` waits for an advisory lock; fails
    /// the test after 10 s.
    async fn an_advisory_lock_is_waited_for(db: &test_db::TestDb) {
        let admin = db.client().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database()
                       AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nobody waited for an advisory lock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The pick's lock is evaluated for the lanes it returns only, on the
    /// oldest rows' path and on the whole table's.
    #[tokio::test]
    async fn a_pick_locks_only_the_lanes_it_returns() {
        let db = test_db::TestDb::create().await;
        let store = one_connection_store(&db).await;
        let tag = |lane: &str| store.cipher.tag(lane.as_bytes()).to_vec();
        let lanes: Vec<String> = (0..10).map(|n| format!("lane-{n}")).collect();
        store
            .append(lanes.iter().map(|lane| lane_record(lane)).collect(), 0)
            .await
            .unwrap();
        let mut client = db.client().await;
        let tx = client.transaction().await.unwrap();
        tx.execute(CLAIM_PICK, &[&3_i64, &i64::MAX]).await.unwrap();
        let mut got = picked(&tx).await;
        got.sort();
        let mut oldest: Vec<_> = lanes[..3].iter().map(|lane| tag(lane)).collect();
        oldest.sort();
        assert_eq!(got, oldest);
        assert_eq!(lane_locks_held(&tx).await, 3);
        tx.rollback().await.unwrap();

        // The oldest unclaimed rows (four per lane wanted) all belong to
        // a lane held: the whole table is looked at.
        let db = test_db::TestDb::create().await;
        let store = one_connection_store(&db).await;
        store.append(vec![lane_record("held")], 0).await.unwrap();
        let held = store
            .claim("holder", 1, Duration::from_secs(3600), u64::MAX)
            .await
            .unwrap();
        assert_eq!(held.len(), 1);
        let mut records: Vec<_> = (0..4).map(|_| lane_record("held")).collect();
        records.extend(["x", "y", "z"].map(lane_record));
        store.append(records, 0).await.unwrap();
        let mut client = db.client().await;
        let tx = client.transaction().await.unwrap();
        tx.execute(CLAIM_PICK, &[&1_i64, &i64::MAX]).await.unwrap();
        assert_eq!(picked(&tx).await, [store.cipher.tag(b"x").to_vec()]);
        assert_eq!(lane_locks_held(&tx).await, 1);
        tx.rollback().await.unwrap();
    }

    /// Another claim deciding on lane a (its pick done, not committed)
    /// neither holds up a claim nor shares lane a with it.
    #[tokio::test]
    async fn a_claim_skips_a_lane_another_claim_is_deciding_on_without_waiting() {
        let db = test_db::TestDb::create().await;
        let store = one_connection_store(&db).await;
        store.append(vec![lane_record("a")], 0).await.unwrap();
        let mut other = db.client().await;
        let tx = other.transaction().await.unwrap();
        tx.query_one(CLAIM_LOCK_SHARE, &[&CLAIM_LOCK])
            .await
            .unwrap();
        tx.execute(CLAIM_PICK, &[&10_i64, &i64::MAX]).await.unwrap();
        assert_eq!(picked(&tx).await, [store.cipher.tag(b"a").to_vec()]);
        store.append(vec![lane_record("b")], 0).await.unwrap();
        let claimed = tokio::time::timeout(
            Duration::from_secs(10),
            store.claim("me", 10, Duration::from_secs(3600), u64::MAX),
        )
        .await
        .expect("a claim of lane b waited for a claim of lane a")
        .unwrap();
        let lanes: Vec<_> = claimed.iter().map(|c| c.lane).collect();
        assert_eq!(lanes, [store.cipher.tag(b"b")]);
        // The other claim ends without taking lane a: it is free again.
        tx.rollback().await.unwrap();
        let claimed = store
            .claim("me", 10, Duration::from_secs(3600), u64::MAX)
            .await
            .unwrap();
        let lanes: Vec<_> = claimed.iter().map(|c| c.lane).collect();
        assert_eq!(lanes, [store.cipher.tag(b"a")]);
    }

    /// A build before per-lane locks claims under [`CLAIM_LOCK`] alone,
    /// exclusively: in a fleet running both builds, a claim here waits
    /// until that claim committed.
    #[tokio::test]
    async fn a_claim_waits_for_an_older_builds_claim() {
        let db = test_db::TestDb::create().await;
        let store = Arc::new(one_connection_store(&db).await);
        store.append(vec![lane_record("a")], 0).await.unwrap();
        let mut old = db.client().await;
        let tx = old.transaction().await.unwrap();
        tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK])
            .await
            .unwrap();
        let claim = tokio::spawn({
            let store = Arc::clone(&store);
            async move {
                store
                    .claim("new", 10, Duration::from_secs(3600), u64::MAX)
                    .await
            }
        });
        an_advisory_lock_is_waited_for(&db).await;
        assert!(!claim.is_finished());
        tx.commit().await.unwrap();
        let claimed = claim.await.unwrap().unwrap();
        assert_eq!(claimed.len(), 1);
    }

    /// The backfill's claim of a lane waits for a claim deciding on that
    /// lane, then sees it (the lane is not empty: no copy), and does not
    /// wait for a claim of another lane.
    #[tokio::test]
    async fn a_backfill_claim_waits_for_a_claim_of_its_lane_only() {
        let db = test_db::TestDb::create().await;
        let store = Arc::new(one_connection_store(&db).await);
        store.append(vec![lane_record("a")], 0).await.unwrap();
        let mut other = db.client().await;
        let tx = other.transaction().await.unwrap();
        tx.query_one(CLAIM_LOCK_SHARE, &[&CLAIM_LOCK])
            .await
            .unwrap();
        tx.execute(CLAIM_PICK, &[&10_i64, &i64::MAX]).await.unwrap();
        let lease = Duration::from_secs(3600);
        let elsewhere = tokio::time::timeout(
            Duration::from_secs(10),
            store.claim_for_backfill("runner", b"b", b"copy", lease),
        )
        .await
        .expect("a backfill claim of lane b waited for a claim of lane a")
        .unwrap();
        assert!(elsewhere.is_some());
        let copy = tokio::spawn({
            let store = Arc::clone(&store);
            async move {
                store
                    .claim_for_backfill("runner", b"a", b"copy", lease)
                    .await
            }
        });
        an_advisory_lock_is_waited_for(&db).await;
        assert!(!copy.is_finished());
        tx.rollback().await.unwrap();
        assert_eq!(copy.await.unwrap().unwrap(), None);
    }

    #[test]
    fn verify_modes_become_require_with_a_certificate_check() {
        assert_eq!(
            ssl_verification("postgres://h/db?sslmode=verify-full"),
            ("postgres://h/db?sslmode=require".to_owned(), true)
        );
        assert_eq!(
            ssl_verification("host=h sslmode=verify-ca dbname=x"),
            ("host=h sslmode=require dbname=x".to_owned(), true)
        );
        for plain in [
            "postgres://h/db",
            "host=h sslmode=require",
            "host=h sslmode=prefer",
        ] {
            assert_eq!(ssl_verification(plain), (plain.to_owned(), false));
        }
    }

    #[test]
    fn every_sslmode_but_disable_gets_a_tls_client_and_a_bad_url_names_no_secret() {
        for url in [
            "host=127.0.0.1 user=u password=hunter2 sslmode=prefer",
            "host=127.0.0.1 sslmode=require",
            "postgres://u:hunter2@127.0.0.1/db?sslmode=verify-full",
        ] {
            let pool = Pool::new(&Config::postgres(url)).unwrap();
            assert!(matches!(pool.tls, Tls::Rustls(_)), "{url}");
        }
        let pool = Pool::new(&Config::postgres("host=127.0.0.1 sslmode=disable")).unwrap();
        assert!(matches!(pool.tls, Tls::None));
        let err = Pool::new(&Config::postgres("postgres://u:hunter2@[::bad")).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
