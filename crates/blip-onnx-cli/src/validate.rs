//! `blip-onnx validate`: the quality gates as a command (exit 4 when one fails).

use std::path::PathBuf;

use anyhow::{Context, Result};
use blip_runtime::{ImageInput, SessionOptions};
use blip_validate::{Thresholds, ValidateOptions};

use crate::tasks::Format;

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Package to validate.
    pub package: PathBuf,
    /// PyTorch reference bundle (NAME.json + NAME.safetensors) from `blip_reference.py bundle`.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Folder of the bundle's images (default: the bundle's `images_dir`).
    #[arg(long)]
    pub images_dir: Option<PathBuf>,
    /// Another package to compare with (e.g. the FP32 one a quantized package came from).
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Images (files or folders) for the comparison and runtime checks (default: the bundle's
    /// images, else generated scenes).
    #[arg(long, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Texts for retrieval comparisons, one per line (default: a built-in set).
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// Questions for VQA comparisons, one per line (default: a built-in set).
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// Check batch sizes 1..=N against batch 1 (0 skips).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Inferences in the RSS long run (0 skips).
    #[arg(long, default_value_t = 2000)]
    pub long_run: usize,
    /// Max abs diff for FP32 packages (vs PyTorch or another FP32 package).
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Max abs diff vs PyTorch for quantized / FP16 packages.
    #[arg(long, default_value_t = 0.5)]
    pub quantized_tolerance: f64,
    #[arg(long, default_value_t = 0.995)]
    pub min_cosine: f64,
    #[arg(long, default_value_t = 0.9)]
    pub min_top1: f64,
    #[arg(long, default_value_t = 0.8)]
    pub min_top5: f64,
    #[arg(long, default_value_t = 0.9)]
    pub min_caption_exact: f64,
    #[arg(long, default_value_t = 0.9)]
    pub min_answer_agreement: f64,
    #[arg(long, default_value_t = 32.0)]
    pub max_rss_growth_mib: f64,
    /// With --against: a COCO-style dataset (`eval` layout) whose task metric (CIDEr-D, R@1, VQA
    /// accuracy) may drop by at most --max-quality-drop relative to the other package.
    #[arg(long, requires = "against")]
    pub eval_dataset: Option<PathBuf>,
    #[arg(long, default_value_t = 0.02)]
    pub max_quality_drop: f64,
    /// Evaluate on the first N images of the dataset only.
    #[arg(long, default_value_t = 0)]
    pub eval_max_images: usize,
    #[arg(long, default_value_t = 0, env = "BLIP_ONNX_THREADS")]
    pub threads: usize,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

fn lines(path: &Option<PathBuf>, default: &[&str]) -> Result<Vec<String>> {
    match path {
        None => Ok(default.iter().map(|s| s.to_string()).collect()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let v: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            anyhow::ensure!(!v.is_empty(), "{}: no lines", p.display());
            Ok(v)
        }
    }
}

pub fn run(args: ValidateArgs) -> Result<u8> {
    let mut images = Vec::new();
    for p in &args.images {
        if p.is_dir() {
            let scan = blip_index::scan_images(p)?;
            for (path, why) in &scan.skipped {
                eprintln!("skipping {}: {why}", path.display());
            }
            images.extend(scan.images.into_iter().map(ImageInput::Path));
        } else {
            images.push(ImageInput::Path(p.clone()));
        }
    }
    let opts = ValidateOptions {
        reference: args.reference.clone(),
        images_dir: args.images_dir.clone(),
        against: args.against.clone(),
        images,
        texts: lines(&args.texts, blip_validate::DEFAULT_TEXTS)?,
        questions: lines(&args.questions, blip_validate::DEFAULT_QUESTIONS)?,
        thresholds: Thresholds {
            fp32_max_abs: args.tolerance,
            quantized_max_abs: args.quantized_tolerance,
            min_cosine: args.min_cosine,
            min_top1: args.min_top1,
            min_top5: args.min_top5,
            min_caption_exact: args.min_caption_exact,
            min_answer_agreement: args.min_answer_agreement,
            max_rss_growth_mib: args.max_rss_growth_mib,
            max_quality_drop: args.max_quality_drop,
            ..Default::default()
        },
        eval_dataset: args.eval_dataset.clone(),
        eval_max_images: args.eval_max_images,
        max_batch: args.max_batch,
        long_run: args.long_run,
        session: SessionOptions {
            intra_threads: args.threads,
            ..Default::default()
        },
    };
    let report = blip_validate::validate(&args.package, &opts)?;
    if args.format == Format::Text {
        for g in &report.gates {
            let status = match g.pass {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "info",
            };
            println!(
                "{status} {:<62} {:>12.4e} {:<10} {}",
                g.name, g.value, g.threshold, g.detail
            );
        }
        let failed = report.failures().count();
        println!(
            "{} gates, {failed} failed",
            report.gates.iter().filter(|g| g.pass.is_some()).count()
        );
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if report.passed() { 0 } else { 4 })
}
