//! Hugging Face hub model ids on the command line: `convert ORG/NAME[@REV] -o PKG` and
//! `serve --model ORG/NAME[@REV]`, resolved through blip-hub's package cache before anything
//! else runs (the server itself only ever sees package folders).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use blip_hub::{Flavour, Hub, HubOptions, ModelId};

fn hub() -> Hub {
    let mut opts = HubOptions::from_env();
    opts.progress = std::io::stderr().is_terminal();
    Hub::new(opts)
}

/// The hub id `checkpoint` names: only when it is not an existing path and has the
/// `org/name[@rev]` shape.
pub fn id_of(checkpoint: &Path) -> Option<ModelId> {
    if checkpoint.exists() {
        return None;
    }
    checkpoint.to_str()?.parse().ok()
}

/// The downloaded checkpoint folder (for `convert ID` with options that change the graphs).
pub fn snapshot(id: &ModelId) -> Result<PathBuf> {
    Ok(hub()
        .snapshot(id)
        .with_context(|| format!("fetching {id}"))?
        .dir)
}

/// `convert ID -o OUT` with the converter's defaults: the package cache's FP32 package of the
/// commit (converted on first use) copied to OUT, staged and renamed into place.
pub fn convert(id: &ModelId, output: &Path, force: bool, json: bool) -> Result<u8> {
    if output.exists() && !force {
        anyhow::bail!(
            "output {} already exists; pass --force to replace it",
            output.display()
        );
    }
    let resolved = hub()
        .package(id, Flavour::Fp32)
        .with_context(|| format!("resolving {id}"))?;
    blip_package::write_staged(output, |tmp| copy_package(&resolved.dir, tmp))
        .map_err(|e| match e.into_io(output) {
            Ok(e) | Err(e) => e,
        })
        .with_context(|| format!("copying {} to {}", resolved.dir.display(), output.display()))?;
    let head = blip_package::Package::open(output)
        .with_context(|| format!("opening {}", output.display()))?
        .manifest
        .head;
    if json {
        println!(
            "{}",
            serde_json::json!({"output": output, "head": head, "model": id.repo,
                "commit": resolved.commit, "cache": resolved.dir, "converted": resolved.built})
        );
    } else {
        println!(
            "{head} package of {id} (commit {}) written to {} ({} {})",
            resolved.commit,
            output.display(),
            if resolved.built {
                "converted into"
            } else {
                "from"
            },
            resolved.dir.display()
        );
    }
    Ok(0)
}

/// A package's files (hidden ones, such as the verification stamp, stay behind).
fn copy_package(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let dst = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&dst)?;
            copy_package(&entry.path(), &dst)?;
        } else {
            std::fs::copy(entry.path(), &dst)?;
        }
    }
    Ok(())
}

/// `serve`'s flags plus hub models: `--package` is needed only when no `--model` is given.
#[derive(clap::Args)]
#[command(mut_arg("packages", |a| a.required(false).required_unless_present("models")))]
pub struct ServeCmd {
    #[command(flatten)]
    pub args: blip_server::ServeArgs,
    /// Hub model id ORG/NAME[@REVISION] to serve (repeatable), downloaded and converted once into
    /// $HF_HOME/blip-onnx/packages (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE=1 honoured).
    #[arg(long = "model", env = "BLIP_MODEL", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Flavour of the --model packages: default (INT8 encoders + INT4 decoder), fp32, int8, int4, fp16.
    #[arg(long, default_value = "default", env = "BLIP_PRECISION", value_parser = parse_precision)]
    pub precision: Flavour,
}

fn parse_precision(s: &str) -> Result<Flavour, blip_hub::UnknownFlavour> {
    s.parse()
}

/// The server's settings with each `--model` resolved to its cached package folder.
pub fn serve_args(cmd: ServeCmd) -> Result<blip_server::ServeArgs> {
    let ServeCmd {
        mut args,
        models,
        precision,
    } = cmd;
    if models.is_empty() {
        return Ok(args);
    }
    let hub = hub();
    for m in &models {
        let id: ModelId = m.parse().with_context(|| format!("--model {m}"))?;
        let resolved = hub
            .package(&id, precision)
            .with_context(|| format!("--model {id}"))?;
        eprintln!(
            "{id}: commit {} {precision} package {}",
            resolved.commit,
            resolved.dir.display()
        );
        // The OpenAI-compatible routes name a --model package by its hub id (as vLLM does),
        // unless --served-model-name named them all.
        if args.served_model_names.len() <= args.packages.len() {
            while args.served_model_names.len() < args.packages.len() {
                let folder = &args.packages[args.served_model_names.len()];
                args.served_model_names.push(
                    folder
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
            args.served_model_names.push(id.repo.clone());
        }
        args.packages.push(resolved.dir);
    }
    Ok(args)
}
