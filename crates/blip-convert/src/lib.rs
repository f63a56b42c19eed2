//! BLIP checkpoint → blip-onnx model package, written natively node by node (no torch, no tracing).
//!
//! [`convert`] reads the checkpoint ([`blip_checkpoint`]), builds one graph per role ([`graphs`]),
//! streams each to disk ([`onnx_writer`]) inside a temporary folder next to the output, writes the
//! tokenizer and the manifest, and only then renames the folder into place: a failed conversion
//! leaves nothing behind.

mod blip2;
mod convert_blip2;
mod graphs;
mod net;
mod pos_embed;
mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blip_checkpoint::{
    Blip2Config, BlipConfig, Checkpoint, CheckpointError, VisionConfig, head_from_tensor_names,
    infer_config_from_shapes,
};
use blip_package::{
    Family, Graph, GraphEntry, Head, Manifest, ModelDims, Preprocess, Producer, Source, TensorSpec,
};
use onnx_writer::{Dim, ModelInfo, WriteError};

pub use onnx_writer::ExternalData;
pub use pos_embed::interpolate as interpolate_pos_embed;

/// Opset of the standard-ops graphs (LayerNormalization needs 17).
pub const OPSET: i64 = 17;
/// IR version matching opset 17.
pub const IR_VERSION: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(
        "cannot tell which BLIP head {path} is (no architectures in config.json, and the tensor names match none); pass --head caption|retrieval|vqa"
    )]
    UnknownHead { path: PathBuf },
    #[error("--head {asked} does not match the checkpoint, which has no {missing} tensors")]
    HeadMismatch { asked: String, missing: String },
    #[error("output {path} already exists; pass --force to replace it")]
    OutputExists { path: PathBuf },
    #[error("cannot write the package next to {path}: {source}")]
    Unwritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--image-size {size} is not a multiple of the patch size {patch}")]
    ImageSize { size: usize, patch: usize },
    #[error(
        "no tokenizer found (looked for tokenizer.json and vocab.txt in {looked}); pass --tokenizer PATH"
    )]
    NoTokenizer { looked: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error(transparent)]
    Package(#[from] blip_package::PackageError),
    #[error("writing graph: {0}")]
    Write(#[from] WriteError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, ConvertError>;

#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Image size of the package; position embeddings are interpolated when it differs from the checkpoint's.
    pub image_size: Option<usize>,
    /// A Hugging Face config.json to use instead of the checkpoint's (or of shape inference for `.pth`).
    pub config: Option<PathBuf>,
    /// tokenizer.json / vocab.txt, or a folder holding one.
    pub tokenizer: Option<PathBuf>,
    pub head: Option<Head>,
    pub force: bool,
    pub external_data: ExternalData,
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub output: PathBuf,
    pub head: Head,
    pub graphs: Vec<GraphReport>,
    pub hash_seconds: f64,
    pub total_seconds: f64,
}

#[derive(Debug, Clone)]
pub struct GraphReport {
    pub role: String,
    pub bytes: u64,
    pub nodes: usize,
    pub seconds: f64,
}

fn required_prefix(head: Head) -> &'static str {
    match head {
        Head::Caption => "text_decoder.",
        Head::Retrieval => "itm_head.",
        Head::Vqa => "text_encoder.",
    }
}

fn spec(s: &graphs::IoSpec) -> TensorSpec {
    TensorSpec {
        name: s.name.clone(),
        dtype: s.dtype.name().to_string(),
        dims: s
            .dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(v) => serde_json::json!(v),
                Dim::Sym(n) => serde_json::json!(n),
            })
            .collect(),
    }
}

/// Loads the configuration: `--config`, the folder's config.json, or (for `.pth`) inferred from shapes.
/// Reads a Hugging Face `config.json` as [`convert`] will, so a door that downloads can refuse a
/// checkpoint it cannot convert (another model, BLIP-2, InstructBLIP, a bad config) before it
/// fetches the weights.
pub fn check_config(path: &Path) -> Result<()> {
    if Blip2Config::claims(path)? {
        convert_blip2::check_config(path)?;
    } else {
        BlipConfig::from_file(path)?;
    }
    Ok(())
}

fn load_config(ck: &Checkpoint, opts: &ConvertOptions) -> Result<(BlipConfig, Head)> {
    let mut cfg = match (&opts.config, &ck.config_file) {
        (Some(p), _) | (None, Some(p)) => BlipConfig::from_file(p)?,
        (None, None) => {
            let head = opts
                .head
                .or_else(|| head_from_tensor_names(ck.names()))
                .ok_or(ConvertError::UnknownHead {
                    path: ck.path.clone(),
                })?;
            infer_config_from_shapes(&ck.shapes(), head).map_err(|message| {
                ConvertError::Config {
                    path: ck.path.clone(),
                    message,
                }
            })?
        }
    };
    let head = opts
        .head
        .or(cfg.head)
        .or_else(|| head_from_tensor_names(ck.names()))
        .ok_or(ConvertError::UnknownHead {
            path: ck.path.clone(),
        })?;
    let prefix = required_prefix(head);
    if !ck.names().any(|n| n.starts_with(prefix)) {
        return Err(ConvertError::HeadMismatch {
            asked: head.name().into(),
            missing: prefix.trim_end_matches('.').into(),
        });
    }
    cfg.head = Some(head);
    Ok((cfg, head))
}

/// Converts `checkpoint` into a package folder at `output`.
pub fn convert(checkpoint: &Path, output: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let start = Instant::now();
    if output.exists() && !opts.force {
        return Err(ConvertError::OutputExists {
            path: output.to_path_buf(),
        });
    }
    let ck = Checkpoint::open(checkpoint)?;
    if let Some(path) = opts.config.as_ref().or(ck.config_file.as_ref())
        && Blip2Config::claims(path)?
    {
        return convert_blip2::convert(&ck, checkpoint, path, output, opts, start);
    }
    let (mut cfg, head) = load_config(&ck, opts)?;
    let (trained_size, pos_embed) = position_embedding(&ck, &mut cfg.vision, opts.image_size)?;
    let checkpoint_dir = if checkpoint.is_dir() {
        Some(checkpoint)
    } else {
        None
    };
    let tok = tokenizer::resolve(
        opts.tokenizer.as_deref(),
        checkpoint_dir,
        cfg.text.vocab_size,
        Family::Blip,
    )?;

    staged(output, start, |tmp| {
        write_package(
            &ck,
            &cfg,
            head,
            pos_embed,
            &tok,
            tmp,
            opts,
            trained_size,
            start,
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn write_package(
    ck: &Checkpoint,
    cfg: &BlipConfig,
    head: Head,
    mut pos_embed: Option<Vec<f32>>,
    tok: &tokenizer::PackageTokenizer,
    dir: &Path,
    opts: &ConvertOptions,
    trained_size: usize,
    start: Instant,
) -> Result<ConvertReport> {
    let t_hash = Instant::now();
    let source_sha = blip_package::sha256_files(&ck.files)?;
    let hash_seconds = t_hash.elapsed().as_secs_f64();
    save_tokenizer(tok, dir)?;

    let info = ModelInfo {
        ir_version: IR_VERSION,
        opsets: vec![(String::new(), OPSET)],
        producer_name: "blip-onnx".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc: format!(
            "BLIP {} converted by blip-onnx from {}",
            head.name(),
            ck.format.name()
        ),
        metadata: vec![
            ("source_sha256".into(), source_sha.clone()),
            ("head".into(), head.name().into()),
        ],
    };
    let mut entries = BTreeMap::new();
    let mut reports = Vec::new();
    for &graph in head.graphs() {
        let t0 = Instant::now();
        let role = graph.name();
        let net = net::Net::new(role, ck);
        let built = match graph {
            Graph::VisionEncoder => graphs::vision_encoder(net, cfg, head, pos_embed.take())?,
            Graph::TextEncoder => graphs::text_encoder(net, cfg)?,
            Graph::Itm => graphs::itm(net, cfg)?,
            Graph::VqaQuestionEncoder => graphs::vqa_question_encoder(net, cfg)?,
            Graph::CrossKv => graphs::cross_kv(net, cfg, head)?,
            Graph::Decoder => graphs::decoder(net, cfg, ck)?,
        };
        let (entry, report) = save_graph(built, role, &info, dir, opts.external_data, t0)?;
        entries.insert(role.to_string(), entry);
        reports.push(report);
    }

    let v = &cfg.vision;
    let t = &cfg.text;
    let grid = v.image_size / v.patch_size;
    let manifest = Manifest {
        format: blip_package::FORMAT.into(),
        format_version: blip_package::FORMAT_VERSION,
        producer: producer(),
        source: source(ck, source_sha, trained_size, v.image_size),
        family: blip_package::Family::Blip,
        head,
        model: ModelDims {
            vision_hidden_size: v.hidden_size,
            vision_layers: v.num_hidden_layers,
            vision_heads: v.num_attention_heads,
            patch_size: v.patch_size,
            image_size: v.image_size,
            image_tokens: grid * grid + 1,
            text_hidden_size: t.hidden_size,
            text_layers: t.num_hidden_layers,
            text_heads: t.num_attention_heads,
            vocab_size: t.vocab_size,
            max_position_embeddings: t.max_position_embeddings,
            embed_dim: (head == Head::Retrieval).then_some(cfg.image_text_hidden_size),
            query_tokens: None,
        },
        preprocess: Preprocess::blip(v.image_size),
        tokens: tok.tokens(),
        opset: OPSET,
        precision: blip_package::Precision::Fp32,
        tokenizer: blip_package::TOKENIZER_FILE.into(),
        // Standard ops only: every runtime runs the converted graphs (docs/runtimes.md).
        runtimes: blip_package::Runtime::ALL.to_vec(),
        graphs: entries,
    };
    if t.bos_token_id != tok.bos || t.sep_token_id != tok.sep || t.pad_token_id != tok.pad {
        tracing::warn!(
            config_bos = t.bos_token_id,
            tokenizer_bos = tok.bos,
            "config token ids differ from the tokenizer's; the manifest uses the tokenizer's"
        );
    }
    manifest.save(dir)?;
    Ok(ConvertReport {
        output: dir.to_path_buf(),
        head,
        graphs: reports,
        hash_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes one built graph as `{role}.onnx` (and its external data) in `dir`, returning its
/// manifest entry and its report.
fn save_graph(
    built: graphs::BuiltGraph<'_>,
    role: &str,
    info: &ModelInfo,
    dir: &Path,
    external_data: ExternalData,
    t0: Instant,
) -> Result<(GraphEntry, GraphReport)> {
    let file = format!("{role}.onnx");
    let path = dir.join(&file);
    let nodes = built.net.g.node_count();
    let stats = onnx_writer::save_model(built.net.g, info, &path, external_data)?;
    let bytes = stats.onnx_bytes + stats.data_bytes;
    tracing::info!(role, nodes, bytes, "wrote graph");
    let entry = GraphEntry {
        file,
        data_file: stats.data_file.clone(),
        // The checksum covers the graph and its external data (GraphEntry::files).
        sha256: blip_package::sha256_files(
            &std::iter::once(path.clone())
                .chain(stats.data_file.as_ref().map(|d| dir.join(d)))
                .collect::<Vec<_>>(),
        )?,
        bytes,
        precision: blip_package::Precision::Fp32,
        quantization: None,
        optimization: None,
        inputs: built.inputs.iter().map(spec).collect(),
        outputs: built.outputs.iter().map(spec).collect(),
    };
    let report = GraphReport {
        role: role.to_string(),
        bytes,
        nodes,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((entry, report))
}

/// The package's image size and position embedding: the checkpoint's (`None`), or interpolated to
/// `requested` when it differs. Sets `vision.image_size` to the package's; returns the size the
/// checkpoint was trained at.
fn position_embedding(
    ck: &Checkpoint,
    vision: &mut VisionConfig,
    requested: Option<usize>,
) -> Result<(usize, Option<Vec<f32>>)> {
    let key = "vision_model.embeddings.position_embedding";
    let trained_size = {
        let rows = ck.shape(key).and_then(|s| s.get(1).copied()).unwrap_or(0);
        let grid = ((rows.max(1) - 1) as f64).sqrt().round() as usize;
        if grid * grid + 1 == rows {
            grid * vision.patch_size
        } else {
            vision.image_size
        }
    };
    vision.image_size = trained_size;
    let target_size = requested.unwrap_or(trained_size);
    if target_size == 0 || !target_size.is_multiple_of(vision.patch_size) {
        return Err(ConvertError::ImageSize {
            size: target_size,
            patch: vision.patch_size,
        });
    }
    if target_size == trained_size {
        return Ok((trained_size, None));
    }
    let d = vision.hidden_size;
    let g_in = trained_size / vision.patch_size;
    ck.expect_shape(key, &[1, g_in * g_in + 1, d])?;
    let values = ck.f32(key)?;
    vision.image_size = target_size;
    let interpolated = pos_embed::interpolate(&values, d, g_in, target_size / vision.patch_size);
    Ok((trained_size, Some(interpolated)))
}

/// Runs `write` on a hidden sibling folder of `output`, renamed into place when it succeeds (a
/// failed conversion leaves nothing behind); the report names `output` and the whole time since
/// `start`.
fn staged(
    output: &Path,
    start: Instant,
    write: impl FnOnce(&Path) -> Result<ConvertReport>,
) -> Result<ConvertReport> {
    let report = blip_package::write_staged(output, write).map_err(|e| match e {
        blip_package::StagedError::Create(source) => ConvertError::Unwritable {
            path: output.to_path_buf(),
            source,
        },
        other => match other.into_io(output) {
            Ok(e) => e,
            Err(source) => ConvertError::Io {
                path: output.to_path_buf(),
                source,
            },
        },
    })?;
    Ok(ConvertReport {
        output: output.to_path_buf(),
        total_seconds: start.elapsed().as_secs_f64(),
        ..report
    })
}

fn save_tokenizer(tok: &tokenizer::PackageTokenizer, dir: &Path) -> Result<()> {
    let path = dir.join(blip_package::TOKENIZER_FILE);
    tok.tokenizer
        .save(&path, false)
        .map_err(|e| ConvertError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(())
}

fn producer() -> Producer {
    Producer {
        name: "blip-onnx".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The manifest's record of the checkpoint: its name, format, files and their sha256, and the
/// size its position embeddings were interpolated from when the package's differs.
fn source(ck: &Checkpoint, sha256: String, trained_size: usize, image_size: usize) -> Source {
    Source {
        name: ck
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        format: ck.format.name().into(),
        sha256,
        files: ck
            .files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect(),
        interpolated_from_image_size: (trained_size != image_size).then_some(trained_size),
    }
}
