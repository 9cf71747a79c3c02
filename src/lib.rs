//! handover: a live dual-write synchronizing reverse proxy for migrating an
//! OpenID Connect / OAuth 2.0 server (a Connect2id server) to a new one
//! without logging anybody out.
//!
//! # Architecture
//!
//! **Request path.** [`proxy`] accepts downstream connections (HTTP/1.1 and
//! HTTP/2, TLS by rustls), and [`proxy::forward`] forwards every request to
//! the *primary* with its path unchanged, streaming bodies both ways. A
//! [`proxy::Hook`] sees the exchanges the sync needs (triggers): only those
//! are buffered, and their response is released only after the hook
//! returns.
//!
//! **Sync path.** Triggers record the *keys* they changed in a durable
//! journal; sync workers read the current state of each key from the
//! primary and upsert or delete it on the secondary (DESIGN.md §2: sync
//! state by key, never replay minting requests).
//!
//! **Phases.** `mirroring` → `cutting-over` → `cut-over` → `completed`, with
//! rollback from `cut-over` (DESIGN.md §6).
//!
//! # Modules
//!
//! - [`app`]: builds everything from [`config::Config`], ordered shutdown.
//! - [`config`]: the TOML file, validated before any socket is bound.
//! - [`proxy`], [`upstream`], [`tls`], [`error`]: the request path.
//! - [`admin`], [`health`], [`metrics`], [`telemetry`]: the operator surface.
//! - [`emulator`]: in-repo Connect2id and Authlete stand-ins.
//! - [`http`]: small shared HTTP plumbing.

pub mod admin;
pub mod api;
pub mod app;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod cutover;
pub mod demo;
pub mod emulator;
pub mod error;
pub mod health;
pub mod http;
pub mod journal;
pub mod json_stream;
pub mod metrics;
pub mod model;
pub mod proxy;
pub mod servers;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod trigger_hook;
pub mod triggers;
pub mod upstream;
pub mod verify;
