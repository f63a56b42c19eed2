//! `blip-onnx`: convert BLIP checkpoints to ONNX model packages and run them.

mod inspect;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use blip_checkpoint::Head;
use blip_convert::{ConvertOptions, ExternalData};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "blip-onnx",
    version,
    about = "BLIP (caption, retrieval, VQA) from PyTorch checkpoints to validated ONNX, without Python"
)]
struct Cli {
    /// Log filter (also RUST_LOG), e.g. info, debug.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum HeadArg {
    Caption,
    Retrieval,
    Vqa,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExternalArg {
    /// Inline weights unless a graph passes 1 GiB.
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a BLIP checkpoint (Hugging Face folder, or salesforce/BLIP .pth) into a model package.
    ///
    /// The package is a folder with blip.json (manifest), tokenizer.json and one ONNX graph per role.
    /// It is written to a temporary folder and renamed into place only when complete.
    Convert {
        /// Hugging Face folder (config.json + model.safetensors / pytorch_model.bin) or a .pth file.
        checkpoint: PathBuf,
        /// Output package folder.
        #[arg(short, long)]
        output: PathBuf,
        /// Image size of the package; position embeddings are bicubic-interpolated when it differs.
        #[arg(long)]
        image_size: Option<usize>,
        /// Hugging Face config.json to use (for .pth files whose sizes cannot be inferred).
        #[arg(long)]
        config: Option<PathBuf>,
        /// tokenizer.json or vocab.txt (or a folder with one); default: the checkpoint folder.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Task head, when the checkpoint does not say.
        #[arg(long, value_enum)]
        head: Option<HeadArg>,
        /// Where weights go.
        #[arg(long, value_enum, default_value = "auto")]
        external_data: ExternalArg,
        /// Replace an existing output folder.
        #[arg(long)]
        force: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a package and run every graph once on synthetic input (a smoke test of the deployment).
    Inspect {
        package: PathBuf,
        /// Also load every graph in ONNX Runtime and run it.
        #[arg(long)]
        run: bool,
        /// Intra-op threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert {
            checkpoint,
            output,
            image_size,
            config,
            tokenizer,
            head,
            external_data,
            force,
            json,
        } => {
            let opts = ConvertOptions {
                image_size,
                config,
                tokenizer,
                head: head.map(|h| match h {
                    HeadArg::Caption => Head::Caption,
                    HeadArg::Retrieval => Head::Retrieval,
                    HeadArg::Vqa => Head::Vqa,
                }),
                force,
                external_data: match external_data {
                    ExternalArg::Auto => ExternalData::Auto,
                    ExternalArg::Always => ExternalData::Always,
                    ExternalArg::Never => ExternalData::Never,
                },
            };
            let report = blip_convert::convert(&checkpoint, &output, &opts)
                .with_context(|| format!("converting {}", checkpoint.display()))?;
            if json {
                let graphs: Vec<_> = report
                    .graphs
                    .iter()
                    .map(|g| serde_json::json!({"role": g.role, "bytes": g.bytes, "nodes": g.nodes, "seconds": g.seconds}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"output": report.output, "head": report.head.name(), "seconds": report.total_seconds,
                        "hash_seconds": report.hash_seconds, "graphs": graphs})
                );
            } else {
                println!(
                    "{} package written to {} in {:.2} s",
                    report.head.name(),
                    report.output.display(),
                    report.total_seconds
                );
                for g in &report.graphs {
                    println!(
                        "  {:<22} {:>6} nodes {:>12} bytes {:>7.2} s",
                        g.role, g.nodes, g.bytes, g.seconds
                    );
                }
            }
            Ok(())
        }
        Command::Inspect {
            package,
            run,
            threads,
        } => inspect::inspect(&package, run, threads),
    }
}
