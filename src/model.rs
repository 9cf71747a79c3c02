//! The vocabulary of DESIGN.md §1 as types, with no I/O: what the rest of
//! the crate talks about.
//!
//! | word | type |
//! |---|---|
//! | source / target | [`Side`] |
//! | primary / secondary | a [`Side`] given by the [`Phase`] ([`Phase::primary`]) |
//! | dataset | [`Dataset`] |
//! | key | [`Key`]: `client:<client_id>`, `authz:<sub>\|<client_id>`, `session:<sid-key>` |
//! | change (a journal record) | [`Change`], with [`TokenEvent`] and [`TokenKind`] |
//! | phase | [`Phase`], moved by an [`Event`] through [`phase::transition`] |
//! | a server's address | [`BaseUrl`] (its path is the base of the management APIs) |
//! | a token, key or password | [`Secret`] (never printed, compared in constant time) |
//! | a session's idle timer | [`idle`] (last-used times compared within a tolerance) |
//!
//! Nothing here imports from the rest of the crate.

mod change;
mod dataset;
pub mod idle;
mod key;
pub mod phase;
mod secret;
mod side;
mod tenant;
mod url;

pub use change::{Change, TokenEvent, TokenKind};
pub use dataset::{Dataset, UnknownDataset};
pub use key::{Key, sid_key};
pub use phase::{Event, Phase};
pub use secret::Secret;
pub use side::Side;
pub use tenant::Tenant;
pub use url::BaseUrl;
