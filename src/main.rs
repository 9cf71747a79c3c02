//! The `handover` binary.

fn main() {}
