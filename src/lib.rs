//! handover: a live dual-write synchronizing reverse proxy for migrating an
//! OpenID Connect / OAuth 2.0 server without logging anybody out.

pub mod emulator;
pub mod http;
pub mod journal;
