//! `blip-onnx`: convert BLIP checkpoints to ONNX model packages and run them.
//!
//! The whole command line lives in this library so that one body serves the native binary
//! (`src/main.rs`) and the Python package's `blip-onnx` console script (the same subcommands,
//! the same exit codes).

mod batch;
mod eval;
mod hub;
mod inspect;
mod sidecar;
mod tasks;
mod validate;

use std::path::PathBuf;

use anyhow::{Context, Result};
use blip_convert::{ConvertOptions, ExternalData};
use blip_package::Head;
use clap::{Args, Parser, Subcommand, ValueEnum};

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

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    /// Dynamic INT8 (default policy: the encoders).
    Int8,
    /// Weight-only INT4, MatMulNBits (default policy: the decoder).
    Int4,
    /// FP16 weights and activations for GPU targets (default policy: every graph).
    Fp16,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WeightTypeArg {
    /// Signed int8 weights (fastest on x86 with VNNI).
    Qint8,
    /// Unsigned weights around zero point 128.
    Quint8,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a BLIP checkpoint (Hugging Face folder, or salesforce/BLIP .pth) into a model package.
    ///
    /// The package is a folder with blip.json (manifest), tokenizer.json and one ONNX graph per role.
    /// It is written to a temporary folder and renamed into place only when complete.
    Convert {
        /// Hugging Face folder (config.json + model.safetensors / pytorch_model.bin), a .pth file, or
        /// a hub model id ORG/NAME[@REVISION] (downloaded and converted once into $HF_HOME/blip-onnx).
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
    /// Caption images (caption package): beam 3, 5-20 tokens, prompt \"a picture of \" by default, as BLIP's COCO evaluation.
    Caption {
        #[command(flatten)]
        common: tasks::Common,
        #[command(flatten)]
        decoding: tasks::DecodingFlags,
        /// Image files (PNG, JPEG, WebP, GIF, BMP), or folders of them (recursively).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// With --format parquet: the shard to write (written to a temporary name, then renamed).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also write a sidecar next to each image: photo.txt (the caption, one line), photo.json
        /// (caption, model, decoding options) or photo.xmp (XMP, caption as dc:description).
        /// An existing sidecar is an error unless --skip-existing or --overwrite.
        #[arg(long, value_enum, conflicts_with = "output")]
        write: Option<sidecar::Kind>,
        /// Leave existing sidecars and do not caption their images (resume a run).
        #[arg(long, requires = "write", conflicts_with = "overwrite")]
        skip_existing: bool,
        /// Replace existing sidecars.
        #[arg(long, requires = "write")]
        overwrite: bool,
    },
    /// ITC embeddings (projected, L2-normalised) of images or texts (retrieval package).
    Embed {
        #[command(flatten)]
        common: tasks::Common,
        #[arg(long = "image", num_args = 1..)]
        images: Vec<PathBuf>,
        #[arg(long = "text", num_args = 1..)]
        texts: Vec<String>,
    },
    /// Zero-shot tags (retrieval package): each label scored by the ITC similarity of the image to
    /// "a photo of {label}"; one JSON line per image, tags by score (ties by label).
    Tag {
        #[command(flatten)]
        common: tasks::Common,
        /// Labels, one per line (blank lines ignored).
        #[arg(long)]
        labels: PathBuf,
        /// Keep the K best labels [default: 5].
        #[arg(long, conflicts_with = "threshold")]
        top_k: Option<usize>,
        /// Keep the labels scoring at least T (a cosine, -1 to 1).
        #[arg(long, allow_hyphen_values = true)]
        threshold: Option<f32>,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Image-text matching: ITM match probability (and ITC similarity) of an image with each text.
    Itm {
        #[command(flatten)]
        common: tasks::Common,
        image: PathBuf,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Answer questions about an image (VQA package): generated, or ranked over an answer list.
    Vqa {
        #[command(flatten)]
        common: tasks::Common,
        image: PathBuf,
        #[arg(required = true)]
        questions: Vec<String>,
        /// Rank these answers (one per line) instead of generating, as LAVIS's VQAv2 evaluation.
        #[arg(long)]
        answers: Option<PathBuf>,
        /// Answers kept after the first-token ranking (LAVIS: 128).
        #[arg(short, long, default_value_t = blip_runtime::defaults::VQA_RANK_K)]
        k: usize,
        /// Generation: mask the question padding in cross-attention (BLIP and transformers do not,
        /// so batched answers can depend on the other questions' lengths).
        #[arg(long)]
        mask_question_padding: bool,
    },
    /// Embed every image under DIR into an index (unchanged files are reused on re-runs), build
    /// one from the embedding shards of `python -m blip_onnx.ray` (--from-parquet), or export one
    /// (`index export INDEX --parquet OUT`).
    #[command(args_conflicts_with_subcommands = true)]
    Index {
        #[command(subcommand)]
        action: Option<IndexAction>,
        // Two optional groups, not one nesting the other: clap leaves a group that flattens
        // another empty, so it would never be present.
        #[command(flatten)]
        common: Option<tasks::Common>,
        #[command(flatten)]
        build: Option<IndexBuild>,
    },
    /// Write a quantized copy of a package: dynamic INT8 (standard ops), weight-only INT4 (MatMulNBits) or FP16.
    ///
    /// Default policies: INT8 for the encoders (vision, text, ITM, question encoder, cross K/V) — plain
    /// INT8 of BLIP's text decoder is known to lose accuracy — and INT4 for the decoder, whose per-step
    /// cost is reading weights. Chain the two for the recommended mixed package. Files get the
    /// `_quantized` / `_q4` suffix.
    Quantize {
        package: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Where the package will run: native (ONNX Runtime: CLI, server, Python, node, ORT mobile);
        /// web (onnxruntime-web's wasm: INT8 on every graph, QUInt8 weights); webgpu (FP16). Sets
        /// the defaults of the flags below and the runtimes the manifest records.
        #[arg(long, default_value = "native")]
        target: blip_quantize::Target,
        /// [default: int8; fp16 for --target webgpu]
        #[arg(long, value_enum)]
        precision: Option<PrecisionArg>,
        /// default (int8: encoders, int4: decoder; --target web: all) | encoders | decoder | all |
        /// comma-separated roles
        #[arg(long, default_value = "default")]
        policy: String,
        /// INT4 block size along K (16, 32, 64, 128, ...); 128 is the usual group size of
        /// weight-only INT4.
        #[arg(long, default_value_t = blip_quantize::DEFAULT_INT4_BLOCK_SIZE)]
        block_size: usize,
        /// INT4 accuracy level: 4 multiplies in int8 (fastest on CPU, native only), 0 in float
        /// [default: 4; 0 for --target web/webgpu]
        #[arg(long)]
        accuracy_level: Option<i64>,
        /// 7-bit weights, for CPUs without VNNI.
        #[arg(long)]
        reduce_range: bool,
        /// INT8 weight type [default: qint8; quint8 for --target web]
        #[arg(long, value_enum)]
        weight_type: Option<WeightTypeArg>,
        /// INT4 blocks with a zero point (min/max) instead of symmetric around 8.
        #[arg(long)]
        asymmetric: bool,
        /// Leave the word-embedding tables float.
        #[arg(long)]
        keep_embeddings: bool,
        /// FP16: op types computed in FP32 (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = blip_quantize::DEFAULT_KEEP_FP32.iter().map(|s| s.to_string()))]
        keep_fp32: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Write ONNX Runtime's fused graphs (fused MatMul + scale, bias-GELU, skip-layer-norm, INT8 MatMul fusions) as a new package.
    ///
    /// The default package stays standard-ops only and portable; this one loads pre-fused in ORT.
    Optimize {
        package: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Quality gates: parity vs a PyTorch reference bundle, agreement with another package, batch
    /// 1..8 consistency, edge inputs, RSS over a long run; exit 4 when a gate fails.
    Validate(validate::ValidateArgs),
    /// Static deployment checklist of a package: each item pass/fail with its reason; exit 4 on a failure.
    ///
    /// Graphs for the head, tokenizer ids vs the manifest, per graph: checksum, opset/IR, no
    /// training-only ops, I/O names, dtypes and dynamic axes vs the manifest, external data, loading in ORT.
    Check {
        package: PathBuf,
        /// Skip loading the graphs in ONNX Runtime.
        #[arg(long)]
        no_ort: bool,
        /// Also report whether each graph runs on these runtimes, with reasons (op coverage,
        /// size limits, external data, where numbers differ): ort, node, web, webgpu, openvino,
        /// tract, ort-mobile (comma-separated or repeated).
        #[arg(long, value_delimiter = ',')]
        target: Vec<blip_package::Runtime>,
        #[arg(long, value_enum, default_value = "text")]
        format: tasks::Format,
    },
    /// Task quality on a COCO-style dataset: BLEU-4 / CIDEr-D, retrieval R@k with and without ITM
    /// rerank, VQAv2 accuracy; JSON + Markdown.
    Eval(eval::EvalArgs),
    /// The benchmark table side by side in one run: per package vision b1/b8, text encoder, decoder
    /// step, full caption; median/p90, throughput, peak RSS, size; JSON + Markdown + PNG.
    Bench(blip_bench::BenchArgs),
    /// Runtime latencies on real-size packages as JSON (used by the side-by-side benchmark).
    BenchRuntime {
        /// Caption package.
        caption: PathBuf,
        /// Retrieval package (adds the rerank row).
        #[arg(long)]
        retrieval: Option<PathBuf>,
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Package open time in fresh processes (ready to caption): each run starts this binary anew;
    /// medians as JSON, and as Markdown with --out.
    BenchOpen {
        /// Package folders, measured interleaved.
        #[arg(required = true)]
        packages: Vec<PathBuf>,
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Write OUT.json and OUT.md.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Open the one package once in this process and print the milliseconds (what each run does).
        #[arg(long, hide = true)]
        child: bool,
    },
    /// Serve every loaded package over HTTP (caption, embed, ITM, VQA, search; metrics, OpenAPI, demo page).
    ///
    /// Images of concurrent requests are batched into one vision-encoder run; beyond the admission
    /// bounds the server answers 429 at once; SIGTERM / ctrl-c drain within --shutdown-grace.
    Serve(hub::ServeCmd),
    /// Answer an OpenAI Batch API file (JSONL of /v1/chat/completions requests) offline, with the
    /// server's own route in process: one result line per input line, in order; bad lines get
    /// error lines (exit 3), the rest are answered.
    Batch(batch::BatchCmd),
    /// Search an index with a text: ITC top-k, then ITM rerank of the best candidates.
    Search {
        #[command(flatten)]
        common: tasks::Common,
        index: PathBuf,
        query: String,
        /// Results to print.
        #[arg(short, long, default_value_t = blip_runtime::defaults::SEARCH_K)]
        k: usize,
        /// Candidates reranked with ITM (score = ITM logit + ITC similarity); 0 for ITC only.
        #[arg(long, default_value_t = blip_runtime::defaults::RERANK)]
        rerank: usize,
    },
    /// Write a static site that runs packages in the browser (onnxruntime-web): the demo page
    /// (caption, VQA, search over a gallery the page indexes itself), the packages, blip-onnx's
    /// wasm + JS module and onnxruntime-web's files. Needs the assets scripts/build-web.sh builds.
    ExportWeb {
        /// Package folders (caption, retrieval and/or VQA).
        #[arg(required = true)]
        packages: Vec<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
        /// Images for the page's gallery (the folder's images, sorted by name).
        #[arg(long)]
        gallery: Option<PathBuf>,
        /// A web/ folder where scripts/build-web.sh ran (default: the copy built into this binary;
        /// a release build or BLIP_ONNX_EMBED_WEB=1 made after scripts/build-web.sh carries one).
        #[arg(long, env = "BLIP_ONNX_WEB_DIR")]
        web_dir: Option<PathBuf>,
        #[arg(long)]
        force: bool,
    },
    /// Serve a site folder on 127.0.0.1 with COOP/COEP headers (cross-origin isolation, so the
    /// page gets wasm threads). Prints the URL, runs until Ctrl-C.
    ServeStatic {
        site: PathBuf,
        /// 0 picks a free port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

/// `index DIR` / `index --from-parquet`: what the index is built from, and where it goes.
#[derive(Args)]
struct IndexBuild {
    #[arg(required_unless_present = "from_parquet")]
    dir: Option<PathBuf>,
    /// Parquet shards (files, or folders of *.parquet) with id, path and embedding columns,
    /// made with the same package; no image is encoded. Reranked searches encode candidates
    /// from their paths (the shards hold no rerank states). Consecutive rows with one id are one
    /// entry's vectors; a `metadata` column (JSON text) is kept.
    #[arg(long, num_args = 1.., conflicts_with = "dir")]
    from_parquet: Vec<PathBuf>,
    #[arg(short, long)]
    output: PathBuf,
    /// What ITM rerank keeps per image: f16 vision states, int8 ones (a scale per token row;
    /// half the disk), or none (rerank encodes the candidates' image files at query time).
    #[arg(long, default_value = "f16")]
    rerank_states: blip_index::RerankStates,
}

#[derive(Subcommand)]
enum IndexAction {
    /// Write an index's entries to a Parquet file: id, path, metadata (JSON text), vector (which
    /// of the entry's vectors) and embedding, a row per vector — what vector databases import,
    /// and what `index --from-parquet` reads back.
    Export {
        index: PathBuf,
        /// The Parquet file to write (a temporary file renamed into place when complete).
        #[arg(long)]
        parquet: PathBuf,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
    },
}

/// Parse `args` (the first item is the program name) and run the command: the exit code the
/// native binary returns. Clap's own exits (`--help`, `--version`, a usage error) keep their codes.
pub fn main_with_args<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Prints to stdout for --help/--version, to stderr for usage errors.
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    // A second call in one process (the Python door) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            1
        }
    }
}

/// The error and its causes on one line, each cause once (library errors often already quote
/// their source), with staging paths shown as the output files they were becoming.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.contains(&text) {
            // The cause already quotes the context (e.g. a path): keep the fuller one.
            text = part;
        } else if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    blip_package::output_paths_in(&text)
}

fn run(cli: Cli) -> Result<u8> {
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
            // A hub id (not an existing path): with the converter's defaults the package cache
            // serves it; other options convert the downloaded checkpoint folder.
            let checkpoint = match hub::id_of(&checkpoint) {
                Some(id)
                    if image_size.is_none()
                        && config.is_none()
                        && tokenizer.is_none()
                        && head.is_none()
                        && matches!(external_data, ExternalArg::Auto) =>
                {
                    return hub::convert(&id, &output, force, json);
                }
                Some(id) => hub::snapshot(&id)?,
                None => checkpoint,
            };
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
            let report = blip_convert::convert(&checkpoint, &output, &opts).with_context(|| {
                format!(
                    "converting {} to {}",
                    checkpoint.display(),
                    output.display()
                )
            })?;
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
            Ok(0)
        }
        Command::Inspect {
            package,
            run,
            threads,
        } => inspect::inspect(&package, run, threads).map(|_| 0),
        Command::Caption {
            common,
            decoding,
            images,
            output,
            write,
            skip_existing,
            overwrite,
        } => {
            let write = write.map(|kind| sidecar::WriteSpec {
                kind,
                existing: if skip_existing {
                    sidecar::Existing::Skip
                } else if overwrite {
                    sidecar::Existing::Overwrite
                } else {
                    sidecar::Existing::Refuse
                },
            });
            tasks::caption(&common, &decoding, &images, output.as_deref(), write)
        }
        Command::Embed {
            common,
            images,
            texts,
        } => {
            if images.is_empty() && texts.is_empty() {
                anyhow::bail!("give --image FILE... or --text TEXT...");
            }
            tasks::embed(&common, &images, &texts)
        }
        Command::Tag {
            common,
            labels,
            top_k,
            threshold,
            images,
        } => tasks::tag(&common, &images, &labels, top_k, threshold),
        Command::Itm {
            common,
            image,
            texts,
        } => tasks::itm(&common, &image, &texts),
        Command::Vqa {
            common,
            image,
            questions,
            answers,
            k,
            mask_question_padding,
        } => tasks::vqa(
            &common,
            &image,
            &questions,
            answers.as_deref(),
            k,
            mask_question_padding,
        ),
        Command::Quantize {
            package,
            output,
            target,
            precision,
            policy,
            block_size,
            accuracy_level,
            reduce_range,
            weight_type,
            asymmetric,
            keep_embeddings,
            keep_fp32,
            force,
        } => {
            let scheme = match precision {
                None => target.default_scheme(),
                Some(PrecisionArg::Int8) => blip_quantize::Scheme::Int8,
                Some(PrecisionArg::Int4) => target.int4(block_size, accuracy_level),
                Some(PrecisionArg::Fp16) => blip_quantize::Scheme::Fp16,
            };
            let policy = blip_quantize::Policy::parse(&policy, &scheme, target);
            let opts = blip_quantize::QuantizeOptions {
                scheme,
                policy,
                reduce_range,
                weight_type: match weight_type {
                    None => target.default_weight_type(),
                    Some(WeightTypeArg::Qint8) => blip_quantize::WeightType::QInt8,
                    Some(WeightTypeArg::Quint8) => blip_quantize::WeightType::QUInt8,
                },
                int4_symmetric: !asymmetric,
                embeddings: !keep_embeddings,
                keep_fp32,
                target,
                force,
            };
            let stats =
                blip_quantize::quantize_package(&package, &output, &opts).with_context(|| {
                    format!("quantizing {} to {}", package.display(), output.display())
                })?;
            println!("quantized package written to {}", output.display());
            for s in &stats {
                println!(
                    "  {:<22} {:>4} MatMuls {:>4} other {:>12} -> {:>12} bytes",
                    s.role, s.quantized_matmuls, s.other_rewrites, s.bytes_before, s.bytes_after
                );
            }
            Ok(0)
        }
        Command::Optimize {
            package,
            output,
            force,
        } => {
            let reports =
                blip_optimize::optimize_package(&package, &output, force).with_context(|| {
                    format!("optimizing {} to {}", package.display(), output.display())
                })?;
            println!("optimized package written to {}", output.display());
            for r in &reports {
                let fused: Vec<String> = r
                    .fused_ops
                    .iter()
                    .map(|(op, n)| format!("{op} x{n}"))
                    .collect();
                println!(
                    "  {:<22} {:>5} -> {:>5} nodes  {}",
                    r.role,
                    r.nodes_before,
                    r.nodes_after,
                    fused.join(", ")
                );
            }
            Ok(0)
        }
        Command::Validate(args) => validate::run(args),
        Command::Check {
            package,
            no_ort,
            target,
            format,
        } => {
            let mut report = blip_validate::check(&package, !no_ort);
            if !target.is_empty() {
                report
                    .items
                    .extend(blip_validate::check_targets(&package, &target).items);
            }
            if format == tasks::Format::Text {
                for i in &report.items {
                    println!(
                        "{} {:<44} {}",
                        if i.pass { "pass" } else { "FAIL" },
                        i.item,
                        i.reason
                    );
                }
                let failed = report.failures().count();
                println!("{} passed, {failed} failed", report.items.len() - failed);
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(if report.passed() { 0 } else { 4 })
        }
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => Ok(blip_bench::run(args)?),
        Command::BenchRuntime {
            caption,
            retrieval,
            image,
            reps,
            threads,
        } => Ok(blip_bench::runtime::run(
            &caption,
            retrieval.as_deref(),
            &image,
            reps,
            threads,
        )?),
        Command::BenchOpen {
            packages,
            runs,
            threads,
            out,
            child,
        } => {
            if child {
                let [package] = packages.as_slice() else {
                    anyhow::bail!("bench-open --child opens exactly one package");
                };
                Ok(blip_bench::open::child(package, threads)?)
            } else {
                let pkgs: Vec<&std::path::Path> = packages.iter().map(PathBuf::as_path).collect();
                Ok(blip_bench::open::run(&pkgs, runs, threads, out.as_deref())?)
            }
        }
        Command::Index {
            action,
            common,
            build,
        } => match (action, common.zip(build)) {
            (
                Some(IndexAction::Export {
                    index,
                    parquet,
                    quiet,
                }),
                _,
            ) => tasks::index_export(&index, &parquet, quiet),
            (None, Some((common, b))) => match b.dir {
                Some(dir) => tasks::index(&common, &dir, &b.output, b.rerank_states),
                None => tasks::index_from_parquet(&common, &b.from_parquet, &b.output),
            },
            (None, None) => {
                anyhow::bail!("index: give a folder of images, --from-parquet SHARDS, or `export`")
            }
        },
        Command::Search {
            common,
            index,
            query,
            k,
            rerank,
        } => tasks::search(&common, &index, &query, k, rerank),
        Command::Batch(cmd) => batch::run(cmd),
        Command::Serve(cmd) => {
            let args = hub::serve_args(cmd)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(blip_server::serve(args))?;
            Ok(0)
        }
        Command::ExportWeb {
            packages,
            output,
            gallery,
            web_dir,
            force,
        } => {
            let opts = blip_site::ExportOptions {
                packages,
                gallery,
                web: web_dir
                    .map(blip_site::WebAssets::Dir)
                    .or_else(blip_site::WebAssets::embedded)
                    .context(
                        "this blip-onnx carries no browser assets: pass --web-dir to a web/ folder \
                         where scripts/build-web.sh ran, or build the binary after it \
                         (scripts/build-web.sh && cargo install --path crates/blip-onnx-cli)",
                    )?,
                force,
            };
            let site = blip_site::export(&opts, &output)
                .with_context(|| format!("exporting the site to {}", output.display()))?;
            for p in &site.packages {
                println!("{} ({}): {} bytes", p.url, p.head, p.bytes);
            }
            println!(
                "site written to {} ({} gallery images); serve it with `blip-onnx serve-static {}`",
                output.display(),
                site.gallery.len(),
                output.display()
            );
            Ok(0)
        }
        Command::ServeStatic { site, port } => {
            blip_site::serve_static(&site, port, |addr| {
                use std::io::Write;
                println!("serving {} at http://{addr}/", site.display());
                let _ = std::io::stdout().flush();
            })
            .with_context(|| format!("serving {}", site.display()))?;
            Ok(0)
        }
    }
}
