//! The runtime's integration tests that share a process's ONNX Runtime as any host does, one test
//! binary. Tests that change the process itself (its environment, its library, its thread pool) are
//! test binaries of their own, listed in Cargo.toml.

mod continuous_batching;
mod device;
mod integrity;
mod tasks;
