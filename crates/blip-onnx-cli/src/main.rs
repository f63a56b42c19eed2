//! The `blip-onnx` binary: the command line is the library's (shared with the Python package).

// jemalloc on Linux (Cargo.toml says why).
#[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(blip_onnx_cli::main_with_args(std::env::args_os()))
}
