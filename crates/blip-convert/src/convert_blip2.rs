//! A BLIP-2 checkpoint → a package of family `blip-2`. Retrieval (`Blip2ForImageTextRetrieval`) is
//! converted; captioning and VQA (`Blip2ForConditionalGeneration`, OPT and Flan-T5 language models)
//! are refused by name until their graphs exist.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use blip_checkpoint::{
    BLIP2_GENERATION_NOT_CONVERTED, Blip2Architecture, Blip2Config, Checkpoint, CheckpointError,
};
use blip_package::{Family, Graph, Head, Manifest, ModelDims, Preprocess};
use onnx_writer::ModelInfo;

use crate::{
    ConvertError, ConvertOptions, ConvertReport, IR_VERSION, OPSET, Result, blip2, net, save_graph,
    staged, tokenizer,
};

/// Reads a BLIP-2 config.json as [`convert`] will: what it cannot convert is refused by name.
pub(crate) fn check_config(path: &Path) -> Result<Blip2Config> {
    let cfg = Blip2Config::from_file(path)?;
    if cfg.architecture == Blip2Architecture::ConditionalGeneration {
        return Err(CheckpointError::UnsupportedModel {
            path: path.to_path_buf(),
            model: format!(
                "BLIP-2 ({}, {} language model)",
                cfg.architecture.class_name(),
                cfg.language_model
            ),
            reason: BLIP2_GENERATION_NOT_CONVERTED.into(),
        }
        .into());
    }
    Ok(cfg)
}

pub(crate) fn convert(
    ck: &Checkpoint,
    checkpoint: &Path,
    config: &Path,
    output: &Path,
    opts: &ConvertOptions,
    start: Instant,
) -> Result<ConvertReport> {
    let mut cfg = check_config(config)?;
    if let Some(asked) = opts.head.filter(|h| *h != Head::Retrieval) {
        return Err(ConvertError::HeadMismatch {
            asked: asked.name().into(),
            missing: crate::required_prefix(asked).trim_end_matches('.').into(),
        });
    }
    let (trained_size, pos_embed) =
        crate::position_embedding(ck, &mut cfg.vision, opts.image_size)?;
    let tok = tokenizer::resolve(
        opts.tokenizer.as_deref(),
        checkpoint.is_dir().then_some(checkpoint),
        cfg.qformer.vocab_size,
        Family::Blip2,
    )?;
    staged(output, start, |dir| {
        write_package(ck, &cfg, pos_embed, &tok, dir, opts, trained_size, start)
    })
}

#[allow(clippy::too_many_arguments)]
fn write_package(
    ck: &Checkpoint,
    cfg: &Blip2Config,
    mut pos_embed: Option<Vec<f32>>,
    tok: &tokenizer::PackageTokenizer,
    dir: &Path,
    opts: &ConvertOptions,
    trained_size: usize,
    start: Instant,
) -> Result<ConvertReport> {
    let head = Head::Retrieval;
    let t_hash = Instant::now();
    let source_sha = blip_package::sha256_files(&ck.files)?;
    let hash_seconds = t_hash.elapsed().as_secs_f64();
    crate::save_tokenizer(tok, dir)?;
    let info = ModelInfo {
        ir_version: IR_VERSION,
        opsets: vec![(String::new(), OPSET)],
        producer_name: "blip-onnx".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc: format!(
            "BLIP-2 {head} converted by blip-onnx from {}",
            ck.format.name()
        ),
        metadata: vec![
            ("source_sha256".into(), source_sha.clone()),
            ("family".into(), Family::Blip2.name().into()),
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
            Graph::VisionEncoder => blip2::vision_encoder(net, cfg, pos_embed.take())?,
            Graph::TextEncoder => blip2::text_encoder(net, cfg)?,
            Graph::Itm => blip2::itm(net, cfg)?,
            other => unreachable!("{other:?} is not a retrieval graph"),
        };
        let (entry, report) = save_graph(built, role, &info, dir, opts.external_data, t0)?;
        entries.insert(role.to_string(), entry);
        reports.push(report);
    }
    let (v, q) = (&cfg.vision, &cfg.qformer);
    let manifest = Manifest {
        format: blip_package::FORMAT.into(),
        format_version: blip_package::FORMAT_VERSION,
        producer: crate::producer(),
        source: crate::source(ck, source_sha, trained_size, v.image_size),
        family: Family::Blip2,
        head,
        // The text side of BLIP-2 retrieval is the Q-Former.
        model: ModelDims {
            vision_hidden_size: v.hidden_size,
            vision_layers: v.num_hidden_layers,
            vision_heads: v.num_attention_heads,
            patch_size: v.patch_size,
            image_size: v.image_size,
            image_tokens: crate::graphs::vision_tokens(v),
            text_hidden_size: q.hidden_size,
            text_layers: q.num_hidden_layers,
            text_heads: q.num_attention_heads,
            vocab_size: q.vocab_size,
            max_position_embeddings: q.max_position_embeddings,
            embed_dim: Some(cfg.image_text_hidden_size),
            query_tokens: Some(cfg.num_query_tokens),
        },
        preprocess: Preprocess::blip(v.image_size),
        tokens: tok.tokens(),
        opset: OPSET,
        precision: blip_package::Precision::Fp32,
        tokenizer: blip_package::TOKENIZER_FILE.into(),
        runtimes: blip_package::Runtime::ALL.to_vec(),
        graphs: entries,
    };
    manifest.save(dir)?;
    Ok(ConvertReport {
        output: dir.to_path_buf(),
        head,
        graphs: reports,
        hash_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}
