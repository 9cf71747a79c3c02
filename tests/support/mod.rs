//! Shared integration-test harness.

pub(crate) mod c2id;
