//! Shared integration-test harness. Each test binary uses a different subset,
//! hence the allowances.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod authlete;
pub mod c2id;
pub mod cutover;
pub mod fleet_stack;
pub mod proxy;
pub mod stack;
