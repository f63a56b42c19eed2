//! Runtime-optimized packages: attention blocks become `com.microsoft.MultiHeadAttention`
//! ([`attention`], a pass over the converter's own pattern, which ORT's fusions do not recognise),
//! then ONNX Runtime rewrites each graph with its CPU fusions (MatMul with its scale, bias-GELU,
//! skip-layer-norm, MatMulIntegerToFloat) and saves it, so a deployment loads the fused graph
//! directly. The converter's default package stays standard-ops only and portable; this one is
//! for ONNX Runtime.
//!
//! The level is ORT's "extended": graph fusions only, no layout transforms (NCHWc), so the
//! result does not depend on the CPU it was written on.

pub mod attention;

use std::path::{Path, PathBuf};

use blip_package::{GraphEntry, Package, Runtime as Target};
use blip_runtime::{OptLevel, OrtLibrary};

#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    #[error(transparent)]
    Package(#[from] blip_package::PackageError),
    #[error(transparent)]
    Runtime(#[from] blip_runtime::RuntimeError),
    #[error("output {path} already exists; pass --force to replace it")]
    OutputExists { path: PathBuf },
    #[error("{path} is already optimized ({how}); optimize the package it came from")]
    AlreadyOptimized { path: PathBuf, how: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, OptimizeError>;

/// The manifest's name for this rewrite.
pub const ORT_EXTENDED: &str = "ort-extended";

#[derive(Debug, Clone)]
pub struct GraphReport {
    pub role: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// Fused op types introduced, with counts (e.g. `com.microsoft.MultiHeadAttention ×12`,
    /// `com.microsoft.SkipLayerNormalization ×12`).
    pub fused_ops: Vec<(String, usize)>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> OptimizeError + '_ {
    move |source| OptimizeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the optimized copy of the package at `src` to `out` (staged, then renamed into place).
pub fn optimize_package(src: &Path, out: &Path, force: bool) -> Result<Vec<GraphReport>> {
    if out.exists() && !force {
        return Err(OptimizeError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    let pkg = Package::open(src)?;
    if let Some((role, how)) = pkg
        .manifest
        .graphs
        .iter()
        .find_map(|(r, g)| g.optimization.as_ref().map(|o| (r, o)))
    {
        return Err(OptimizeError::AlreadyOptimized {
            path: pkg.dir.join(&pkg.manifest.graphs[role].file),
            how: how.clone(),
        });
    }
    let runtime = OrtLibrary::init()?;
    blip_package::write_staged(out, |tmp| write_optimized(&runtime, &pkg, tmp))
        .map_err(|e| e.into_io(out).unwrap_or_else(io(out)))
}

fn write_optimized(runtime: &OrtLibrary, pkg: &Package, dir: &Path) -> Result<Vec<GraphReport>> {
    let mut manifest = pkg.manifest.clone();
    let tok = pkg.tokenizer_path();
    std::fs::copy(&tok, dir.join(&manifest.tokenizer)).map_err(io(&tok))?;
    let mut reports = Vec::new();
    for (role, entry) in &pkg.manifest.graphs {
        let src = pkg.dir.join(&entry.file);
        let stem = entry.file.trim_end_matches(".onnx");
        let file = format!("{stem}_opt.onnx");
        let data_file = entry.data_file.as_ref().map(|_| format!("{file}.data"));
        let dst = dir.join(&file);
        let before = write_fused(
            runtime,
            &src,
            entry.data_file.as_deref(),
            &dst,
            dir,
            data_file.as_deref(),
        )?;
        let mut paths = vec![dst.clone()];
        if let Some(d) = &data_file {
            paths.push(dir.join(d));
        }
        let bytes = paths
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).map_err(io(p)))
            .sum::<Result<u64>>()?;
        // Each graph is decoded once on each side (a base vision graph is hundreds of MB).
        let after = op_types(&decode(&dst)?);
        reports.push(GraphReport {
            role: role.clone(),
            nodes_before: before.len(),
            nodes_after: after.len(),
            fused_ops: fused_ops(&before, &after),
        });
        manifest.graphs.insert(
            role.clone(),
            GraphEntry {
                file,
                data_file,
                sha256: blip_package::sha256_files(&paths)?,
                bytes,
                optimization: Some(ORT_EXTENDED.into()),
                ..entry.clone()
            },
        );
    }
    manifest.runtimes = fused_runtimes(&manifest.runtimes);
    manifest.save(dir)?;
    Ok(reports)
}

/// The runtimes that run ORT's fused graphs: every one the source was made for except tract
/// (no `MultiHeadAttention` with mask or past, no `DynamicQuantizeMatMul`) and WebGPU (its
/// attention kernels lack mask and past; docs/runtimes.md).
fn fused_runtimes(source: &[Target]) -> Vec<Target> {
    Target::claimed(source)
        .into_iter()
        .filter(|r| !matches!(r, Target::Tract | Target::Webgpu))
        .collect()
}

/// Fuses the attention of the graph at `src` and has ORT write its optimized form to `dst`;
/// returns the source's op types.
/// The rewritten graph is staged next to `dst` (ORT only reads external data from the model's own
/// folder, so the source's data file is linked there too) and removed afterwards.
fn write_fused(
    runtime: &OrtLibrary,
    src: &Path,
    src_data: Option<&str>,
    dst: &Path,
    dir: &Path,
    dst_data: Option<&str>,
) -> Result<Vec<String>> {
    use prost::Message;
    let mut model = decode(src)?;
    let before = op_types(&model);
    if attention::fuse_attention(&mut model) == 0 {
        runtime.write_optimized(src, dst, OptLevel::Extended, dst_data)?;
        return Ok(before);
    }
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staged = dir.join(format!(".fused-{name}"));
    std::fs::write(&staged, model.encode_to_vec()).map_err(io(&staged))?;
    let mut temps = vec![staged.clone()];
    if let Some(data) = src_data {
        let (from, to) = (src.with_file_name(data), dir.join(data));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io(&from))?;
        }
        temps.push(to);
    }
    let written = runtime.write_optimized(&staged, dst, OptLevel::Extended, dst_data);
    for t in &temps {
        let _ = std::fs::remove_file(t);
    }
    written?;
    Ok(before)
}

fn decode(path: &Path) -> Result<onnx_writer::onnx::ModelProto> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(io(path))?;
    onnx_writer::onnx::ModelProto::decode(bytes.as_slice())
        .map_err(|e| io(path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Op types present after optimization and not before, with their counts.
fn fused_ops(before: &[String], after: &[String]) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for op in after.iter().filter(|op| !before.contains(op)) {
        *counts.entry(op.clone()).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// Op type of every node (with its domain when not the default one).
fn op_types(model: &onnx_writer::onnx::ModelProto) -> Vec<String> {
    let op = |n: &onnx_writer::onnx::NodeProto| {
        let t = n.op_type.clone().unwrap_or_default();
        match n.domain.as_deref() {
            None | Some("") => t,
            Some(d) => format!("{d}.{t}"),
        }
    };
    model
        .graph
        .as_ref()
        .map(|g| g.node.iter().map(op).collect())
        .unwrap_or_default()
}
