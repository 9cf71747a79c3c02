//! Shared integration-test harness: emulators on port 0 and small HTTP
//! helpers, one file per upstream.

// The harness is private to each test crate; its items are `pub` so that
// the tests read naturally, which `unreachable_pub` would flag.
#![allow(unreachable_pub)]

pub mod authlete;
