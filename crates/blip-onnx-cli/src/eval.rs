//! `blip-onnx eval`: task quality of a package on a COCO-style dataset, as JSON + Markdown.

use std::path::PathBuf;

use anyhow::{Result, bail};
use blip_eval::{Dataset, EvalOptions};

use crate::tasks::{Common, Format};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: Common,
    /// Dataset folder: captions.json (COCO captions), vqa_questions.json + vqa_annotations.json
    /// (VQAv2 layout), images/.
    #[arg(long)]
    pub dataset: PathBuf,
    /// caption | retrieval | vqa (default: the package's head).
    #[arg(long)]
    pub task: Option<String>,
    /// ITM rerank depth for retrieval; 0 reports ITC only.
    #[arg(long, default_value_t = 16)]
    pub rerank_k: usize,
    /// Evaluate the first N images only.
    #[arg(long, default_value_t = 0)]
    pub max_images: usize,
    /// Output prefix: writes PREFIX.json and PREFIX.md.
    #[arg(short, long)]
    pub out: Option<PathBuf>,
}

fn pct(v: f64) -> String {
    format!("{:.2}", v * 100.0)
}

pub fn run(args: EvalArgs) -> Result<u8> {
    let mut model = args.common.model()?;
    let task = args
        .task
        .clone()
        .unwrap_or_else(|| model.head().to_string());
    let ds = Dataset::locate(&args.dataset);
    let opts = EvalOptions {
        rerank_k: args.rerank_k,
        max_images: args.max_images,
        batch_size: args.common.batch_size,
        ..Default::default()
    };
    let bar = args.common.progress(100, &task);
    let mut progress = |done: usize, total: usize, what: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    };
    let (json, rows): (serde_json::Value, Vec<(String, String)>) = match task.as_str() {
        "caption" => {
            let r = blip_eval::evaluate_captions(&mut model, &ds, &opts, &mut progress)?;
            let rows = vec![
                ("images".into(), r.images.to_string()),
                ("BLEU-1".into(), pct(r.bleu[0])),
                ("BLEU-4".into(), pct(r.bleu[3])),
                ("CIDEr-D".into(), format!("{:.3}", r.cider_d)),
                ("exact match %".into(), pct(r.exact_match)),
            ];
            (serde_json::to_value(&r)?, rows)
        }
        "retrieval" => {
            let r = blip_eval::evaluate_retrieval(&mut model, &ds, &opts, &mut progress)?;
            let mut rows = vec![(
                "images / texts".into(),
                format!("{} / {}", r.images, r.texts),
            )];
            let recall = |name: &str, x: &blip_eval::RecallRow| {
                (
                    name.to_string(),
                    format!("{} / {} / {}", pct(x.r1), pct(x.r5), pct(x.r10)),
                )
            };
            rows.push(recall("text→image R@1/5/10 (ITC)", &r.text_to_image_itc));
            rows.push(recall("image→text R@1/5/10 (ITC)", &r.image_to_text_itc));
            if let (Some(t), Some(i)) = (&r.text_to_image_itm, &r.image_to_text_itm) {
                rows.push(recall(
                    &format!("text→image R@1/5/10 (ITM rerank {})", r.rerank_k),
                    t,
                ));
                rows.push(recall(
                    &format!("image→text R@1/5/10 (ITM rerank {})", r.rerank_k),
                    i,
                ));
            }
            (serde_json::to_value(&r)?, rows)
        }
        "vqa" => {
            let r = blip_eval::evaluate_vqa(&mut model, &ds, &opts, &mut progress)?;
            let mut rows = vec![
                ("questions".into(), r.questions.to_string()),
                ("VQA accuracy %".into(), pct(r.accuracy)),
            ];
            for (t, a) in &r.by_answer_type {
                rows.push((format!("  {t}"), pct(*a)));
            }
            (serde_json::to_value(&r)?, rows)
        }
        other => bail!("--task {other:?}: expected caption, retrieval or vqa"),
    };
    bar.finish_and_clear();
    let package = args.common.package.display().to_string();
    let precision = model.package.manifest.precision.to_string();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = serde_json::json!({
        "package": package, "precision": precision, "task": task,
        "dataset": args.dataset.display().to_string(), "command": command, "metrics": json,
    });
    let mut md = format!("| {task}: {package} ({precision}) | |\n|---|---|\n");
    for (k, v) in &rows {
        md += &format!("| {k} | {v} |\n");
    }
    md += &format!("\n`{command}`\n");
    match args.common.format {
        Format::Text => print!("{md}"),
        _ => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if let Some(prefix) = &args.out {
        if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", prefix.display()));
        // Temp file + rename: an interrupted run never leaves a half-written report.
        let json = serde_json::to_string_pretty(&report)? + "\n";
        blip_package::write_file_atomic(&with("json"), json.as_bytes())?;
        blip_package::write_file_atomic(&with("md"), md.as_bytes())?;
    }
    Ok(0)
}
