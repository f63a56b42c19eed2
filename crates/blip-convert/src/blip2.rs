//! The BLIP-2 graphs, mirroring transformers' `modeling_blip_2.py` (eval mode) as read in
//! docs/blip2-reference.md §3, §4 and §9. Retrieval (`Blip2ForImageTextRetrieval`) uses BLIP's
//! retrieval roles and I/O names, with BLIP-2's shapes:
//! * `vision_encoder`: pixels → the ViT's states (`last_hidden_state`, what ITM cross-attends to)
//!   and one normalised ITC embedding per learned query (`image_embeds [B, Q, E]`);
//! * `text_encoder`: ids and mask → normalised `text_embeds [B, E]` (the Q-Former without queries);
//! * `itm`: ids, mask and image states → `itm_logits [B, 2]` (the head's mean over the queries).
//!
//! An image–text ITC score is the best of the Q query similarities (docs/blip2-reference.md §9).

use blip_checkpoint::{Blip2Config, QFormerConfig};
use blip_package::io::{
    ATTENTION_MASK, ENCODER_HIDDEN_STATES, IMAGE_EMBEDS, INPUT_IDS, ITM_LOGITS, LAST_HIDDEN_STATE,
    PIXEL_VALUES, TEXT_EMBEDS,
};
use onnx_writer::{DataType, attr_int, attr_ints};

use crate::Result;
use crate::graphs::{
    BuiltGraph, declare_inputs, finish, fixed, image_states_input, io_spec, sym, text_inputs,
    vision_tokens, vision_tower,
};
use crate::net::{Net, Scale};

const QFORMER: &str = "qformer";

/// Where a Q-Former pass's rows come from, which decides each layer's cross-attention and FFN.
#[derive(Clone, Copy)]
enum Rows {
    /// The learned queries alone: cross-attention where the layer has it, the query FFN.
    Queries,
    /// Text alone: no cross-attention, the text FFN.
    Text,
    /// `[queries; text]`: the first `n` rows as `Queries`, the rest as `Text`.
    QueriesThenText(usize),
}

/// BLIP-2's vision tower is BLIP's ViT with a query and a value bias but no key bias. Checkpoints
/// store either `qkv.bias` (transformers) or `q_bias` + `v_bias` (LAVIS and older transformers);
/// the latter is assembled into the `qkv.bias` the shared tower reads (`[q_bias, 0, v_bias]`).
fn assemble_qkv_biases(net: &mut Net<'_>, cfg: &Blip2Config) -> Result<()> {
    let d = cfg.vision.hidden_size;
    for i in 0..cfg.vision.num_hidden_layers {
        let a = format!("vision_model.encoder.layers.{i}.self_attn");
        let (q_key, v_key) = (format!("{a}.q_bias"), format!("{a}.v_bias"));
        if !net.has(&q_key) {
            continue;
        }
        let mut bias = net.tensor(&q_key, &[d])?;
        bias.extend(std::iter::repeat_n(0.0, d));
        bias.extend(net.tensor(&v_key, &[d])?);
        net.owned_param(&format!("{a}.qkv.bias"), &[3 * d], bias);
    }
    Ok(())
}

/// The learned queries `[1, Q, D]` repeated for each row of `like` (any tensor with a batch axis).
fn query_tokens(net: &mut Net<'_>, cfg: &Blip2Config, like: &str) -> Result<String> {
    let (q, d) = (cfg.num_query_tokens, cfg.qformer.hidden_size);
    let tokens = net.param("query_tokens", &[1, q, d])?;
    let batch = net.g.op(
        "Shape",
        "query_tokens",
        &[like],
        vec![attr_int("start", 0), attr_int("end", 1)],
    );
    let rest = net.ci64(&[q as i64, d as i64]);
    let shape = net.g.op(
        "Concat",
        "query_tokens",
        &[&batch, &rest],
        vec![attr_int("axis", 0)],
    );
    Ok(net.op("Expand", "query_tokens", &[&tokens, &shape]))
}

/// `Blip2TextEmbeddings` without queries: word + position embeddings (positions 0..L).
fn text_embeddings(net: &mut Net<'_>, q: &QFormerConfig) -> Result<String> {
    let d = q.hidden_size;
    let words = net.param("embeddings.word_embeddings.weight", &[q.vocab_size, d])?;
    let w = net.g.op(
        "Gather",
        "embeddings.word_embeddings",
        &[&words, INPUT_IDS],
        vec![attr_int("axis", 0)],
    );
    let table = net.param(
        "embeddings.position_embeddings.weight",
        &[q.max_position_embeddings, d],
    )?;
    let len = net.g.op(
        "Shape",
        "embeddings.position_embeddings",
        &[INPUT_IDS],
        vec![attr_int("start", 1), attr_int("end", 2)],
    );
    let zero = net.ci64(&[0]);
    let pos = net.op(
        "Slice",
        "embeddings.position_embeddings",
        &[&table, &zero, &len, &zero],
    );
    Ok(net.op("Add", "embeddings", &[&w, &pos]))
}

/// `x[:, from..to]` along the sequence axis (`to = i64::MAX`: to the end).
fn rows(net: &mut Net<'_>, name: &str, x: &str, from: i64, to: i64) -> String {
    let (start, end, axis) = (net.ci64(&[from]), net.ci64(&[to]), net.ci64(&[1]));
    net.op("Slice", name, &[x, &start, &end, &axis])
}

/// Multi-head attention of `x` to `states` (itself for self-attention), then
/// `Blip2QFormerSelfOutput`: `LayerNorm(dense(ctx) + x)`.
fn attention_block(
    net: &mut Net<'_>,
    prefix: &str,
    x: &str,
    states: (&str, usize),
    mask: Option<&str>,
    q: &QFormerConfig,
) -> Result<String> {
    let (d, heads) = (q.hidden_size, q.num_attention_heads);
    let hd = d / heads;
    let a = format!("{prefix}.attention");
    let query = net.linear(&format!("{a}.query"), x, d, d)?;
    let key = net.linear(&format!("{a}.key"), states.0, states.1, d)?;
    let value = net.linear(&format!("{a}.value"), states.0, states.1, d)?;
    let qh = net.split_heads(&format!("{a}.query"), &query, heads, hd);
    let kh = net.split_heads(&format!("{a}.key"), &key, heads, hd);
    let vh = net.split_heads(&format!("{a}.value"), &value, heads, hd);
    let k_t = net.transpose_last2(&format!("{a}.key"), &kh);
    let ctx = net.attention(&a, &qh, &k_t, &vh, mask, Scale::Mul((hd as f32).powf(-0.5)));
    let merged = net.merge_heads(&a, &ctx, d);
    net.dense_residual_norm(
        &format!("{prefix}.output"),
        &merged,
        x,
        (d, d),
        q.layer_norm_eps,
    )
}

/// A Q-Former FFN: `intermediate{suffix}` → GELU → `output{suffix}` with residual and LayerNorm.
fn feed_forward(
    net: &mut Net<'_>,
    layer: &str,
    suffix: &str,
    x: &str,
    q: &QFormerConfig,
) -> Result<String> {
    let up = format!("{layer}.intermediate{suffix}.dense");
    let h = net.linear(&up, x, q.hidden_size, q.intermediate_size)?;
    let g = net.gelu(&format!("{layer}.intermediate{suffix}.act"), &h);
    let down = format!("{layer}.output{suffix}");
    net.dense_residual_norm(
        &down,
        &g,
        x,
        (q.intermediate_size, q.hidden_size),
        q.layer_norm_eps,
    )
}

/// `Blip2QFormerLayer.forward` for `rows`.
fn qformer_layer(
    net: &mut Net<'_>,
    cfg: &Blip2Config,
    i: usize,
    h: &str,
    mask: Option<&str>,
    rows_are: Rows,
    image: Option<&str>,
) -> Result<String> {
    let q = &cfg.qformer;
    let l = format!("{QFORMER}.encoder.layer.{i}");
    let attended = attention_block(
        net,
        &format!("{l}.attention"),
        h,
        (h, q.hidden_size),
        mask,
        q,
    )?;
    let query_rows = |net: &mut Net<'_>, x: &str| -> Result<String> {
        let x = match (q.has_cross_attention(i), image) {
            (true, Some(image)) => attention_block(
                net,
                &format!("{l}.crossattention"),
                x,
                (image, cfg.vision.hidden_size),
                None,
                q,
            )?,
            _ => x.to_string(),
        };
        feed_forward(net, &l, "_query", &x, q)
    };
    match rows_are {
        Rows::Queries => query_rows(net, &attended),
        Rows::Text => feed_forward(net, &l, "", &attended, q),
        Rows::QueriesThenText(n) => {
            let head = rows(net, &format!("{l}.queries"), &attended, 0, n as i64);
            let tail = rows(net, &format!("{l}.text"), &attended, n as i64, i64::MAX);
            let head = query_rows(net, &head)?;
            let tail = feed_forward(net, &l, "", &tail, q)?;
            Ok(net
                .g
                .op("Concat", &l, &[&head, &tail], vec![attr_int("axis", 1)]))
        }
    }
}

/// `Blip2QFormerModel.forward`: LayerNorm of the embeddings, then every layer.
fn qformer(
    net: &mut Net<'_>,
    cfg: &Blip2Config,
    embeddings: &str,
    mask: Option<&str>,
    rows_are: Rows,
    image: Option<&str>,
) -> Result<String> {
    let q = &cfg.qformer;
    let ln = format!("{QFORMER}.layernorm");
    let mut h = net.layer_norm(&ln, embeddings, q.hidden_size, q.layer_norm_eps)?;
    for i in 0..q.num_hidden_layers {
        h = qformer_layer(net, cfg, i, &h, mask, rows_are, image)?;
    }
    Ok(h)
}

/// Retrieval: pixels → ViT states and the per-query ITC embeddings `[B, Q, E]`. `pos_embed`
/// replaces the checkpoint's position embedding when it was interpolated to a new size.
pub(crate) fn vision_encoder<'a>(
    mut net: Net<'a>,
    cfg: &Blip2Config,
    pos_embed: Option<Vec<f32>>,
) -> Result<BuiltGraph<'a>> {
    assemble_qkv_biases(&mut net, cfg)?;
    let (inputs, states) = vision_tower(&mut net, &cfg.vision, pos_embed)?;
    let queries = query_tokens(&mut net, cfg, PIXEL_VALUES)?;
    let h = qformer(&mut net, cfg, &queries, None, Rows::Queries, Some(&states))?;
    let e = cfg.image_text_hidden_size;
    let proj = net.linear("vision_projection", &h, cfg.qformer.hidden_size, e)?;
    let emb = net.l2_normalize("vision_projection.normalize", &proj);
    let (n, q) = (vision_tokens(&cfg.vision), cfg.num_query_tokens);
    let outputs = vec![
        (
            io_spec(
                LAST_HIDDEN_STATE,
                DataType::F32,
                &[sym("batch"), fixed(n), fixed(cfg.vision.hidden_size)],
            ),
            states,
        ),
        (
            io_spec(
                IMAGE_EMBEDS,
                DataType::F32,
                &[sym("batch"), fixed(q), fixed(e)],
            ),
            emb,
        ),
    ];
    Ok(finish(net, inputs, outputs))
}

/// Retrieval: the Q-Former over text alone (no queries, no image) → normalised `text_embeds`
/// from the first (`[CLS]`) row.
pub(crate) fn text_encoder<'a>(mut net: Net<'a>, cfg: &Blip2Config) -> Result<BuiltGraph<'a>> {
    let inputs = text_inputs();
    declare_inputs(&mut net, &inputs);
    let emb = text_embeddings(&mut net, &cfg.qformer)?;
    let mask = net.additive_mask("qformer.attention_mask", ATTENTION_MASK);
    let h = qformer(&mut net, cfg, &emb, Some(&mask), Rows::Text, None)?;
    let cls = net.first_token("text_projection.cls", &h);
    let e = cfg.image_text_hidden_size;
    let proj = net.linear("text_projection", &cls, cfg.qformer.hidden_size, e)?;
    let out = net.l2_normalize("text_projection.normalize", &proj);
    Ok(finish(
        net,
        inputs,
        vec![(
            io_spec(TEXT_EMBEDS, DataType::F32, &[sym("batch"), fixed(e)]),
            out,
        )],
    ))
}

/// Retrieval: `[queries; text]` through the Q-Former, the queries cross-attending to the image →
/// the ITM head averaged over the query rows, `itm_logits [B, 2]` (column 1: match).
pub(crate) fn itm<'a>(mut net: Net<'a>, cfg: &Blip2Config) -> Result<BuiltGraph<'a>> {
    let mut inputs = text_inputs();
    inputs.push(image_states_input(&cfg.vision));
    declare_inputs(&mut net, &inputs);
    let q = cfg.num_query_tokens;
    let queries = query_tokens(&mut net, cfg, INPUT_IDS)?;
    let text = text_embeddings(&mut net, &cfg.qformer)?;
    let joined = net.g.op(
        "Concat",
        "embeddings",
        &[&queries, &text],
        vec![attr_int("axis", 1)],
    );
    // The queries are never padding: the mask is ones for them, then the text's.
    let text_mask = ATTENTION_MASK;
    let batch = net.g.op(
        "Shape",
        "qformer.attention_mask",
        &[text_mask],
        vec![attr_int("start", 0), attr_int("end", 1)],
    );
    let width = net.ci64(&[q as i64]);
    let shape = net.g.op(
        "Concat",
        "qformer.attention_mask",
        &[&batch, &width],
        vec![attr_int("axis", 0)],
    );
    let one = net.ci64(&[1]);
    let ones = net.op("Expand", "qformer.attention_mask", &[&one, &shape]);
    let full = net.g.op(
        "Concat",
        "qformer.attention_mask",
        &[&ones, text_mask],
        vec![attr_int("axis", 1)],
    );
    let mask = net.additive_mask("qformer.attention_mask", &full);
    let h = qformer(
        &mut net,
        cfg,
        &joined,
        Some(&mask),
        Rows::QueriesThenText(q),
        Some(ENCODER_HIDDEN_STATES),
    )?;
    let query_rows = rows(&mut net, "itm_head.queries", &h, 0, q as i64);
    let per_query = net.linear("itm_head", &query_rows, cfg.qformer.hidden_size, 2)?;
    let logits = net.g.op(
        "ReduceMean",
        "itm_head.mean",
        &[&per_query],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
    );
    Ok(finish(
        net,
        inputs,
        vec![(
            io_spec(ITM_LOGITS, DataType::F32, &[sym("batch"), fixed(2)]),
            logits,
        )],
    ))
}
