//! The servers handover writes to, one module per kind: the import
//! semantics that make a record on the secondary identical to the primary's
//! (same identifiers, secrets and token material), never a replay of the
//! request that minted it.

pub mod authlete;
pub mod connect2id;
