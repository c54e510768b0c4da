//! The end-to-end test lives in `tests/e2e.rs`; this crate has no library code.
