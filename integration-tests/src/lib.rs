//! End-to-end tests of shardcut live in `tests/`; this crate has no library code.
