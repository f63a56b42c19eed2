//! The BLIP graphs, one per role, mirroring transformers' `modeling_blip.py` / `modeling_blip_text.py`
//! (eval mode: no dropout). Node names start with the checkpoint key of the module they compute.

use blip_checkpoint::{BlipConfig, TextConfig, VisionConfig};
use blip_package::Head;
use blip_package::io::{
    self, ATTENTION_MASK, CROSS_GROUPS, CROSS_SLOTS, ENCODER_ATTENTION_MASK, ENCODER_HIDDEN_STATES,
    IMAGE_EMBEDS, INPUT_IDS, ITM_LOGITS, LAST_HIDDEN_STATE, LOGITS, PIXEL_VALUES, POSITION_IDS,
    TEXT_EMBEDS,
};
use onnx_writer::{DataType, Dim, attr_int, attr_ints};

use crate::Result;
use crate::net::{Net, Scale};

/// One graph input or output, as declared in the graph and listed in the manifest.
#[derive(Debug, Clone)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<Dim>,
}

pub(crate) fn io_spec(name: &str, dtype: DataType, dims: &[Dim]) -> IoSpec {
    IoSpec {
        name: name.to_string(),
        dtype,
        dims: dims.to_vec(),
    }
}

pub(crate) fn sym(s: &str) -> Dim {
    Dim::sym(s)
}

pub(crate) fn fixed(v: usize) -> Dim {
    Dim::Fixed(v as i64)
}

pub(crate) struct BuiltGraph<'a> {
    pub net: Net<'a>,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

pub(crate) fn declare_inputs(net: &mut Net<'_>, inputs: &[IoSpec]) {
    for i in inputs {
        net.input(&i.name, i.dtype, &i.dims);
    }
}

pub(crate) fn finish<'a>(
    mut net: Net<'a>,
    inputs: Vec<IoSpec>,
    outputs: Vec<(IoSpec, String)>,
) -> BuiltGraph<'a> {
    let mut specs = Vec::new();
    for (spec, value) in outputs {
        net.g.output(&spec.name, &value, spec.dtype, &spec.dims);
        specs.push(spec);
    }
    BuiltGraph {
        net,
        inputs,
        outputs: specs,
    }
}

/// Checkpoint prefix of the BERT text model that a head's encoder / decoder lives under (module
/// names, not graph roles: node names start with them).
const TEXT_ENCODER_MODULE: &str = "text_encoder";
const TEXT_DECODER_MODULE: &str = "text_decoder.bert";

// ---------------------------------------------------------------------------------------------- vision

/// `pixel_values [B,3,S,S]` → `last_hidden_state [B,N+1,D]` (+ `image_embeds [B,E]` for retrieval).
/// `pos_embed` replaces the checkpoint's position embedding when it was interpolated to a new size.
pub fn vision_encoder<'a>(
    mut net: Net<'a>,
    cfg: &BlipConfig,
    head: Head,
    pos_embed: Option<Vec<f32>>,
) -> Result<BuiltGraph<'a>> {
    let (inputs, last) = vision_tower(&mut net, &cfg.vision, pos_embed)?;
    let v = &cfg.vision;
    let (d, tokens) = (v.hidden_size, vision_tokens(v));
    let mut outputs = vec![(
        io_spec(
            LAST_HIDDEN_STATE,
            DataType::F32,
            &[sym("batch"), fixed(tokens), fixed(d)],
        ),
        last.clone(),
    )];
    if head == Head::Retrieval {
        let cls_state = net.first_token("vision_proj.cls", &last);
        let proj = net.linear("vision_proj", &cls_state, d, cfg.image_text_hidden_size)?;
        let emb = net.l2_normalize("vision_proj.normalize", &proj);
        outputs.push((
            io_spec(
                IMAGE_EMBEDS,
                DataType::F32,
                &[sym("batch"), fixed(cfg.image_text_hidden_size)],
            ),
            emb,
        ));
    }
    Ok(finish(net, inputs, outputs))
}

/// Image tokens of the vision tower: the patch grid and the class token.
pub(crate) fn vision_tokens(v: &VisionConfig) -> usize {
    let grid = v.image_size / v.patch_size;
    grid * grid + 1
}

/// The ViT shared by BLIP and BLIP-2 (`vision_model.*`, pre-norm layers, fused qkv):
/// declares `pixel_values [B,3,S,S]` and returns it with the state after `post_layernorm`
/// `[B,N+1,D]`. `pos_embed` replaces the checkpoint's position embedding when it was interpolated.
pub(crate) fn vision_tower(
    net: &mut Net<'_>,
    v: &VisionConfig,
    pos_embed: Option<Vec<f32>>,
) -> Result<(Vec<IoSpec>, String)> {
    let (d, s, p) = (v.hidden_size, v.image_size, v.patch_size);
    let tokens = vision_tokens(v);
    let heads = v.num_attention_heads;
    let hd = d / heads;
    let inputs = vec![io_spec(
        PIXEL_VALUES,
        DataType::F32,
        &[sym("batch"), fixed(3), fixed(s), fixed(s)],
    )];
    declare_inputs(net, &inputs);

    let e = "vision_model.embeddings";
    let w = net.param(&format!("{e}.patch_embedding.weight"), &[d, 3, p, p])?;
    let b = net.param(&format!("{e}.patch_embedding.bias"), &[d])?;
    let conv = net.g.op(
        "Conv",
        &format!("{e}.patch_embedding"),
        &[PIXEL_VALUES, &w, &b],
        vec![
            attr_ints("kernel_shape", &[p as i64, p as i64]),
            attr_ints("strides", &[p as i64, p as i64]),
        ],
    );
    let flat_shape = net.ci64(&[0, d as i64, -1]);
    let flat = net.op(
        "Reshape",
        &format!("{e}.patch_embedding"),
        &[&conv, &flat_shape],
    );
    let patches = net.g.op(
        "Transpose",
        &format!("{e}.patch_embedding"),
        &[&flat],
        vec![attr_ints("perm", &[0, 2, 1])],
    );
    let cls = net.param(&format!("{e}.class_embedding"), &[1, 1, d])?;
    let batch = net.g.op(
        "Shape",
        &format!("{e}.class_embedding"),
        &[PIXEL_VALUES],
        vec![attr_int("start", 0), attr_int("end", 1)],
    );
    let rest = net.ci64(&[1, d as i64]);
    let cls_shape = net.g.op(
        "Concat",
        &format!("{e}.class_embedding"),
        &[&batch, &rest],
        vec![attr_int("axis", 0)],
    );
    let cls_b = net.op(
        "Expand",
        &format!("{e}.class_embedding"),
        &[&cls, &cls_shape],
    );
    let joined = net
        .g
        .op("Concat", e, &[&cls_b, &patches], vec![attr_int("axis", 1)]);
    let pos_key = format!("{e}.position_embedding");
    let pos = match pos_embed {
        Some(values) => net.owned_param(&pos_key, &[1, tokens, d], values),
        None => net.param(&pos_key, &[1, tokens, d])?,
    };
    let mut h = net.op("Add", &pos_key, &[&joined, &pos]);

    for i in 0..v.num_hidden_layers {
        let l = format!("vision_model.encoder.layers.{i}");
        let x = net.layer_norm(&format!("{l}.layer_norm1"), &h, d, v.layer_norm_eps)?;
        let a = format!("{l}.self_attn");
        let qkv = net.linear(&format!("{a}.qkv"), &x, d, 3 * d)?;
        let split = net.ci64(&[d as i64, d as i64, d as i64]);
        let parts = net.g.op_n(
            "Split",
            &format!("{a}.qkv"),
            &[&qkv, &split],
            3,
            vec![attr_int("axis", -1)],
        );
        let q = net.split_heads(&format!("{a}.query"), &parts[0], heads, hd);
        let k = net.split_heads(&format!("{a}.key"), &parts[1], heads, hd);
        let vv = net.split_heads(&format!("{a}.value"), &parts[2], heads, hd);
        let k_t = net.transpose_last2(&format!("{a}.key"), &k);
        let ctx = net.attention(&a, &q, &k_t, &vv, None, Scale::Mul((hd as f32).powf(-0.5)));
        let merged = net.merge_heads(&a, &ctx, d);
        let proj = net.linear(&format!("{a}.projection"), &merged, d, d)?;
        let r1 = net.op("Add", &format!("{l}.residual1"), &[&proj, &h]);
        let x2 = net.layer_norm(&format!("{l}.layer_norm2"), &r1, d, v.layer_norm_eps)?;
        let f1 = net.linear(&format!("{l}.mlp.fc1"), &x2, d, v.intermediate_size)?;
        let g = net.gelu(&format!("{l}.mlp.act"), &f1);
        let f2 = net.linear(&format!("{l}.mlp.fc2"), &g, v.intermediate_size, d)?;
        h = net.op("Add", &format!("{l}.residual2"), &[&f2, &r1]);
    }
    let last = net.layer_norm("vision_model.post_layernorm", &h, d, v.layer_norm_eps)?;
    Ok((inputs, last))
}

// ---------------------------------------------------------------------------------------------- text

/// Where a layer's cross-attention keys and values come from.
enum Cross<'s> {
    /// Encoder states `[B, E, Denc]` and their transpose `[B, Denc, E]` (made once for every
    /// layer), attended to with the projections on the text side (encoder graphs, no mask).
    States {
        states: &'s str,
        states_t: String,
        d_enc: usize,
    },
    /// Precomputed per layer (decoder), once per image: `(k [I,H,E,hd], v [I,H,E,hd])`, with an
    /// additive mask `[I,1,1,E]`, read by the rows that `groups` gathers.
    Precomputed {
        kv: Vec<(String, String)>,
        mask: &'s str,
        groups: &'s SharedCross,
    },
}

/// How decoder rows share an image's cross K/V: each image's queries are gathered side by side
/// (`[I, G·S, D]`), attend to its K/V in one product, and are scattered back to their rows.
struct SharedCross {
    /// `cross_groups` flattened: `[I·G]` row indices.
    rows_by_image: String,
    /// `[I, -1, D]`: the grouped queries' shape.
    grouped_shape: String,
    /// `[-1, S, D]`: the slots' shape, one per (image, beam).
    slot_shape: String,
}

/// BERT word + position embeddings and LayerNorm. `positions`: explicit ids, or 0..S when `None`.
fn text_embeddings(
    net: &mut Net<'_>,
    base: &str,
    t: &TextConfig,
    ids: &str,
    positions: Option<&str>,
) -> Result<String> {
    let e = format!("{base}.embeddings");
    let d = t.hidden_size;
    let words = net.param(&format!("{e}.word_embeddings.weight"), &[t.vocab_size, d])?;
    let w = net.g.op(
        "Gather",
        &format!("{e}.word_embeddings"),
        &[&words, ids],
        vec![attr_int("axis", 0)],
    );
    let table = net.param(
        &format!("{e}.position_embeddings.weight"),
        &[t.max_position_embeddings, d],
    )?;
    let pos = match positions {
        Some(p) => net.g.op(
            "Gather",
            &format!("{e}.position_embeddings"),
            &[&table, p],
            vec![attr_int("axis", 0)],
        ),
        None => {
            let len = net.g.op(
                "Shape",
                &format!("{e}.position_embeddings"),
                &[ids],
                vec![attr_int("start", 1), attr_int("end", 2)],
            );
            let zero = net.ci64(&[0]);
            net.op(
                "Slice",
                &format!("{e}.position_embeddings"),
                &[&table, &zero, &len, &zero],
            )
        }
    };
    let sum = net.op("Add", &e, &[&w, &pos]);
    net.layer_norm(&format!("{e}.LayerNorm"), &sum, d, t.layer_norm_eps)
}

/// Output sub-block: dense → + residual → LayerNorm.
fn dense_residual_norm(
    net: &mut Net<'_>,
    prefix: &str,
    x: &str,
    residual: &str,
    d_in: usize,
    t: &TextConfig,
) -> Result<String> {
    net.dense_residual_norm(prefix, x, residual, (d_in, t.hidden_size), t.layer_norm_eps)
}

/// One BERT layer (post-norm): self-attention (with an optional KV cache), optional cross-attention, FFN.
/// Returns the hidden state and, when `past` is given, the layer's present `(key, value)`.
fn bert_layer(
    net: &mut Net<'_>,
    prefix: &str,
    t: &TextConfig,
    h: &str,
    self_mask: &str,
    past: Option<(&str, &str)>,
    cross: Option<(&Cross<'_>, usize)>,
) -> Result<(String, Option<(String, String)>)> {
    let d = t.hidden_size;
    let heads = t.num_attention_heads;
    let hd = d / heads;
    let scale = Scale::Div((hd as f32).sqrt());
    let a = format!("{prefix}.attention.self");
    let parts = net.linear_fused(
        &format!("{a}.qkv"),
        &["query", "key", "value"].map(|p| format!("{a}.{p}")),
        h,
        d,
        d,
    )?;
    let q = net.split_heads(&format!("{a}.query"), &parts[0], heads, hd);
    let mut k = net.split_heads(&format!("{a}.key"), &parts[1], heads, hd);
    let mut v = net.split_heads(&format!("{a}.value"), &parts[2], heads, hd);
    let mut present = None;
    if let Some((pk, pv)) = past {
        k = net.g.op(
            "Concat",
            &format!("{a}.key.cache"),
            &[pk, &k],
            vec![attr_int("axis", 2)],
        );
        v = net.g.op(
            "Concat",
            &format!("{a}.value.cache"),
            &[pv, &v],
            vec![attr_int("axis", 2)],
        );
        present = Some((k.clone(), v.clone()));
    }
    let k_t = net.transpose_last2(&format!("{a}.key"), &k);
    let ctx = net.attention(&a, &q, &k_t, &v, Some(self_mask), scale);
    let merged = net.merge_heads(&a, &ctx, d);
    let mut x = dense_residual_norm(net, &format!("{prefix}.attention.output"), &merged, h, d, t)?;

    if let Some((cross, layer)) = cross {
        let c = format!("{prefix}.crossattention.self");
        let q = net.linear(&format!("{c}.query"), &x, d, d)?;
        let merged = match cross {
            Cross::States {
                states,
                states_t,
                d_enc,
            } => {
                let q = net.split_heads(&format!("{c}.query"), &q, heads, hd);
                let ctx =
                    cross_attention_to_states(net, &c, &q, (states, states_t), *d_enc, t, scale)?;
                net.merge_heads(&c, &ctx, d)
            }
            Cross::Precomputed { kv, mask, groups } => {
                // Each image's query rows side by side, attending to its K/V once, then back to
                // their rows.
                let (k, v) = &kv[layer];
                let q = net.g.op(
                    "Gather",
                    &c,
                    &[&q, &groups.rows_by_image],
                    vec![attr_int("axis", 0)],
                );
                let q = net.op("Reshape", &c, &[&q, &groups.grouped_shape]);
                let ctx = net.attention_key_major(&c, &q, k, v, Some(mask), scale, heads, hd);
                let merged = net.merge_heads(&c, &ctx, d);
                let slots = net.op("Reshape", &c, &[&merged, &groups.slot_shape]);
                net.g.op(
                    "Gather",
                    &c,
                    &[&slots, CROSS_SLOTS],
                    vec![attr_int("axis", 0)],
                )
            }
        };
        x = dense_residual_norm(
            net,
            &format!("{prefix}.crossattention.output"),
            &merged,
            &x,
            d,
            t,
        )?;
    }

    let inter = net.linear(
        &format!("{prefix}.intermediate.dense"),
        &x,
        d,
        t.intermediate_size,
    )?;
    let act = net.gelu(&format!("{prefix}.intermediate.act"), &inter);
    let out = dense_residual_norm(
        net,
        &format!("{prefix}.output"),
        &act,
        &x,
        t.intermediate_size,
        t,
    )?;
    Ok((out, present))
}

/// Cross-attention of a few text tokens (`q [B,H,L,hd]`) to encoder states (`[B,E,Denc]`), with
/// the key and value projections moved to the text side: `q·(S·Wkᵀ)ᵀ = (q·Wk_h)·Sᵀ` and
/// `P·(S·Wvᵀ + bv) = (P·S)·Wv_hᵀ + bv` (rows of P sum to 1; the key bias adds the same `q·bk` to
/// every score of a query, which softmax ignores). Projecting E = 577 image tokens through Wk and
/// Wv costs `2·E·D·Denc` per layer; this costs `2·L·D·Denc + 2·H·L·E·Denc`, less while `L·H < D`
/// (texts of up to 35 tokens, 12 heads, D = 768): for a 12-token query, the cross-attention of an
/// ITM rerank of 16 base candidates drops from about 131 G to about 27 G multiply-adds. `states`:
/// `S` and `Sᵀ`. Returns the context `[B,H,L,hd]`.
fn cross_attention_to_states(
    net: &mut Net<'_>,
    c: &str,
    q: &str,
    (states, states_t): (&str, &str),
    d_enc: usize,
    t: &TextConfig,
    scale: Scale,
) -> Result<String> {
    let d = t.hidden_size;
    let heads = t.num_attention_heads as i64;
    let hd = (d / t.num_attention_heads) as i64;
    let enc = d_enc as i64;
    // Linear weights as the checkpoint stores them, `[D, Denc]`: per head `[H, hd, Denc]`.
    let per_head = net.ci64(&[heads, hd, enc]);
    let wk = net.param(&format!("{c}.key.weight"), &[d, d_enc])?;
    let wk = net.op("Reshape", &format!("{c}.key"), &[&wk, &per_head]);
    let wv = net.param(&format!("{c}.value.weight"), &[d, d_enc])?;
    let wv = net.op("Reshape", &format!("{c}.value"), &[&wv, &per_head]);
    let wv = net.g.op(
        "Transpose",
        &format!("{c}.value"),
        &[&wv],
        vec![attr_ints("perm", &[0, 2, 1])],
    );
    let bv = net.param(&format!("{c}.value.bias"), &[d])?;
    let bv_shape = net.ci64(&[heads, 1, hd]);
    let bv = net.op("Reshape", &format!("{c}.value"), &[&bv, &bv_shape]);
    // Queries in the encoder's space, all heads' rows together: [B, H·L, Denc].
    let qk = net.op("MatMul", &format!("{c}.key"), &[q, &wk]);
    let rows_shape = net.ci64(&[0, -1, enc]);
    let qk = net.op("Reshape", &format!("{c}.key"), &[&qk, &rows_shape]);
    // softmax(qk·Sᵀ · scale)·S: the attention's weighted sum of the states themselves.
    let mixed = net.attention(c, &qk, states_t, states, None, scale);
    let heads_shape = net.ci64(&[0, heads, -1, enc]);
    let mixed = net.op("Reshape", c, &[&mixed, &heads_shape]);
    let ctx = net.op("MatMul", &format!("{c}.value"), &[&mixed, &wv]);
    Ok(net.op("Add", &format!("{c}.value"), &[&ctx, &bv]))
}

/// A bidirectional text encoder over `input_ids`/`attention_mask`, optionally attending to image states.
fn text_encoder_body(
    net: &mut Net<'_>,
    t: &TextConfig,
    image_states: Option<(&str, usize)>,
) -> Result<String> {
    let mut h = text_embeddings(net, TEXT_ENCODER_MODULE, t, INPUT_IDS, None)?;
    let mask = net.additive_mask(
        &format!("{TEXT_ENCODER_MODULE}.attention_mask"),
        ATTENTION_MASK,
    );
    let cross = image_states.map(|(states, d_enc)| Cross::States {
        states,
        states_t: net.g.op(
            "Transpose",
            &format!("{TEXT_ENCODER_MODULE}.crossattention.states"),
            &[states],
            vec![attr_ints("perm", &[0, 2, 1])],
        ),
        d_enc,
    });
    for i in 0..t.num_hidden_layers {
        let prefix = format!("{TEXT_ENCODER_MODULE}.encoder.layer.{i}");
        h = bert_layer(
            net,
            &prefix,
            t,
            &h,
            &mask,
            None,
            cross.as_ref().map(|c| (c, i)),
        )?
        .0;
    }
    Ok(h)
}

pub(crate) fn text_inputs() -> Vec<IoSpec> {
    vec![
        io_spec(INPUT_IDS, DataType::I64, &[sym("batch"), sym("sequence")]),
        io_spec(
            ATTENTION_MASK,
            DataType::I64,
            &[sym("batch"), sym("sequence")],
        ),
    ]
}

/// Retrieval: unimodal text encoder → `last_hidden_state` and normalised ITC `text_embeds`.
pub fn text_encoder<'a>(mut net: Net<'a>, cfg: &BlipConfig) -> Result<BuiltGraph<'a>> {
    let t = &cfg.text;
    let inputs = text_inputs();
    declare_inputs(&mut net, &inputs);
    let h = text_encoder_body(&mut net, t, None)?;
    let cls = net.first_token("text_proj.cls", &h);
    let proj = net.linear("text_proj", &cls, t.hidden_size, cfg.image_text_hidden_size)?;
    let emb = net.l2_normalize("text_proj.normalize", &proj);
    let outputs = vec![
        (
            io_spec(
                TEXT_EMBEDS,
                DataType::F32,
                &[sym("batch"), fixed(cfg.image_text_hidden_size)],
            ),
            emb,
        ),
        (
            io_spec(
                LAST_HIDDEN_STATE,
                DataType::F32,
                &[sym("batch"), sym("sequence"), fixed(t.hidden_size)],
            ),
            h,
        ),
    ];
    Ok(finish(net, inputs, outputs))
}

/// The vision tower's states as a graph input (`encoder_hidden_states [batch, tokens, D]`), for
/// the graphs that cross-attend to an image (BLIP's and BLIP-2's ITM, BLIP's VQA encoder).
pub(crate) fn image_states_input(v: &VisionConfig) -> IoSpec {
    io_spec(
        ENCODER_HIDDEN_STATES,
        DataType::F32,
        &[sym("batch"), sym("encoder_sequence"), fixed(v.hidden_size)],
    )
}

/// The image-grounded text encoder shared by ITM and VQA: ids, mask and image states in, hidden states out.
fn grounded_encoder(net: &mut Net<'_>, cfg: &BlipConfig) -> Result<(Vec<IoSpec>, String)> {
    let mut inputs = text_inputs();
    inputs.push(image_states_input(&cfg.vision));
    declare_inputs(net, &inputs);
    let h = text_encoder_body(
        net,
        &cfg.text,
        Some((ENCODER_HIDDEN_STATES, cfg.vision.hidden_size)),
    )?;
    Ok((inputs, h))
}

/// Retrieval: image-grounded text encoder (first token [ENC]) → ITM logits `[B, 2]`.
pub fn itm<'a>(mut net: Net<'a>, cfg: &BlipConfig) -> Result<BuiltGraph<'a>> {
    let (inputs, h) = grounded_encoder(&mut net, cfg)?;
    let cls = net.first_token("itm_head.cls", &h);
    let logits = net.linear("itm_head", &cls, cfg.text.hidden_size, 2)?;
    Ok(finish(
        net,
        inputs,
        vec![(
            io_spec(ITM_LOGITS, DataType::F32, &[sym("batch"), fixed(2)]),
            logits,
        )],
    ))
}

/// VQA: question (first token [ENC]) encoded with cross-attention to the image → question states.
pub fn vqa_question_encoder<'a>(mut net: Net<'a>, cfg: &BlipConfig) -> Result<BuiltGraph<'a>> {
    let (inputs, h) = grounded_encoder(&mut net, cfg)?;
    let out = io_spec(
        LAST_HIDDEN_STATE,
        DataType::F32,
        &[sym("batch"), sym("sequence"), fixed(cfg.text.hidden_size)],
    );
    Ok(finish(net, inputs, vec![(out, h)]))
}

/// Width of the states the decoder cross-attends to: image states (caption) or question states (VQA).
fn decoder_encoder_width(cfg: &BlipConfig, head: Head) -> usize {
    match head {
        Head::Vqa => cfg.text.hidden_size,
        _ => cfg.vision.hidden_size,
    }
}

/// Every decoder layer's cross-attention K and V (`[B,H,E,hd]`, as transformers lays them out),
/// computed once per image / question.
pub fn cross_kv<'a>(mut net: Net<'a>, cfg: &BlipConfig, head: Head) -> Result<BuiltGraph<'a>> {
    let t = &cfg.text;
    let d_enc = decoder_encoder_width(cfg, head);
    let heads = t.num_attention_heads;
    let hd = t.hidden_size / heads;
    let inputs = vec![io_spec(
        ENCODER_HIDDEN_STATES,
        DataType::F32,
        &[sym("batch"), sym("encoder_sequence"), fixed(d_enc)],
    )];
    declare_inputs(&mut net, &inputs);
    // Every layer's key and value projection of the same states in one GEMM (`n_layers·2·D` wide):
    // one pass over the states and one large, efficient matrix product per image.
    let layers = t.num_hidden_layers;
    let c = |i: usize| format!("{TEXT_DECODER_MODULE}.encoder.layer.{i}.crossattention.self");
    let prefixes: Vec<String> = (0..layers)
        .flat_map(|i| [format!("{}.key", c(i)), format!("{}.value", c(i))])
        .collect();
    let parts = net.linear_fused(
        &format!("{TEXT_DECODER_MODULE}.encoder.crossattention.key_value"),
        &prefixes,
        ENCODER_HIDDEN_STATES,
        d_enc,
        t.hidden_size,
    )?;
    let mut outputs = Vec::new();
    for i in 0..layers {
        let k = net.split_heads(&format!("{}.key", c(i)), &parts[2 * i], heads, hd);
        let v = net.split_heads(&format!("{}.value", c(i)), &parts[2 * i + 1], heads, hd);
        let kdims = [
            sym("batch"),
            fixed(heads),
            sym("encoder_sequence"),
            fixed(hd),
        ];
        let vdims = kdims.clone();
        outputs.push((io_spec(&io::cross_key(i), DataType::F32, &kdims), k));
        outputs.push((io_spec(&io::cross_value(i), DataType::F32, &vdims), v));
    }
    Ok(finish(net, inputs, outputs))
}

/// One decoding step (or a whole prompt) with a self-attention KV cache; cross K/V come from `cross_kv`.
pub fn decoder<'a>(
    mut net: Net<'a>,
    cfg: &BlipConfig,
    ck: &blip_checkpoint::Checkpoint,
) -> Result<BuiltGraph<'a>> {
    let t = &cfg.text;
    let layers = t.num_hidden_layers;
    let heads = t.num_attention_heads;
    let hd = t.hidden_size / heads;
    let d = t.hidden_size;
    let mut inputs = vec![
        io_spec(INPUT_IDS, DataType::I64, &[sym("batch"), sym("sequence")]),
        io_spec(
            POSITION_IDS,
            DataType::I64,
            &[sym("batch"), sym("sequence")],
        ),
        io_spec(
            ATTENTION_MASK,
            DataType::I64,
            &[sym("batch"), sym("total_sequence")],
        ),
        io_spec(
            ENCODER_ATTENTION_MASK,
            DataType::I64,
            &[sym("images"), sym("encoder_sequence")],
        ),
        io_spec(CROSS_GROUPS, DataType::I64, &[sym("images"), sym("group")]),
        io_spec(CROSS_SLOTS, DataType::I64, &[sym("batch")]),
    ];
    for i in 0..layers {
        let dims = [sym("batch"), fixed(heads), sym("past_sequence"), fixed(hd)];
        inputs.push(io_spec(&io::past_key(i), DataType::F32, &dims));
        inputs.push(io_spec(&io::past_value(i), DataType::F32, &dims));
    }
    for i in 0..layers {
        inputs.push(io_spec(
            &io::cross_key(i),
            DataType::F32,
            &[
                sym("images"),
                fixed(heads),
                sym("encoder_sequence"),
                fixed(hd),
            ],
        ));
        inputs.push(io_spec(
            &io::cross_value(i),
            DataType::F32,
            &[
                sym("images"),
                fixed(heads),
                sym("encoder_sequence"),
                fixed(hd),
            ],
        ));
    }
    declare_inputs(&mut net, &inputs);

    // Causal mask over past + current positions, combined with the padding mask:
    // query t (absolute position P+t) may see key j iff j <= P+t and attention_mask[j] == 1.
    let m = "text_decoder.causal_mask";
    let past_key0 = io::past_key(0);
    let past_len = net.g.op(
        "Shape",
        m,
        &[&past_key0],
        vec![attr_int("start", 2), attr_int("end", 3)],
    );
    let cur_len = net.g.op(
        "Shape",
        m,
        &[INPUT_IDS],
        vec![attr_int("start", 1), attr_int("end", 2)],
    );
    let total_len = net.op("Add", m, &[&past_len, &cur_len]);
    let zero_axis = net.ci64(&[0]);
    let p = net.op("Squeeze", m, &[&past_len, &zero_axis]);
    let total = net.op("Squeeze", m, &[&total_len, &zero_axis]);
    let zero = net.si64(0);
    let one = net.si64(1);
    let q_pos = net.op("Range", m, &[&p, &total, &one]);
    let k_pos = net.op("Range", m, &[&zero, &total, &one]);
    let axis1 = net.ci64(&[1]);
    let q_col = net.op("Unsqueeze", m, &[&q_pos, &axis1]);
    let k_row = net.op("Unsqueeze", m, &[&k_pos, &zero_axis]);
    let causal = net.op("LessOrEqual", m, &[&k_row, &q_col]);
    let pad = net.g.op(
        "Cast",
        m,
        &[ATTENTION_MASK],
        vec![attr_int("to", DataType::Bool.onnx() as i64)],
    );
    let axes12 = net.ci64(&[1, 2]);
    let pad4 = net.op("Unsqueeze", m, &[&pad, &axes12]);
    let allowed = net.op("And", m, &[&causal, &pad4]);
    let keep = net.cf32(0.0);
    let min = net.cf32(crate::net::MASK_MIN);
    let self_mask = net.op("Where", m, &[&allowed, &keep, &min]);
    let cross_mask = net.additive_mask(
        "text_decoder.encoder_attention_mask",
        ENCODER_ATTENTION_MASK,
    );

    let kv: Vec<(String, String)> = (0..layers)
        .map(|i| (io::cross_key(i), io::cross_value(i)))
        .collect();
    let g = "text_decoder.cross_groups";
    let minus1 = net.ci64(&[-1]);
    let rows_by_image = net.op("Reshape", g, &[CROSS_GROUPS, &minus1]);
    let images = net.g.op(
        "Shape",
        g,
        &[CROSS_GROUPS],
        vec![attr_int("start", 0), attr_int("end", 1)],
    );
    let width = net.ci64(&[d as i64]);
    let grouped_shape = net.g.op(
        "Concat",
        g,
        &[&images, &minus1, &width],
        vec![attr_int("axis", 0)],
    );
    let slot_shape = net.g.op(
        "Concat",
        g,
        &[&minus1, &cur_len, &width],
        vec![attr_int("axis", 0)],
    );
    let groups = SharedCross {
        rows_by_image,
        grouped_shape,
        slot_shape,
    };
    let cross = Cross::Precomputed {
        kv,
        mask: &cross_mask,
        groups: &groups,
    };
    let mut h = text_embeddings(
        &mut net,
        TEXT_DECODER_MODULE,
        t,
        INPUT_IDS,
        Some(POSITION_IDS),
    )?;
    let mut outputs = Vec::new();
    let mut presents = Vec::new();
    for i in 0..layers {
        let prefix = format!("{TEXT_DECODER_MODULE}.encoder.layer.{i}");
        let (pk, pv) = (io::past_key(i), io::past_value(i));
        let (out, present) = bert_layer(
            &mut net,
            &prefix,
            t,
            &h,
            &self_mask,
            Some((&pk, &pv)),
            Some((&cross, i)),
        )?;
        h = out;
        presents.push(present.expect("a layer with a cache returns its present. This is a bug."));
    }

    // LM head: transform (dense, gelu, LayerNorm), then the vocabulary projection. The projection weight is
    // tied to the word embeddings in BLIP; Gemm(transB) uses that [V, D] tensor as stored, so it is kept once.
    let c = "text_decoder.cls.predictions";
    let x = net.linear(&format!("{c}.transform.dense"), &h, d, d)?;
    let x = net.gelu(&format!("{c}.transform.act"), &x);
    let x = net.layer_norm(&format!("{c}.transform.LayerNorm"), &x, d, t.layer_norm_eps)?;
    let word_key = format!("{TEXT_DECODER_MODULE}.embeddings.word_embeddings.weight");
    let dec_key = format!("{c}.decoder.weight");
    let w_key = if ck.contains(&dec_key) && !ck.same_data(&dec_key, &word_key) {
        dec_key
    } else {
        word_key
    };
    let w = net.param(&w_key, &[t.vocab_size, d])?;
    let bias_key = if ck.contains(&format!("{c}.decoder.bias")) {
        format!("{c}.decoder.bias")
    } else {
        format!("{c}.bias")
    };
    let bias = net.param(&bias_key, &[t.vocab_size])?;
    let flat_shape = net.ci64(&[-1, d as i64]);
    let flat = net.op("Reshape", &format!("{c}.decoder"), &[&x, &flat_shape]);
    let logits2 = net.g.op(
        "Gemm",
        &format!("{c}.decoder"),
        &[&flat, &w, &bias],
        vec![attr_int("transB", 1)],
    );
    let ids_shape = net.op("Shape", &format!("{c}.decoder"), &[INPUT_IDS]);
    let vocab = net.ci64(&[t.vocab_size as i64]);
    let out_shape = net.g.op(
        "Concat",
        &format!("{c}.decoder"),
        &[&ids_shape, &vocab],
        vec![attr_int("axis", 0)],
    );
    let logits = net.op("Reshape", &format!("{c}.decoder"), &[&logits2, &out_shape]);
    outputs.push((
        io_spec(
            LOGITS,
            DataType::F32,
            &[sym("batch"), sym("sequence"), fixed(t.vocab_size)],
        ),
        logits,
    ));
    for (i, (k, v)) in presents.into_iter().enumerate() {
        let dims = [sym("batch"), fixed(heads), sym("total_sequence"), fixed(hd)];
        outputs.push((io_spec(&io::present_key(i), DataType::F32, &dims), k));
        outputs.push((io_spec(&io::present_value(i), DataType::F32, &dims), v));
    }
    Ok(finish(net, inputs, outputs))
}
