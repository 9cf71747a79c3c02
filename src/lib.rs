//! handover: a live dual-write synchronizing reverse proxy for migrating an
//! OpenID Connect / OAuth 2.0 server (a Connect2id server) to a new one
//! (another Connect2id, or Authlete) without logging anybody out.
//!
//! # The layer map
//!
//! A module imports only from its own layer or the layers below it; only
//! the composition layer (and the demo) may import anything.
//! `tests/layering.rs` reads the `use crate::` paths and fails on an upward
//! import or an import cycle. Modules are declared below in this order.
//!
//! | layer | modules | who owns what |
//! |---|---|---|
//! | L8 composition | `main.rs`, [`app`], [`config`] | the CLI and exit codes; wiring, the root cancel token, ordered shutdown; the file → each subsystem's own `Config` |
//! | L7 surfaces | [`admin`], [`cli`], [`demo`] | the admin API server; the operator commands and renderers; `handover demo` |
//! | L6 control and jobs | [`trigger_hook`], [`cutover`], [`backfill`], [`verify`] | the proxy's hook (gate, resolve, record); phases, the write gate, credentials, the fenced flip; export → secondary with checkpoints; drift reports |
//! | L5 sync engine | [`sync`] | lanes, retries, the breaker; the `Recorder` (the one way into the journal); one `Apply` per target kind |
//! | L4 catalogue | [`triggers`] | pure: an exchange → the keys it changed |
//! | L3 request path | [`proxy`], [`health`], [`error`] | accept, TLS, forwarding, header hygiene, framing; `proxy::hook` is every seam trait; readiness; whose fault an error is |
//! | L2 adapters | [`journal`], [`store`], [`upstream`], [`servers`] | the durable log (imports nothing from the crate); the store interface over it or a shared PostgreSQL database; a pooled client to one server; both servers, their management-API clients, exports |
//! | L1 vocabulary | [`model`], [`api`], [`metrics`] | DESIGN §1 as types, no I/O; the admin JSON contract and its client; metric names and recorders |
//! | L0 foundations | [`http`], [`json_stream`], [`tls`], [`telemetry`] | bodies, forms, a small server; the incremental JSON splitter; rustls set-up; logging and error chains |
//! | side tree | [`emulator`] | in-repo Connect2id and Authlete servers for tests, the demo and rehearsals; imports only L0 |
//!
//! # The two paths
//!
//! **Request path.** [`proxy`] accepts downstream connections (HTTP/1.1 and
//! HTTP/2, TLS by rustls) and forwards every request to the *primary* with
//! its path unchanged, streaming bodies both ways. The [`proxy::Hook`]
//! ([`trigger_hook`]) sees the exchanges the sync needs (*triggers*, from
//! the [`triggers`] catalogue): only those are buffered, and their response
//! is released only after the changed keys are durable in the journal.
//!
//! **Sync path.** The [`sync::Recorder`] journals each change; sync workers
//! read the current state of each key from the primary and write it to the
//! secondary through the target kind's [`sync::Apply`] (DESIGN.md §2: sync
//! state by key, never replay minting requests). The [`backfill`] feeds
//! exported records through the same lanes.
//!
//! **Phases.** `mirroring` → `cutting-over` → `cut-over` → `completed`, with
//! rollback from `cut-over` ([`model::phase`], DESIGN.md §6).

// L8 composition
pub mod app;
pub mod config;
// L7 surfaces
pub mod admin;
pub mod cli;
pub mod demo;
// L6 control and jobs
pub mod backfill;
pub mod cutover;
pub mod trigger_hook;
pub mod verify;
// L5 sync engine
pub mod sync;
// L4 catalogue
pub mod triggers;
// L3 request path
pub mod error;
pub mod health;
pub mod proxy;
// L2 adapters
pub mod journal;
pub mod servers;
pub mod store;
pub mod upstream;
// L1 vocabulary and contracts
pub mod api;
pub mod metrics;
pub mod model;
// L0 foundations
pub mod http;
pub mod json_stream;
pub mod telemetry;
pub mod tls;
// Side tree
pub mod emulator;
