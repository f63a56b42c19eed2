//! The task subcommands: caption, embed, itm, vqa, index, search.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use blip_runtime::request;
use blip_runtime::{BlipModel, CaptionOptions, Device, ImageInput, SessionOptions};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use blip_index::{Index, Stamp, StateShape};

use crate::sidecar;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Jsonl,
    /// A Parquet shard written to --output (caption only), with the columns of blip_onnx.ray's.
    Parquet,
}

/// Options every task shares.
#[derive(Args, Clone)]
pub struct Common {
    /// Model package folder (written by `blip-onnx convert`).
    #[arg(short, long, env = "BLIP_ONNX_PACKAGE")]
    pub package: PathBuf,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Intra-op threads for ONNX Runtime (0: one per core), in one pool that all the package's graphs share.
    #[arg(long, default_value_t = 0, env = "BLIP_ONNX_THREADS")]
    pub threads: usize,
    /// Images per vision-encoder batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Execution provider: cpu, or cuda / cuda:N (an error when it cannot be used; never a silent fallback).
    #[arg(long, default_value = "cpu", env = "BLIP_ONNX_DEVICE")]
    pub device: String,
}

pub(crate) fn parse_device(s: &str) -> Result<Device> {
    s.parse().map_err(anyhow::Error::msg)
}

impl Common {
    pub fn model(&self) -> Result<BlipModel> {
        let opts = SessionOptions {
            intra_threads: self.threads,
            device: parse_device(&self.device)?,
            ..Default::default()
        };
        let model = BlipModel::open(&self.package, &opts)
            .with_context(|| format!("loading package {}", self.package.display()))?;
        Ok(model)
    }

    pub(crate) fn progress(&self, n: usize, what: &str) -> ProgressBar {
        progress_bar(self.quiet, n, what)
    }
}

/// Decoding options of `caption`: each one left out takes the library's default, and the request
/// layer (`blip_runtime::request::CaptionRequest::resolve`) checks them, as at every other door.
#[derive(Args, Clone)]
pub struct DecodingFlags {
    /// Prompt the caption starts with (stripped from the output); "" for none [default: "a picture of "].
    #[arg(long)]
    pub prompt: Option<String>,
    /// Beam search width (BLIP's evaluation uses 3); 1 means greedy [default: 3].
    #[arg(long)]
    pub beams: Option<usize>,
    /// Nucleus sampling instead of beam search.
    #[arg(long)]
    pub sample: bool,
    /// Nucleus sampling's top-p [default: 0.9].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling's top-k; 0 disables it [default: 0].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sampling temperature [default: 1].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sampling seed [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum length in tokens, prompt included [default: 20].
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Minimum length in tokens, prompt included [default: 5].
    #[arg(long)]
    pub min_length: Option<usize>,
    /// Beam search's length penalty [default: 1].
    #[arg(long)]
    pub length_penalty: Option<f32>,
    /// Repetition penalty (BLIP's sampling mode uses 1.1) [default: 1].
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
}

impl DecodingFlags {
    /// The flags as a request for the request layer (no defaults or checks here).
    pub fn request(&self) -> request::CaptionRequest {
        request::CaptionRequest {
            prompt: self.prompt.clone(),
            beams: self.beams,
            sample: self.sample.then_some(true),
            top_p: self.top_p,
            top_k: self.top_k,
            temperature: self.temperature,
            seed: self.seed,
            max_length: self.max_length,
            min_length: self.min_length,
            length_penalty: self.length_penalty,
            repetition_penalty: self.repetition_penalty,
        }
    }

    fn options(&self, package: &blip_runtime::Package) -> Result<CaptionOptions> {
        self.request()
            .resolve(request::ModelLimits::of(package))
            .map_err(flag_error)
    }
}

/// A request-layer error in the CLI's spelling: the field as its flag (`--top-p`).
pub(crate) fn flag_error(e: request::RequestError) -> anyhow::Error {
    anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.problem)
}

fn emit(
    format: Format,
    records: &[serde_json::Value],
    text: impl Fn(&serde_json::Value) -> String,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Text => {
            for r in records {
                writeln!(out, "{}", text(r))?;
            }
        }
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(records)?)?,
        Format::Jsonl => {
            for r in records {
                writeln!(out, "{r}")?;
            }
        }
        Format::Parquet => bail!("--format parquet is written by `caption` only (with --output)"),
    }
    Ok(())
}

/// The images a caption run takes: files as given (their id is the path as given), and the
/// images under each folder, recursively and sorted (their id is the path inside the folder, as
/// blip_onnx.ray names folder images). A folder with no image in it stays an item of its own, so it
/// is reported as failed (exit 3) instead of vanishing from the output.
pub fn expand_images(args: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let scan = blip_index::scan_images(a)?;
            for (path, why) in &scan.skipped {
                eprintln!("skipping {}: {why}", path.display());
            }
            if scan.images.is_empty() {
                eprintln!(
                    "{}: the folder holds no PNG, JPEG, WebP, GIF or BMP file",
                    a.display()
                );
                out.push((a.display().to_string(), a.clone()));
            }
            for p in scan.images {
                let id = p.strip_prefix(a).unwrap_or(&p).display().to_string();
                out.push((id, p));
            }
        } else {
            out.push((a.display().to_string(), a.clone()));
        }
    }
    Ok(out)
}

/// Exit status for a run where some inputs failed but the rest were answered.
pub const EXIT_PARTIAL: u8 = 3;

pub fn caption(
    common: &Common,
    decoding: &DecodingFlags,
    images: &[PathBuf],
    output: Option<&Path>,
    write: Option<sidecar::WriteSpec>,
) -> Result<u8> {
    match (common.format, output) {
        (Format::Parquet, None) => bail!("--format parquet needs --output FILE.parquet"),
        (Format::Parquet, Some(_)) => {}
        (_, Some(_)) => bail!("--output is for --format parquet"),
        _ => {}
    }
    let named = expand_images(images)?;
    // Sidecars are planned before the model loads: an existing one refused, or skipped (resume).
    let (named, sidecars, skipped): (Vec<_>, Vec<Option<PathBuf>>, usize) = match write {
        None => {
            let n = named.len();
            (named, vec![None; n], 0)
        }
        Some(spec) => {
            let (plan, skipped) = sidecar::plan(named, spec)?;
            let (named, sidecars) = plan.into_iter().map(|(i, p, s)| ((i, p), s)).unzip();
            (named, sidecars, skipped)
        }
    };
    if named.is_empty() && skipped > 0 {
        eprintln!("every image has its sidecar ({skipped} skipped); nothing to caption");
        return Ok(0);
    }
    let images: Vec<PathBuf> = named.iter().map(|(_, p)| p.clone()).collect();
    let images = images.as_slice();
    let mut model = common.model()?;
    let opts = decoding.options(&model.package)?;
    // The JSON sidecar's "model": the package folder's name.
    let package_name = std::fs::canonicalize(&common.package)
        .unwrap_or_else(|_| common.package.clone())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = common.progress(images.len(), "captioning");
    let mut results = Vec::with_capacity(images.len());
    let mut written = 0;
    let batch = common.batch_size.max(1);
    for (chunk, chunk_sidecars) in images.chunks(batch).zip(sidecars.chunks(batch)) {
        let inputs: Vec<ImageInput> = chunk.iter().map(|p| ImageInput::Path(p.clone())).collect();
        for (result, sidecar_path) in model
            .caption(&inputs, &opts)?
            .into_iter()
            .zip(chunk_sidecars)
        {
            let mut result = result.map_err(|e| e.to_string());
            // Written as each batch ends, so an interrupted run resumes with --skip-existing.
            if let (Ok(c), Some(path), Some(spec)) = (&result, sidecar_path, write) {
                let text = spec.kind.render(&c.text, &package_name, &opts);
                match sidecar::write_atomic(path, text.as_bytes()) {
                    Ok(()) => written += 1,
                    Err(e) => result = Err(format!("writing {}: {e}", path.display())),
                }
            }
            if let Err(e) = &result {
                bar.suspend(|| eprintln!("error: {e}"));
            }
            results.push(result);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if let Some(spec) = write {
        let failed = results.iter().filter(|r| r.is_err()).count();
        eprintln!(
            "{written} .{} sidecars written, {skipped} skipped (already there), {failed} failed",
            spec.kind.extension()
        );
    }
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(output) = output {
        let rows: Vec<blip_shards::CaptionRow> = named
            .iter()
            .zip(results)
            .map(|((id, path), r)| blip_shards::CaptionRow {
                id: id.clone(),
                path: path.display().to_string(),
                result: r.map(|c| (c.text, c.ids)),
            })
            .collect();
        blip_shards::write_captions(output, &rows)?;
        eprintln!(
            "{} captions ({failed} errors) written to {}",
            rows.len() - failed,
            output.display()
        );
        return Ok(if failed > 0 { EXIT_PARTIAL } else { 0 });
    }
    let records: Vec<serde_json::Value> = images
        .iter()
        .zip(results)
        .map(|(path, r)| match r {
            Ok(c) => json!({"image": path, "caption": c.text, "tokens": c.ids, "score": c.score}),
            Err(e) => json!({"image": path, "error": e}),
        })
        .collect();
    emit(common.format, &records, |r| match r.get("caption") {
        Some(c) => format!(
            "{}\t{}",
            r["image"].as_str().unwrap_or(""),
            c.as_str().unwrap_or("")
        ),
        None => format!(
            "{}\tERROR {}",
            r["image"].as_str().unwrap_or(""),
            r["error"].as_str().unwrap_or("")
        ),
    })?;
    Ok(if failed > 0 { EXIT_PARTIAL } else { 0 })
}

pub fn embed(common: &Common, images: &[PathBuf], texts: &[String]) -> Result<u8> {
    let mut model = common.model()?;
    let mut records = Vec::new();
    let mut failed = 0;
    let mut fail =
        |records: &mut Vec<serde_json::Value>, key: &str, item: serde_json::Value, e: String| {
            failed += 1;
            eprintln!("error: {e}");
            records.push(json!({key: item, "error": e}));
        };
    if !images.is_empty() {
        let bar = common.progress(images.len(), "embedding");
        for chunk in images.chunks(common.batch_size.max(1)) {
            // Each image is decoded on its own so that a bad file fails alone; the good ones
            // of the batch still go through the encoder together.
            let mut pixels = Vec::new();
            let mut good = Vec::new();
            for p in chunk {
                match model.pixel_values(&ImageInput::Path(p.clone())) {
                    Ok(px) => {
                        pixels.extend(px);
                        good.push(p);
                    }
                    Err(e) => fail(&mut records, "image", json!(p), e.to_string()),
                }
            }
            if !good.is_empty() {
                let embeds = model.vision(&pixels, good.len())?.embeds.with_context(|| {
                    format!("package head {} has no image embeddings", model.head())
                })?;
                let embeds = blip_runtime::one_vector_per_image(embeds)?;
                for (p, row) in good.iter().zip(embeds.rows()) {
                    records.push(json!({"image": p, "embedding": row.to_vec()}));
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    }
    if !texts.is_empty() {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        match model.embed_texts(&refs) {
            Ok(embeds) => {
                for (t, row) in texts.iter().zip(embeds.rows()) {
                    records.push(json!({"text": t, "embedding": row.to_vec()}));
                }
            }
            // A bad text fails its batch: answer the others one by one, naming each failure.
            Err(_) => {
                for (i, t) in texts.iter().enumerate() {
                    match model.embed_texts(&[t.as_str()]) {
                        Ok(e) => records.push(json!({"text": t, "embedding": e.row(0).to_vec()})),
                        // Numbered within the whole list, not the one-text call.
                        Err(blip_runtime::RuntimeError::Preprocess(
                            blip_preprocess::PreprocessError::Text {
                                snippet, message, ..
                            },
                        )) => fail(
                            &mut records,
                            "text",
                            json!(t),
                            blip_preprocess::PreprocessError::Text {
                                ordinal: i + 1,
                                count: texts.len(),
                                snippet,
                                message,
                            }
                            .to_string(),
                        ),
                        Err(e) => fail(&mut records, "text", json!(t), e.to_string()),
                    }
                }
            }
        }
    }
    emit(common.format, &records, |r| {
        let key = r
            .get("image")
            .or_else(|| r.get("text"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let v: Vec<String> = r["embedding"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| format!("{:.6}", x.as_f64().unwrap_or(0.0)))
                    .collect()
            })
            .unwrap_or_default();
        match r.get("error").and_then(|e| e.as_str()) {
            Some(e) => format!("{key}\tERROR {e}"),
            None => format!("{key}\t{}", v.join(" ")),
        }
    })?;
    Ok(if failed > 0 { EXIT_PARTIAL } else { 0 })
}

/// `tag`: zero-shot labels of each image, by ITC similarity to each label embedded as
/// `blip_runtime::tag::TAG_PROMPT`. JSON lines (`--format json`: one array); a bad image is an
/// error record and exit 3.
pub fn tag(
    common: &Common,
    images: &[PathBuf],
    labels_file: &Path,
    top_k: Option<usize>,
    threshold: Option<f32>,
) -> Result<u8> {
    let text = std::fs::read_to_string(labels_file)
        .with_context(|| format!("reading {}", labels_file.display()))?;
    // Blank lines are skipped; errors name the line a label came from.
    let (lines, labels): (Vec<usize>, Vec<String>) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| (n + 1, l.trim().to_string()))
        .unzip();
    let request = request::TagRequest {
        labels,
        top_k,
        threshold,
    };
    // Checked before the model loads.
    let options = request.resolve().map_err(|e| {
        // `labels[i]` (the request layer's item) as the file's line number.
        let line = |item: &str| {
            item.strip_prefix("labels[")
                .and_then(|i| i.strip_suffix(']'))
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| lines.get(i).copied())
        };
        match (e.field.as_str(), line(&e.field)) {
            (_, Some(n)) => {
                let problem = match e.problem.strip_prefix("repeats ").and_then(line) {
                    Some(first) => format!("repeats line {first}"),
                    None => e.problem.clone(),
                };
                anyhow::anyhow!("{} line {n}: {problem}", labels_file.display())
            }
            ("labels", None) => anyhow::anyhow!("{}: labels {}", labels_file.display(), e.problem),
            _ => flag_error(e),
        }
    })?;
    let labels = request.labels;
    let mut model = common.model()?;
    let prompts: Vec<String> = labels
        .iter()
        .map(|l| blip_runtime::tag::tag_prompt(l))
        .collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let label_embeds = model.embed_texts(&refs)?;
    let mut records = Vec::with_capacity(images.len());
    let mut failed = 0;
    let bar = common.progress(images.len(), "tagging");
    for chunk in images.chunks(common.batch_size.max(1)) {
        // Decoded one by one so that a bad file fails alone, encoded together.
        let mut pixels = Vec::new();
        let mut good = Vec::new();
        let mut slots = Vec::with_capacity(chunk.len());
        for p in chunk {
            match model.pixel_values(&ImageInput::Path(p.clone())) {
                Ok(px) => {
                    pixels.extend(px);
                    slots.push(Ok(good.len()));
                    good.push(p);
                }
                Err(e) => slots.push(Err(e.to_string())),
            }
        }
        let tags = if good.is_empty() {
            Vec::new()
        } else {
            let embeds = model.vision(&pixels, good.len())?.embeds.with_context(|| {
                format!("package head {} has no image embeddings", model.head())
            })?;
            blip_runtime::tag::zero_shot_tags(embeds.view(), label_embeds.view(), &labels, options)
                .map_err(blip_runtime::RuntimeError::from)?
        };
        for (p, slot) in chunk.iter().zip(slots) {
            records.push(match slot {
                Ok(i) => {
                    let list: Vec<_> = tags[i]
                        .iter()
                        .map(|t| json!({"label": t.label, "score": t.score}))
                        .collect();
                    json!({"image": p, "tags": list})
                }
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("error: {e}"));
                    json!({"image": p, "error": e})
                }
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    // JSON lines are the text form of this command.
    let format = match common.format {
        Format::Text => Format::Jsonl,
        f => f,
    };
    emit(format, &records, |r| r.to_string())?;
    Ok(if failed > 0 { EXIT_PARTIAL } else { 0 })
}

pub fn itm(common: &Common, image: &Path, texts: &[String]) -> Result<u8> {
    request::check_texts("texts", texts, request::limits::MAX_TEXTS).map_err(flag_error)?;
    let mut model = common.model()?;
    let pixels = model.pixel_values(&ImageInput::Path(image.to_path_buf()))?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut records = Vec::new();
    for (t, s) in texts.iter().zip(model.itm(&pixels, &refs)?) {
        records.push(json!({"image": image, "text": t, "match_probability": s.match_probability, "itm_logits": s.logits, "itc_similarity": s.itc}));
    }
    emit(common.format, &records, |r| {
        format!(
            "{:.4}\titc {:.4}\t{}",
            r["match_probability"].as_f64().unwrap_or(0.0),
            r["itc_similarity"].as_f64().unwrap_or(0.0),
            r["text"].as_str().unwrap_or("")
        )
    })?;
    Ok(0)
}

pub fn vqa(
    common: &Common,
    image: &Path,
    questions: &[String],
    answers_file: Option<&Path>,
    k: usize,
    mask_question_padding: bool,
) -> Result<u8> {
    let answers = match answers_file {
        None => None,
        Some(path) => {
            let list = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            // Blank lines separate, they are no answers; an empty list is the request layer's
            // refusal (`--answers: is empty`), with the file named.
            let list: Vec<String> = list
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            Some(list)
        }
    };
    let no_answers = answers.as_ref().is_some_and(Vec::is_empty);
    let mode = request::VqaRequest {
        questions: questions.to_vec(),
        answers,
        k: Some(k),
        mask_question_padding: Some(mask_question_padding),
    }
    .resolve()
    .map_err(|e| match answers_file {
        Some(path) if no_answers => flag_error(e).context(format!(
            "{}: no answers in the file (one per line)",
            path.display()
        )),
        Some(path) if e.field.starts_with("answers") => {
            flag_error(e).context(format!("answers from {}", path.display()))
        }
        _ => flag_error(e),
    })?;
    let mut model = common.model()?;
    let images = vec![ImageInput::Path(image.to_path_buf()); questions.len()];
    let qs: Vec<&str> = questions.iter().map(String::as_str).collect();
    let mut records = Vec::new();
    match mode {
        request::VqaMode::Generate(opts) => {
            for (q, a) in questions.iter().zip(model.answer(&images, &qs, &opts)?) {
                records.push(
                    json!({"image": image, "question": q, "answer": a.text, "tokens": a.ids}),
                );
            }
        }
        request::VqaMode::Rank { answers, k } => {
            let list: Vec<&str> = answers.iter().map(String::as_str).collect();
            let max_question = model.package.manifest.tokens.max_text_tokens;
            let ranked = model.rank_answers(&images, &qs, &list, k, max_question)?;
            for (q, r) in questions.iter().zip(ranked) {
                let cands: Vec<_> = r
                    .candidates
                    .iter()
                    .map(|(i, s)| json!({"answer": list[*i], "score": s}))
                    .collect();
                records.push(json!({"image": image, "question": q, "answer": list[r.best], "candidates": cands}));
            }
        }
    }
    emit(common.format, &records, |r| {
        format!(
            "{}\t{}",
            r["question"].as_str().unwrap_or(""),
            r["answer"].as_str().unwrap_or("")
        )
    })?;
    Ok(0)
}

/// A progress bar on a terminal (hidden when quiet, piped, or for fewer than two items).
pub(crate) fn progress_bar(quiet: bool, n: usize, what: &str) -> ProgressBar {
    if quiet || n < 2 || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template. This is a bug.")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// `index export INDEX --parquet OUT`: every entry's vectors with its id, path and metadata, a row
/// per vector (see `blip_shards::EmbeddingWriter`), written as the entries are read.
pub fn index_export(index: &Path, parquet: &Path, quiet: bool) -> Result<u8> {
    // A format-2 file is migrated first, as `search` does.
    let store = if blip_index::is_store(index) {
        blip_index::Store::open_read_only(index)?
    } else {
        blip_index::Store::open(index)?
    };
    let bar = progress_bar(quiet, store.len()?, "exporting");
    let mut writer = blip_shards::EmbeddingWriter::create(parquet, store.dim)?;
    let mut rows = Vec::with_capacity(IMPORT_CHUNK);
    let (mut entries, mut vectors) = (0usize, 0usize);
    let mut written = Ok(());
    store.for_each(|s| {
        let metadata = s.entry.metadata.as_ref().map(|m| m.to_string());
        for (i, v) in s.vectors.chunks(store.dim).enumerate() {
            rows.push(blip_shards::ExportRow {
                id: s.entry.id.clone(),
                path: s.entry.path.display().to_string(),
                metadata: metadata.clone(),
                vector: i as i32,
                embedding: v.to_vec(),
            });
        }
        if rows.len() >= IMPORT_CHUNK && written.is_ok() {
            vectors += rows.len();
            written = writer.write(&std::mem::take(&mut rows));
        }
        entries += 1;
        bar.inc(1);
        Ok(())
    })?;
    // A Parquet error stops the writes; the unfinished file goes when the writer drops.
    written?;
    vectors += rows.len();
    writer.write(&rows)?;
    writer.finish()?;
    bar.finish_and_clear();
    let summary =
        json!({"index": index, "parquet": parquet, "images": entries, "vectors": vectors});
    emit(Format::Jsonl, &[summary], |_| String::new())?;
    Ok(0)
}

/// Rows per transaction of `index --from-parquet`, and per row group of `index export`.
const IMPORT_CHUNK: usize = 4096;

/// `index --from-parquet`: an index from embedding shards. Error rows, rows of another width and
/// unreadable shards are reported and left out (exit 3); the rest is indexed, a transaction per
/// shard, with a progress bar over the shards' rows.
pub fn index_from_parquet(common: &Common, shards: &[PathBuf], output: &Path) -> Result<u8> {
    let package = blip_package::Package::open(&common.package)
        .with_context(|| format!("loading package {}", common.package.display()))?;
    let dim = blip_index::image_embedding_width(&package)?;
    let mut failed = 0;
    let mut files = Vec::new();
    for arg in shards {
        files.extend(blip_shards::shard_files(arg)?);
    }
    if files.is_empty() {
        bail!(
            "no Parquet shards in {}",
            shards
                .iter()
                .map(|s| s.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let m = &package.manifest.model;
    // The shards hold no vision states: the index reranks by encoding candidates (and a later
    // POST /v1/index add needs none).
    let store = blip_index::Store::create_staged(
        output,
        "building",
        &blip_index::StoreOptions {
            package: Index::fingerprint(&package),
            dim,
            states: Some(StateShape {
                tokens: m.image_tokens,
                width: m.vision_hidden_size,
            }),
            rerank: blip_index::RerankStates::None,
            ann: blip_index::AnnStorage::default(),
        },
    )?;
    // The bar counts rows (from the shards' footers), and rows go in as transactions of
    // `IMPORT_CHUNK`, so a shard of a million rows shows its progress.
    let total: usize = files
        .iter()
        .map(|f| blip_shards::row_count(f).unwrap_or(0))
        .sum();
    let bar = common.progress(total, "importing embeddings");
    let mut added = 0usize;
    let mut add = |batch: Vec<blip_index::NewEntry>, file: &Path, failed: &mut usize| {
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        for (id, r) in ids.iter().zip(store.add(batch)?) {
            match r {
                Ok(()) => added += 1,
                Err(e) => {
                    *failed += 1;
                    bar.suspend(|| eprintln!("skipping {id} ({}): {e}", file.display()));
                }
            }
        }
        Ok::<_, blip_index::IndexError>(())
    };
    let mut result = Ok(());
    'shards: for file in &files {
        let rows = match blip_shards::read_embeddings(file) {
            Ok(rows) => rows,
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("skipping shard {e}"));
                continue;
            }
        };
        let mut batch: Vec<blip_index::NewEntry> = Vec::with_capacity(IMPORT_CHUNK);
        for row in rows {
            bar.inc(1);
            let skip = |e: String| {
                bar.suspend(|| eprintln!("skipping {} ({}): {e}", row.id, file.display()))
            };
            let embedding = match &row.result {
                Ok(v) => v,
                Err(e) => {
                    failed += 1;
                    skip(format!("the shard holds an error: {e}"));
                    continue;
                }
            };
            // Consecutive rows under one id are one entry's vectors (an exported multi-vector
            // entry, `index export`).
            if let Some(last) = batch.last_mut().filter(|l| l.id == row.id) {
                last.vectors.extend_from_slice(embedding);
                continue;
            }
            let metadata = match row.metadata.as_deref().map(serde_json::from_str) {
                None => None,
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    failed += 1;
                    skip(format!("its metadata is not JSON: {e}"));
                    continue;
                }
            };
            if batch.len() >= IMPORT_CHUNK
                && let Err(e) = add(std::mem::take(&mut batch), file, &mut failed)
            {
                result = Err(e);
                break 'shards;
            }
            let path = PathBuf::from(&row.path);
            // Images inside tar shards (`shard.tar#member`) have no file of their own to stamp.
            let stamp = Stamp::of(&path).unwrap_or(Stamp {
                size: 0,
                mtime_ns: 0,
            });
            batch.push(blip_index::NewEntry {
                id: row.id.clone(),
                path,
                stamp,
                metadata,
                vectors: embedding.clone(),
                states: None,
            });
        }
        if let Err(e) = add(batch, file, &mut failed) {
            result = Err(e);
            break;
        }
    }
    if let Err(e) = result {
        store.discard();
        return Err(e.into());
    }
    bar.finish_and_clear();
    if added == 0 {
        store.discard();
        bail!(
            "no embedding rows to index in {} shard(s) ({failed} skipped); nothing written",
            files.len()
        );
    }
    store.install(output)?;
    let summary =
        json!({"index": output, "images": added, "shards": files.len(), "failed": failed});
    emit(common.format, &[summary], |r| {
        format!(
            "{} images in {} (from {} shards, {} skipped)",
            r["images"],
            output.display(),
            r["shards"],
            r["failed"]
        )
    })?;
    Ok(if failed > 0 { EXIT_PARTIAL } else { 0 })
}

pub fn index(
    common: &Common,
    dir: &Path,
    output: &Path,
    rerank: blip_index::RerankStates,
) -> Result<u8> {
    let package = blip_package::Package::open(&common.package)
        .with_context(|| format!("loading package {}", common.package.display()))?;
    // Before anything is loaded or written: only retrieval packages make image embeddings.
    let dim = blip_index::image_embedding_width(&package)?;
    let scan = blip_index::scan_images(dir)?;
    for (path, why) in &scan.skipped {
        eprintln!("skipping {}: {why}", path.display());
    }
    let mut model = common.model()?;
    let fingerprint = Index::fingerprint(&model.package);
    let dims = &model.package.manifest.model;
    let states = StateShape {
        tokens: dims.image_tokens,
        width: dims.vision_hidden_size,
    };
    // Unchanged files (same path, size and time) of an index made with this package and the
    // same kind of states are reused: their vectors and states are copied, not recomputed.
    let previous = match blip_index::is_store(output) {
        true => blip_index::Store::open_entries(output).ok(),
        false if output.is_file() => blip_index::Store::open(output).ok(),
        false => None,
    }
    .filter(|p| p.package == fingerprint && p.rerank == rerank && p.states == Some(states));
    let mut reusable: HashMap<(PathBuf, Stamp), (String, Vec<f32>)> = HashMap::new();
    if let Some(p) = &previous {
        p.for_each(|s| {
            reusable.insert((s.entry.path, s.entry.stamp), (s.entry.id, s.vectors));
            Ok(())
        })?;
    }
    let store = blip_index::Store::create_staged(
        output,
        "building",
        &blip_index::StoreOptions {
            package: fingerprint,
            dim,
            states: Some(states),
            rerank,
            ann: blip_index::AnnStorage::default(),
        },
    )?;
    let result = (|| -> Result<serde_json::Value> {
        let mut todo = Vec::new();
        let mut reused = Vec::new();
        for f in &scan.images {
            let stamp = Stamp::of(f)?;
            match (reusable.remove(&(f.clone(), stamp.clone())), &previous) {
                (Some((old_id, vectors)), Some(p)) => {
                    let st = match rerank {
                        blip_index::RerankStates::None => None,
                        _ => Some(p.read_states(&[old_id.as_str()])?),
                    };
                    let e = blip_index::NewEntry {
                        id: f.display().to_string(),
                        path: f.clone(),
                        stamp,
                        metadata: None,
                        vectors,
                        states: st,
                    };
                    reused.push(e);
                }
                _ => todo.push((f.clone(), stamp)),
            }
        }
        // Reused entries go in as transactions of IMPORT_CHUNK (a transaction each would sync
        // the database once per unchanged file).
        let reused_count = reused.len();
        while !reused.is_empty() {
            let rest = reused.split_off(reused.len().min(IMPORT_CHUNK));
            for r in store.add(std::mem::replace(&mut reused, rest))? {
                r?;
            }
        }
        let bar = common.progress(todo.len(), "indexing");
        let mut failed = 0;
        // Copies of one image (the same photo in several albums) are encoded once: later copies
        // take the first one's embedding and states.
        let mut encoded: HashMap<[u8; 32], (Vec<f32>, Vec<f32>)> = HashMap::new();
        let mut duplicates = 0;
        for (path, stamp) in &todo {
            let id = path.display().to_string();
            let entry = |vectors: Vec<f32>, states: Vec<f32>| blip_index::NewEntry {
                id: id.clone(),
                path: path.clone(),
                stamp: stamp.clone(),
                metadata: None,
                vectors,
                states: Some(states),
            };
            // Read once (with the preprocessor's checks: a regular image file under the size
            // limit), then both hashed and decoded.
            let data = match model.images.read_path(path) {
                Ok(d) => d,
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("skipping {}: {e}", path.display()));
                    bar.inc(1);
                    continue;
                }
            };
            let digest = blip_index::content_digest(&data);
            if let Some((embedding, states)) = encoded.get(&digest) {
                for r in store.add(vec![entry(embedding.clone(), states.clone())])? {
                    r?;
                }
                duplicates += 1;
                bar.inc(1);
                continue;
            }
            // One image at a time keeps a bad file from failing its neighbours.
            let image = ImageInput::Bytes {
                name: id.clone(),
                data,
            };
            match model.embed_images(&[image]) {
                Ok((embeds, hidden)) => {
                    let flat: Vec<f32> = hidden.iter().copied().collect();
                    // Every vector of the image (BLIP-2: one per query); the index scores
                    // an entry by its best.
                    let embedding: Vec<f32> = embeds.iter().copied().collect();
                    for r in store.add(vec![entry(embedding.clone(), flat.clone())])? {
                        r?;
                    }
                    encoded.insert(digest, (embedding, flat));
                }
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("skipping {}: {e}", path.display()));
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(
            json!({"index": output, "images": store.len()?, "embedded": todo.len() - failed - duplicates, "duplicates": duplicates, "reused": reused_count, "failed": failed, "skipped": scan.skipped.len(), "rerank_states": rerank.name()}),
        )
    })();
    drop(previous);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            store.discard();
            return Err(e);
        }
    };
    store.install(output)?;
    let failed = summary["failed"].as_u64().unwrap_or(0);
    emit(common.format, &[summary], |r| {
        format!(
            "{} images in {} ({} embedded, {} copies of those, {} unchanged, {} failed)",
            r["images"],
            output.display(),
            r["embedded"],
            r["duplicates"],
            r["reused"],
            r["failed"]
        )
    })?;
    Ok(if failed > 0 { EXIT_PARTIAL } else { 0 })
}

pub fn search(common: &Common, index: &Path, query: &str, k: usize, rerank: usize) -> Result<u8> {
    let request::SearchOptions { k, rerank } = request::SearchRequest {
        text: query.to_string(),
        k: Some(k),
        rerank: Some(rerank),
    }
    .resolve()
    .map_err(flag_error)?;
    let mut model = common.model()?;
    // A format-3 index is opened read-only (its saved graph memory-mapped); an older file is
    // migrated first.
    let store = if blip_index::is_store(index) {
        blip_index::Store::open_read_only(index)?
    } else {
        blip_index::Store::open(index)?
    };
    let expected = blip_index::image_embedding_width(&model.package)?;
    if store.dim != expected && !store.is_empty()? {
        return Err(blip_index::IndexError::WidthMismatch {
            path: index.to_path_buf(),
            package: model.package.dir.clone(),
            index: store.dim,
            expected,
        }
        .into());
    }
    if store.package != Index::fingerprint(&model.package) {
        return Err(blip_index::IndexError::OtherPackage {
            path: index.to_path_buf(),
            package: model.package.dir.clone(),
        }
        .into());
    }
    if store.is_empty()? {
        bail!("{} holds no images", index.display());
    }
    let ranked = blip_runtime::ready(blip_index::rank_store(&mut model, &store, query, k, rerank))
        .map_err(blip_runtime::RuntimeError::from)?;
    let records: Vec<_> = ranked
        .hits
        .iter()
        .take(k)
        .enumerate()
        .map(|(rank, h)| json!({"rank": rank + 1, "image": ranked.entries[h.index].path, "score": h.score, "itc": h.itc, "itm": h.itm}))
        .collect();
    emit(common.format, &records, |r| {
        format!(
            "{}\t{:.4}\t{}",
            r["rank"],
            r["score"].as_f64().unwrap_or(0.0),
            r["image"].as_str().unwrap_or("")
        )
    })?;
    Ok(0)
}
