//! This crate's integration tests, one test binary (one link rather than one per file).

mod common;

mod blip2;
mod errors;
mod graph_structure;
mod parity;
