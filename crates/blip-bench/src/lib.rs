//! blip-onnx's benchmarks. `blip-onnx bench PKG...` ([`run`]): the guide's benchmark table, side by side in one run on this machine.
//!
//! Each package is measured in its own child process (`bench --one`), so its peak RSS is its own;
//! optional rows come from PyTorch eager and the guide's ORT-Python recipe (the repo's reference tool,
//! when a Python with torch is given) and from CUDA (when asked; a GPU that cannot be used is reported,
//! never silently replaced by the CPU). When two or more packages have a decoder, their decoder steps
//! are also measured interleaved in this process ([`InterleavedStep`]). Writes JSON, a Markdown table
//! and a PNG chart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use blip_package::Head;
use blip_runtime::generate::Step;
use blip_runtime::{
    BlipModel, CandidateStates, CaptionOptions, ImageInput, SessionOptions, Strategy, VqaOptions,
};
use serde::{Deserialize, Serialize};

pub mod open;
pub mod runtime;

/// What a benchmark run can fail on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Runtime(#[from] blip_runtime::RuntimeError),
    #[error(transparent)]
    Preprocess(#[from] blip_preprocess::PreprocessError),
    #[error(transparent)]
    Task(#[from] blip_runtime::TaskError),
    #[error(transparent)]
    Package(#[from] blip_package::PackageError),
    /// A missing or contradictory option.
    #[error("{0}")]
    Usage(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A child process (`bench --one`, the reference tool) failed or printed something else
    /// than its JSON.
    #[error("{what}: {message}")]
    Child { what: String, message: String },
    /// A `bench --one` child's own error line (it names the package).
    #[error("{0}")]
    Measured(String),
    /// The measurement of one package failed.
    #[error("{package}: {source}")]
    Measuring {
        package: PathBuf,
        #[source]
        source: Box<BenchError>,
    },
    #[error("{path}: {message}")]
    Report { path: PathBuf, message: String },
    #[error("drawing the chart: {0}")]
    Chart(String),
    #[error(transparent)]
    Shape(#[from] ndarray::ShapeError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, BenchError>;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BenchError + 'a {
    move |source| BenchError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn measuring(package: &Path) -> impl FnOnce(BenchError) -> BenchError + '_ {
    move |e| BenchError::Measuring {
        package: package.to_path_buf(),
        source: Box::new(e),
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Packages to measure (each becomes a column group: FP32, INT8, INT4, FP16, optimized, ...).
    #[arg(required_unless_present = "render")]
    pub packages: Vec<PathBuf>,
    /// Image for the end-to-end rows (decoded and preprocessed every time).
    #[arg(long, required_unless_present = "render")]
    pub image: Option<PathBuf>,
    /// Timed repetitions per case (batch-8 rows use half).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Measure every engine this many times in turn (PyTorch, package 1, package 2, ..., then again)
    /// and pool the samples: a slow spell of a shared machine then falls on every engine alike
    /// instead of on whichever was running, which keeps the ratios honest.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Intra-op threads for every engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Output prefix: writes PREFIX.json, PREFIX.md and PREFIX.png (e.g. docs/bench/bench-base).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Also replace the block between `<!-- bench:STEM -->` and `<!-- /bench:STEM -->` in this
    /// Markdown file (STEM: the --out file name) with the table.
    #[arg(long, requires = "out")]
    pub readme: Option<PathBuf>,
    /// Python with torch + transformers + onnxruntime: adds PyTorch eager and the guide's ORT-Python rows.
    #[arg(long, requires = "checkpoint")]
    pub python: Option<PathBuf>,
    /// The checkpoint the packages were converted from (for the Python rows).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Also measure the first package on CUDA (needs a `cuda` build and a GPU).
    #[arg(long)]
    pub cuda: bool,
    /// Measure nothing: rewrite the Markdown, chart and README block from this earlier JSON report
    /// (e.g. after a change to the chart), with `-o` / `--readme`.
    #[arg(long, conflicts_with_all = ["python", "cuda", "one"])]
    pub render: Option<PathBuf>,
    /// Measure one package in this process and print its JSON (what each child runs).
    #[arg(long, hide = true)]
    pub one: bool,
    #[arg(long, hide = true, default_value = "cpu")]
    pub device: String,
}

impl BenchArgs {
    fn image(&self) -> Result<&Path> {
        self.image
            .as_deref()
            .ok_or_else(|| BenchError::Usage("--image is required to measure".into()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub case: String,
    pub median_ms: f64,
    pub p90_ms: f64,
    /// Items (images, texts, tokens, captions) per second at the median.
    pub per_s: f64,
    /// Items one repetition processes (e.g. 8 images for a batch-8 row).
    #[serde(default = "one")]
    pub items: usize,
    /// Every timed repetition, in ms (pooled over rounds).
    #[serde(default)]
    pub samples_ms: Vec<f64>,
}

fn one() -> usize {
    1
}

/// The `q` quantile of `samples` (nearest rank: sorted index `round((n − 1) · q)`), the one rule
/// for every median and p90 here; NaN when there are none.
pub(crate) fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n - 1) as f64 * q).round() as usize],
    }
}

impl Row {
    /// Median, p90 and throughput of `samples_ms`.
    fn from_samples(samples_ms: Vec<f64>, items: usize, case: String) -> Row {
        let median = quantile(&samples_ms, 0.5);
        Row {
            case,
            median_ms: median,
            p90_ms: quantile(&samples_ms, 0.9),
            per_s: items as f64 / (median / 1e3),
            items,
            samples_ms,
        }
    }

    /// This row with `other`'s samples added (the same case measured in another round).
    fn pooled(self, other: &Row) -> Row {
        let mut samples = self.samples_ms;
        samples.extend_from_slice(&other.samples_ms);
        Row::from_samples(samples, self.items, self.case)
    }
}

impl Engine {
    /// Pools the samples of the same engine measured in another round (peak RSS: the larger).
    fn pooled(mut self, other: Engine) -> Engine {
        self.rows = self
            .rows
            .into_iter()
            .map(|r| match other.rows.iter().find(|o| o.case == r.case) {
                Some(o) => r.pooled(o),
                None => r,
            })
            .collect();
        self.peak_rss_mb = match (self.peak_rss_mb, other.peak_rss_mb) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    /// e.g. `blip-onnx base-caption-int8 (int8 …)`, `PyTorch eager`.
    pub name: String,
    pub precision: String,
    pub size_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub rows: Vec<Row>,
}

/// The row of `times` (seconds) for `items` per repetition.
pub fn stats(times: Vec<f64>, items: usize, case: String) -> Row {
    Row::from_samples(times.iter().map(|t| t * 1e3).collect(), items, case)
}

pub fn timed<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<f64>> {
    f()?; // warm-up
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

fn dir_size_mb(dir: &Path) -> Option<f64> {
    let bytes: u64 = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        // Hidden files (the verified stamp) are not part of the package.
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    Some(bytes as f64 / 1e6)
}

/// The table's case names (the reference tool's Python rows use the same).
pub fn vision_case(size: usize, batch: usize) -> String {
    format!("vision {size}² b{batch}")
}
const TEXT_CASE: &str = "text encoder 32 tokens";
const STEP_CASE: &str = "decoder step (20 cached)";
const CAPTION_CASE: &str = "caption greedy 20 tokens";
const ANSWER_CASE: &str = "answer beam 3";
const RETRIEVAL_CASE: &str = "retrieve 1 vs 1000, rerank 16";

/// 31 words: with [CLS]/[ENC] and [SEP], 32-ish tokens whatever the tokenizer splits.
const TEXT_32: &str = "a man in a red jacket is standing next to a bicycle on a wet street while two \
                       children and a small brown dog watch him from the steps of an old building";

fn measure_one(pkg: &Path, args: &BenchArgs) -> Result<Engine> {
    let device = args.device.parse().map_err(BenchError::Usage)?;
    let opts = SessionOptions {
        intra_threads: args.threads,
        device,
        ..Default::default()
    };
    let mut m = BlipModel::open(pkg, &opts)?;
    let reps = args.reps;
    let half = reps.div_ceil(2);
    let size = m.package.manifest.preprocess.image_size;
    let input = ImageInput::Path(args.image()?.to_path_buf());
    let px = m.pixel_values(&input)?;
    let mut rows = Vec::new();
    for batch in [1usize, 8] {
        let pixels: Vec<f32> = std::iter::repeat_n(px.iter().copied(), batch)
            .flatten()
            .collect();
        let times = timed(if batch == 1 { reps } else { half }, || {
            Ok(m.vision(&pixels, batch)?)
        })?;
        rows.push(stats(times, batch, vision_case(size, batch)));
    }
    let hidden = m.vision(&px, 1)?.hidden;
    let head = m.package.manifest.head;
    match head {
        Head::Retrieval => {
            let times = timed(reps, || Ok(m.embed_texts(&[TEXT_32])?))?;
            rows.push(stats(times, 1, TEXT_CASE.into()));
            let dim = m.package.manifest.model.embed_dim.unwrap_or(256);
            let embeds = ndarray::Array3::from_shape_fn((1000, 1, dim), |(i, _, j)| {
                (((i * 31 + j * 17) % 97) as f32 - 48.0) / 400.0
            });
            let cand = ndarray::concatenate(ndarray::Axis(0), &vec![hidden.view(); 16])?;
            let times = timed(reps, || {
                Ok(m.rank_images(
                    TEXT_32,
                    embeds.view(),
                    16,
                    CandidateStates::Stored(&mut |_| Ok(cand.clone())),
                )?)
            })?;
            rows.push(stats(times, 1, RETRIEVAL_CASE.into()));
        }
        Head::Vqa => {
            let batch = question_batch(&m)?;
            let times = timed(reps, || Ok(m.question_states(&batch, hidden.view())?))?;
            rows.push(stats(times, 1, TEXT_CASE.into()));
            let states = m.question_states(&batch, hidden.view())?;
            rows.push(decoder_step(&mut m, states.view(), reps)?);
            let times = timed(half, || {
                Ok(m.answer(
                    std::slice::from_ref(&input),
                    &["what is the man standing next to?"],
                    &VqaOptions::default(),
                )?)
            })?;
            rows.push(stats(times, 1, ANSWER_CASE.into()));
        }
        _ => {
            rows.push(decoder_step(&mut m, hidden.view(), reps)?);
            // Exactly 20 new tokens after [DEC] (EOS blocked until then), from the image file.
            let copts = CaptionOptions {
                prompt: String::new(),
                strategy: Strategy::Greedy,
                max_length: 21,
                min_length: 21,
                ..Default::default()
            };
            let times = timed(half, || {
                let c = m.caption(std::slice::from_ref(&input), &copts)?;
                c.into_iter().next().transpose()?;
                Ok(())
            })?;
            rows.push(stats(times, 1, CAPTION_CASE.into()));
        }
    }
    Ok(Engine {
        name: engine_name(pkg, &m, &args.device),
        precision: m.package.manifest.precision.to_string(),
        size_mb: dir_size_mb(pkg),
        peak_rss_mb: peak_rss_mb(),
        rows,
    })
}

/// The table's name of a package (`blip-onnx NAME`, marked when ORT-optimized or not on the CPU).
fn engine_name(pkg: &Path, m: &BlipModel, device: &str) -> String {
    let optimized = m
        .package
        .manifest
        .graphs
        .values()
        .any(|g| g.optimization.is_some());
    let name = pkg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "blip-onnx {name}{}{}",
        if optimized { " (ort-optimized)" } else { "" },
        if device != "cpu" {
            format!(" [{device}]")
        } else {
            String::new()
        }
    )
}

/// The benchmark's ~32-token question, tokenized for the question encoder.
fn question_batch(m: &BlipModel) -> Result<blip_preprocess::TextBatch> {
    Ok(m.tokenizer
        .encode_batch(&[TEXT_32], blip_preprocess::FirstToken::Enc, None)?)
}

/// A KV-cached decoder that has read a 20-token prefix, batch 1, and the token each timed step
/// feeds.
fn primed_decoder<'m>(
    m: &'m mut BlipModel,
    states: ndarray::ArrayView3<'_, f32>,
) -> Result<(blip_runtime::CachedDecoder<'m>, i64)> {
    // A 20-token prefix in the package's own vocabulary: [DEC] + the text's tokens, repeated.
    let text = m
        .tokenizer
        .encode_batch(&[TEXT_32], blip_preprocess::FirstToken::Dec, None)?;
    let words = &text.row_ids(0)[1..];
    let prefix: Vec<i64> = std::iter::once(text.row_ids(0)[0])
        .chain(words.iter().copied().cycle().take(19))
        .collect();
    let next = words[0];
    let mut dec = m.cached_decoder(states)?;
    dec.step(&prefix, prefix.len(), None)?;
    Ok((dec, next))
}

/// One KV-cached decoder step after a 20-token prefix, batch 1.
fn decoder_step(
    m: &mut BlipModel,
    states: ndarray::ArrayView3<'_, f32>,
    reps: usize,
) -> Result<Row> {
    let (mut dec, next) = primed_decoder(m, states)?;
    let times = timed(reps * 2, || Ok(dec.step(&[next], 1, None)?))?;
    Ok(stats(times, 1, STEP_CASE.into()))
}

/// The decoder step of every package with a decoder, measured in one process, one step of each
/// package in turn: sample `i` of every package comes from the same turn, a few milliseconds
/// apart, so the step ratios between packages are paired instead of taken between medians
/// measured minutes apart (this machine's speed drifts by up to 1.5× from minute to minute).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterleavedStep {
    pub engine: String,
    pub precision: String,
    /// One per turn, in ms (pooled over rounds, turn order kept).
    pub samples_ms: Vec<f64>,
}

/// Measures [`InterleavedStep`]s for the packages among `pkgs` that have a decoder (none when
/// fewer than two have): each primed as in [`decoder_step`], one untimed step each, then
/// `2 × reps` timed turns. Retrieval packages have no decoder and are left out.
fn interleaved_steps(pkgs: &[PathBuf], args: &BenchArgs) -> Result<Vec<InterleavedStep>> {
    let opts = SessionOptions {
        intra_threads: args.threads,
        ..Default::default()
    };
    let input = ImageInput::Path(args.image()?.to_path_buf());
    let mut models = Vec::new();
    for pkg in pkgs {
        let mut m = BlipModel::open(pkg, &opts).map_err(|e| measuring(pkg)(e.into()))?;
        let head = m.package.manifest.head;
        if !matches!(head, Head::Caption | Head::Vqa) {
            continue;
        }
        // What the decoder cross-attends to: the image states, or the question's for VQA.
        let hidden = m.vision(&m.pixel_values(&input)?, 1)?.hidden;
        let states = if head == Head::Vqa {
            let batch = question_batch(&m)?;
            m.question_states(&batch, hidden.view())?
        } else {
            hidden
        };
        models.push((engine_name(pkg, &m, "cpu"), m, states));
    }
    if models.len() < 2 {
        return Ok(Vec::new());
    }
    let mut decoders = Vec::new();
    let mut out = Vec::new();
    for (engine, m, states) in &mut models {
        out.push(InterleavedStep {
            engine: engine.clone(),
            precision: m.package.manifest.precision.to_string(),
            samples_ms: Vec::with_capacity(args.reps * 2),
        });
        let (mut dec, next) = primed_decoder(m, states.view())?;
        dec.step(&[next], 1, None)?; // warm-up
        decoders.push((dec, next));
    }
    for _ in 0..(args.reps * 2).max(1) {
        for ((dec, next), row) in decoders.iter_mut().zip(&mut out) {
            let t = Instant::now();
            dec.step(&[*next], 1, None)?;
            row.samples_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(out)
}

/// Median over turns of `first[i] / this[i]`: how many times faster than the first package this
/// one's step is, pair by pair.
fn paired_speedup(first: &[f64], this: &[f64]) -> Option<f64> {
    let ratios: Vec<f64> = first.iter().zip(this).map(|(a, b)| a / b).collect();
    (!ratios.is_empty()).then(|| quantile(&ratios, 0.5))
}

/// The interleaved step table (empty when nothing was interleaved).
fn interleaved_markdown(steps: &[InterleavedStep]) -> String {
    let Some(first) = steps.first() else {
        return String::new();
    };
    let mut s = format!(
        "Decoder step (20 cached), the packages interleaved in one process: one step of each \
         package in turn, {} turns, so each ratio compares steps measured milliseconds apart.\n\n\
         | engine | precision | median / p90 ms | × {} (median of paired ratios) |\n|---|---|---|---|",
        first.samples_ms.len(),
        first.engine
    );
    for st in steps {
        let speedup = paired_speedup(&first.samples_ms, &st.samples_ms)
            .map_or("—".into(), |x| format!("**{x:.2}×**"));
        s += &format!(
            "\n| {} | {} | {:.1} / {:.1} | {speedup} |",
            st.engine,
            st.precision,
            quantile(&st.samples_ms, 0.5),
            quantile(&st.samples_ms, 0.9)
        );
    }
    s
}

fn child(args: &BenchArgs, pkg: &Path, device: &str) -> Result<Engine> {
    // BLIP_ONNX_EXE: the pip console script, whose process's own executable is Python.
    let exe = match std::env::var_os("BLIP_ONNX_EXE") {
        Some(exe) => PathBuf::from(exe),
        None => {
            std::env::current_exe().map_err(io("finding", Path::new("the running executable")))?
        }
    };
    let out = Command::new(&exe)
        .arg("bench")
        .arg(pkg)
        .args(["--one", "--device", device, "--image"])
        .arg(args.image()?)
        .args([
            "--reps",
            &args.reps.to_string(),
            "--threads",
            &args.threads.to_string(),
        ])
        .output()
        .map_err(io("running", &exe))?;
    let child = |message: String| BenchError::Child {
        what: format!("bench --one {}", pkg.display()),
        message,
    };
    if !out.status.success() {
        // The child printed its own `error: …` line; pass on its message, not a second prefix.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr.trim();
        return Err(BenchError::Measured(
            message.strip_prefix("error: ").unwrap_or(message).into(),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| child(format!("{e} in its output {line:?}")))
}

fn python_rows(args: &BenchArgs, py: &Path, checkpoint: &Path) -> Result<Vec<Engine>> {
    // Found from the checkout the command runs in (the bench scripts run from its root), or
    // named with BLIP_REFERENCE_TOOL: never a path baked in at build time.
    let tool = std::env::var_os("BLIP_REFERENCE_TOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("tools/reference/blip_reference.py"));
    if !tool.is_file() {
        return Err(BenchError::Usage(format!(
            "--python needs the reference tool: {} is missing (run from the blip-onnx checkout, or set BLIP_REFERENCE_TOOL)",
            tool.display()
        )));
    }
    let out = Command::new(py)
        .arg(&tool)
        .args(["bench-python", "--checkpoint"])
        .arg(checkpoint)
        .arg("--image")
        .arg(args.image()?)
        .args([
            "--reps",
            &args.reps.to_string(),
            "--threads",
            &blip_runtime::resolve_threads(args.threads).to_string(),
        ])
        .output()
        .map_err(io("running", py))?;
    let tool_error = |message: String| BenchError::Child {
        what: format!("reference tool {}", tool.display()),
        message,
    };
    if !out.status.success() {
        return Err(tool_error(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let engines: Vec<Engine> = serde_json::from_str(line)
        .map_err(|e| tool_error(format!("{e} in its output {line:?}")))?;
    // Statistics from the samples here, so every row's median and p90 follow one definition.
    Ok(engines
        .into_iter()
        .map(|e| Engine {
            rows: e
                .rows
                .into_iter()
                .map(|r| Row::from_samples(r.samples_ms, r.items, r.case))
                .collect(),
            ..e
        })
        .collect())
}

pub fn run(args: BenchArgs) -> Result<u8> {
    if args.one {
        let engine = measure_one(&args.packages[0], &args)?;
        println!("{}", serde_json::to_string(&engine)?);
        return Ok(0);
    }
    if let Some(json) = &args.render {
        let report: Report =
            serde_json::from_str(&std::fs::read_to_string(json).map_err(io("reading", json))?)
                .map_err(|e| BenchError::Report {
                    path: json.clone(),
                    message: format!("not a bench report: {e}"),
                })?;
        // The measured JSON is the source: rendering leaves it as it is.
        return write_outputs(&args, &report, false);
    }
    let mut engines: Vec<Engine> = Vec::new();
    let mut interleaved: Vec<InterleavedStep> = Vec::new();
    let mut notes = Vec::new();
    for round in 1..=args.rounds {
        let mut measured = Vec::new();
        let of = if args.rounds > 1 {
            format!(" (round {round} of {})", args.rounds)
        } else {
            String::new()
        };
        if let (Some(py), Some(ck)) = (&args.python, &args.checkpoint) {
            eprintln!("measuring PyTorch eager and the guide's ORT-Python recipe{of} ...");
            measured.extend(python_rows(&args, py, ck)?);
        }
        for pkg in &args.packages {
            eprintln!("measuring {}{of} ...", pkg.display());
            measured.push(child(&args, pkg, "cpu")?);
        }
        engines = if engines.is_empty() {
            measured
        } else {
            engines
                .into_iter()
                .zip(measured)
                .map(|(e, m)| e.pooled(m))
                .collect()
        };
        let steps = interleaved_steps(&args.packages, &args)?;
        if !steps.is_empty() {
            eprintln!("measured the decoder steps interleaved{of}");
        }
        if interleaved.is_empty() {
            interleaved = steps;
        } else {
            for (pooled, more) in interleaved.iter_mut().zip(steps) {
                pooled.samples_ms.extend(more.samples_ms);
            }
        }
    }
    if args.cuda {
        match child(&args, &args.packages[0], "cuda") {
            Ok(e) => engines.push(e),
            Err(e) => {
                let note = format!(
                    "CUDA row not measured: {}",
                    format!("{e}").trim_start_matches("error: ")
                );
                eprintln!("{note}");
                notes.push(note);
            }
        }
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let threads = blip_runtime::resolve_threads(args.threads);
    let report = Report {
        command,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        engines,
        image: args
            .image()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
        interleaved_steps: interleaved,
        notes,
        rounds: args.rounds,
        threads,
    };
    write_outputs(&args, &report, true)
}

/// What `bench` writes to PREFIX.json and `--render` reads back.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    // Alphabetical, the order of the reports written before this struct.
    command: String,
    cpus: usize,
    engines: Vec<Engine>,
    image: Option<String>,
    #[serde(default)]
    interleaved_steps: Vec<InterleavedStep>,
    #[serde(default)]
    notes: Vec<String>,
    rounds: u32,
    threads: usize,
}

/// Prints the table; writes PREFIX.md / .png (and PREFIX.json when `with_json`) and the README
/// block, when asked.
fn write_outputs(args: &BenchArgs, report: &Report, with_json: bool) -> Result<u8> {
    let table = markdown(report);
    println!("{table}");
    if let Some(prefix) = &args.out {
        if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", prefix.display()));
        if with_json {
            write_atomic(
                &with("json"),
                (serde_json::to_string_pretty(report)? + "\n").as_bytes(),
            )?;
        }
        write_atomic(&with("md"), format!("# Benchmark\n\n{table}\n").as_bytes())?;
        write_atomic(&with("png"), &chart(&report.engines)?)?;
        eprintln!(
            "wrote {}.{}",
            prefix.display(),
            if with_json {
                "{json,md,png}"
            } else {
                "{md,png}"
            }
        );
        if let Some(readme) = &args.readme {
            let stem = prefix.file_name().unwrap_or_default().to_string_lossy();
            replace_block(readme, &format!("bench:{stem}"), &table)?;
        }
    }
    Ok(0)
}

/// Replaces the text between `<!-- MARKER -->` and `<!-- /MARKER -->` (both kept).
fn replace_block(path: &Path, marker: &str, text: &str) -> Result<()> {
    let doc = std::fs::read_to_string(path).map_err(io("reading", path))?;
    let (open, close) = (format!("<!-- {marker} -->"), format!("<!-- /{marker} -->"));
    let (Some(a), Some(b)) = (doc.find(&open), doc.find(&close)) else {
        return Err(BenchError::Report {
            path: path.to_path_buf(),
            message: format!("no {open} … {close} block"),
        });
    };
    let updated = format!("{}{open}\n{text}\n{}", &doc[..a], &doc[b..]);
    write_atomic(path, updated.as_bytes())
}

/// Reports are written through the one staged-write helper (temp file, sync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    blip_package::write_file_atomic(path, bytes).map_err(io("writing", path))
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Cases in first-seen order across engines.
fn cases(engines: &[Engine]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in engines {
        for r in &e.rows {
            if !out.contains(&r.case) {
                out.push(r.case.clone());
            }
        }
    }
    out
}

fn markdown(report: &Report) -> String {
    let Report {
        engines,
        command,
        threads,
        rounds,
        notes,
        interleaved_steps,
        ..
    } = report;
    let cases = cases(engines);
    let baseline = engines.iter().find(|e| e.name == "PyTorch eager");
    let mut s = String::from("| engine | precision | size MB | peak RSS MB |");
    for c in &cases {
        s += &format!(" {c}: median / p90 ms |");
    }
    s += "\n|---|---|---|---|";
    s += &"---|".repeat(cases.len());
    let opt = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.0}"));
    for e in engines {
        s += &format!(
            "\n| {} | {} | {} | {} |",
            e.name,
            e.precision,
            opt(e.size_mb),
            opt(e.peak_rss_mb)
        );
        for c in &cases {
            match e.rows.iter().find(|r| &r.case == c) {
                Some(r) => {
                    let speedup = baseline
                        .filter(|b| b.name != e.name)
                        .and_then(|b| b.rows.iter().find(|x| &x.case == c))
                        .map(|b| format!(" (**{:.2}×**)", b.median_ms / r.median_ms))
                        .unwrap_or_default();
                    s += &format!(" {:.1} / {:.1}{speedup} |", r.median_ms, r.p90_ms);
                }
                None => s += " — |",
            }
        }
    }
    let run = if *rounds > 1 {
        format!(
            "one run of {rounds} rounds, every engine measured in turn in each round and its samples \
             pooled"
        )
    } else {
        "one run".into()
    };
    // What each measured case does, for the cases this table has.
    let mut how = vec!["vision rows at each package's own image size".to_string()];
    for (case, text) in [
        (
            CAPTION_CASE,
            "captions from the image file end to end with 20 new tokens forced",
        ),
        (
            RETRIEVAL_CASE,
            "retrieval embeds the text, ranks 1000 image embeddings by ITC and reranks the top 16 \
             with ITM",
        ),
        (ANSWER_CASE, "answers from the image file end to end"),
    ] {
        if cases.iter().any(|c| c == case) {
            how.push(text.into());
        }
    }
    s += &format!(
        "\n\n{threads} intra-op threads for every engine, {run} (`{command}`); (×) = speed-up over \
         PyTorch eager measured in the same run. {}; peak RSS per process (the Python row's process \
         holds PyTorch and ORT).",
        capitalized(&how.join("; "))
    );
    if !interleaved_steps.is_empty() {
        s += &format!("\n\n{}", interleaved_markdown(interleaved_steps));
    }
    for n in notes {
        s += &format!("\n\n{n}");
    }
    s
}

/// Grouped bars of median latency per case (log scale), one colour per engine.
fn chart(engines: &[Engine]) -> Result<Vec<u8>> {
    use plotters::prelude::*;
    static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
    // Registering twice (a second chart in one process) is harmless: the same bytes under one name.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let cases = cases(engines);
    let (w, h) = (1400u32, 700u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| BenchError::Chart(e.to_string()))?;
        let max = engines
            .iter()
            .flat_map(|e| e.rows.iter().map(|r| r.median_ms))
            .fold(1.0, f64::max);
        let min = engines
            .iter()
            .flat_map(|e| e.rows.iter().map(|r| r.median_ms))
            .fold(max, f64::min);
        let n = cases.len().max(1);
        // Headroom above the tallest bar for the legend (~18 px per engine of the ~560 px plot),
        // so the legend never covers a bar.
        let legend = ((engines.len() as f64 * 18.0 + 30.0) / 560.0).min(0.6);
        let bottom = min / 2.0;
        let top = bottom * ((max * 1.5) / bottom).powf(1.0 / (1.0 - legend));
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "median latency per case (ms, log scale; lower is better)",
                ("sans-serif", 24),
            )
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n as f64, (bottom..top).log_scale())
            .map_err(|e| BenchError::Chart(e.to_string()))?;
        let labels = cases.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 {
                    labels.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("ms")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| BenchError::Chart(e.to_string()))?;
        let k = engines.len().max(1) as f64;
        for (j, e) in engines.iter().enumerate() {
            let color = Palette99::pick(j).mix(0.9);
            let bars: Vec<Rectangle<(f64, f64)>> = e
                .rows
                .iter()
                .filter_map(|r| {
                    let i = cases.iter().position(|c| c == &r.case)? as f64;
                    let x0 = i + 0.1 + 0.8 * j as f64 / k;
                    Some(Rectangle::new(
                        [(x0, bottom), (x0 + 0.8 / k, r.median_ms)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| BenchError::Chart(e.to_string()))?
                .label(e.name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| BenchError::Chart(e.to_string()))?;
        root.present()
            .map_err(|e| BenchError::Chart(e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| BenchError::Chart("the chart buffer has the wrong size".into()))?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| BenchError::Chart(e.to_string()))?;
    Ok(png.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_pool_samples_and_recompute_the_statistics() {
        let engine = |ms: &[f64], rss: f64| Engine {
            name: "e".into(),
            precision: "fp32".into(),
            size_mb: None,
            peak_rss_mb: Some(rss),
            rows: vec![stats(
                ms.iter().map(|m| m / 1e3).collect(),
                8,
                "vision".into(),
            )],
        };
        let a = engine(&[10.0, 12.0, 11.0], 100.0);
        assert_eq!(a.rows[0].median_ms, 11.0);
        let pooled = a.pooled(engine(&[30.0, 31.0, 29.0], 120.0));
        let r = &pooled.rows[0];
        assert_eq!(r.samples_ms.len(), 6);
        // Sorted 10 11 12 29 30 31: index round(5·0.5) = 3 → 29; p90 index round(4.5) = 5 → 31.
        assert_eq!(r.median_ms, 29.0);
        assert_eq!(r.p90_ms, 31.0);
        assert!((r.per_s - 8.0 / 0.029).abs() < 1e-9);
        assert_eq!(pooled.peak_rss_mb, Some(120.0));
    }

    fn engine(cases: &[&str]) -> Engine {
        Engine {
            name: "e".into(),
            precision: "fp32".into(),
            size_mb: None,
            peak_rss_mb: None,
            rows: cases
                .iter()
                .map(|c| stats(vec![0.01], 1, c.to_string()))
                .collect(),
        }
    }

    fn report(engines: Vec<Engine>) -> Report {
        Report {
            command: "cmd".into(),
            cpus: 2,
            engines,
            image: None,
            interleaved_steps: Vec::new(),
            notes: Vec::new(),
            rounds: 1,
            threads: 2,
        }
    }

    #[test]
    fn interleaved_steps_are_compared_pair_by_pair() {
        // The machine slows down 3× half-way: the medians are 10 ms and 5 ms whichever half they
        // come from, but every pair says 2×.
        let step = |name: &str, ms: &[f64]| InterleavedStep {
            engine: name.into(),
            precision: "fp32".into(),
            samples_ms: ms.to_vec(),
        };
        let fp32 = step("fp32", &[10.0, 10.0, 10.0, 30.0, 30.0]);
        let int4 = step("int4", &[5.0, 5.0, 5.0, 15.0, 15.0]);
        assert_eq!(
            paired_speedup(&fp32.samples_ms, &int4.samples_ms),
            Some(2.0)
        );
        assert_eq!(paired_speedup(&[], &[]), None);
        let mut r = report(vec![engine(&[STEP_CASE])]);
        r.interleaved_steps = vec![fp32, int4];
        let md = markdown(&r);
        assert!(md.contains("5 turns"), "{md}");
        assert!(md.contains("| × fp32 (median of paired ratios) |"), "{md}");
        assert!(
            md.contains("| fp32 | fp32 | 10.0 / 30.0 | **1.00×** |"),
            "{md}"
        );
        assert!(
            md.contains("| int4 | fp32 | 5.0 / 15.0 | **2.00×** |"),
            "{md}"
        );
        // Without interleaved steps, no such table.
        assert!(!markdown(&report(vec![engine(&[STEP_CASE])])).contains("interleaved"));
    }

    #[test]
    fn the_footer_describes_only_the_cases_in_the_table() {
        let caption = markdown(&report(vec![engine(&["vision 384² b1", CAPTION_CASE])]));
        assert!(caption.contains(
            "Vision rows at each package's own image size; captions from the image file"
        ));
        assert!(!caption.contains("retrieval"), "{caption}");
        let retrieval = markdown(&report(vec![engine(&[TEXT_CASE, RETRIEVAL_CASE])]));
        assert!(
            retrieval.contains("reranks the top 16 with ITM"),
            "{retrieval}"
        );
        assert!(!retrieval.contains("captions"), "{retrieval}");
    }
}
