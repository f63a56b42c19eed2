//! The CLI's integration tests, one test binary: each module drives the real `blip-onnx` binary
//! (one link of the whole stack instead of one per file, and the shapes packages converted once).

mod common;

mod bad_input;
mod batch;
mod blip2;
mod cli;
mod doors;
mod hub;
mod sidecars;
mod tag;
