//! The checks behind each fuzz target, shared with `tests/fuzz_regressions.rs` at the
//! repository root (which includes `checks.rs` by path, without AFL).

pub mod checks;
