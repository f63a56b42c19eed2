//! The `blip-onnx` binary: the command line is the library's (shared with the Python package).

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(blip_onnx_cli::main_with_args(std::env::args_os()))
}
