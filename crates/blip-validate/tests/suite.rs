//! This crate's integration tests, one test binary (one link rather than one per file).

mod check;
mod validate;
