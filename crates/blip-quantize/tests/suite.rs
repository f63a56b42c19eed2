//! This crate's integration tests, one test binary (one link rather than one per file).

mod common;

mod int8;
mod variants;
