//! Every graph of every head against PyTorch goldens (tools/reference/blip_reference.py), FP32 ≤ 1e-4,
//! batch 1 and batch 3; greedy decoding through cross_kv + the KV-cached decoder reproduces
//! transformers' `generate` token ids exactly.

use crate::common;

use blip_checkpoint::Head;
use blip_convert::{ConvertOptions, ExternalData};
use common::*;
use ndarray::{ArrayD, Axis};

fn vision_parity(pkg: &blip_package::Package, g: &Goldens, with_embeds: bool) {
    let mut s = session(pkg, "vision_encoder");
    let out = run(
        &mut s,
        vec![("pixel_values", In::F(g.f("pixel_values").clone()))],
    );
    assert_close(
        "vision last_hidden_state b3",
        &out["last_hidden_state"],
        g.f("vision.last_hidden_state"),
    );
    if with_embeds {
        assert_close(
            "vision image_embeds b3",
            &out["image_embeds"],
            g.f("vision.image_embeds"),
        );
    }
    for i in 0..3 {
        let one = run(
            &mut s,
            vec![("pixel_values", In::F(rows(g.f("pixel_values"), i..i + 1)))],
        );
        assert_close(
            "vision last_hidden_state b1",
            &one["last_hidden_state"],
            &rows(g.f("vision.last_hidden_state"), i..i + 1),
        );
    }
}

/// Decoder over the golden sequence: all positions at once from an empty cache, then one step at a
/// time through the cache; both must equal PyTorch's logits and self-attention cache.
fn decoder_parity(pkg: &blip_package::Package, g: &Goldens, encoder_states: &ArrayD<f32>) {
    let mut dec = Decoder::new(pkg);
    let cross = dec.cross_kv(encoder_states);
    for i in 0..dec.layers {
        assert_close(
            "cross key",
            &cross[&format!("cross_key_values.{i}.key")],
            g.f(&format!("cross_key_values.{i}.key")),
        );
        assert_close(
            "cross value",
            &cross[&format!("cross_key_values.{i}.value")],
            g.f(&format!("cross_key_values.{i}.value")),
        );
    }
    let ids = g.i("decoder.input_ids");
    let (b, t) = (ids.shape()[0], ids.shape()[1]);
    let enc_len = encoder_states.shape()[1];
    let full = dec.forward(ids, &dec.empty_past(b), &cross, enc_len);
    assert_close(
        "decoder logits (whole sequence)",
        &full["logits"],
        g.f("decoder.logits"),
    );
    for i in 0..dec.layers {
        assert_close(
            "present key",
            &full[&format!("present.{i}.key")],
            g.f(&format!("present.{i}.key")),
        );
        assert_close(
            "present value",
            &full[&format!("present.{i}.value")],
            g.f(&format!("present.{i}.value")),
        );
    }
    let mut past = dec.empty_past(b);
    for step in 0..t {
        let tok = ids
            .slice_axis(Axis(1), ndarray::Slice::from(step..step + 1))
            .to_owned();
        let out = dec.forward(&tok, &past, &cross, enc_len);
        let want = g
            .f("decoder.logits")
            .slice_axis(Axis(1), ndarray::Slice::from(step..step + 1))
            .to_owned();
        assert_close("decoder logits (cached step)", &out["logits"], &want);
        // The cached path must agree with the uncached one, not only with PyTorch.
        let full_step = full["logits"]
            .slice_axis(Axis(1), ndarray::Slice::from(step..step + 1))
            .to_owned();
        assert!(
            max_abs_diff(&out["logits"], &full_step) <= 1e-5,
            "cache vs no cache at step {step}"
        );
        past = (0..dec.layers)
            .map(|i| {
                (
                    out[&format!("present.{i}.key")].clone(),
                    out[&format!("present.{i}.value")].clone(),
                )
            })
            .collect();
    }
}

fn prompt_ids(pkg: &blip_package::Package, prompt: &str, n: usize) -> Vec<Vec<i64>> {
    let tok = tokenizers::Tokenizer::from_file(pkg.tokenizer_path()).unwrap();
    let enc = tok.encode(prompt, true).unwrap();
    let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
    // As BLIP / HF generate: [DEC] replaces [CLS], the trailing [SEP] is dropped.
    ids[0] = pkg.manifest.tokens.bos;
    ids.pop();
    vec![ids; n]
}

fn check_caption(pkg: &blip_package::Package, g: &Goldens) {
    vision_parity(pkg, g, false);
    let image = g.f("vision.last_hidden_state");
    decoder_parity(pkg, g, image);
    let t = &pkg.manifest.tokens;
    let mut dec = Decoder::new(pkg);
    let bos = vec![vec![t.bos]; 3];
    assert_eq!(
        dec.greedy(&bos, image, 20, t.eos, t.pad),
        g.ids("greedy"),
        "greedy caption ids, batch 3"
    );
    for i in 0..3 {
        let got = dec.greedy(&bos[..1], &rows(image, i..i + 1), 20, t.eos, t.pad);
        let mut want = g.ids("greedy")[i].clone();
        while want.last() == Some(&t.pad) {
            want.pop();
        }
        assert_eq!(got[0], want, "greedy caption ids, batch 1, image {i}");
    }
    let prompt = prompt_ids(pkg, "a picture of ", 3);
    assert_eq!(
        dec.greedy(&prompt, image, 20, t.eos, t.pad),
        g.ids("greedy_prompt"),
        "greedy caption ids with prompt"
    );
}

#[test]
fn caption_package_matches_pytorch() {
    let c = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    assert_eq!(c.pkg.manifest.head, blip_package::Head::Caption);
    check_caption(&c.pkg, &Goldens::load("tiny-caption"));
}

#[test]
fn caption_package_with_external_data_matches_pytorch() {
    let opts = ConvertOptions {
        external_data: ExternalData::Always,
        ..Default::default()
    };
    let c = convert_fixture(&fixture("models/tiny-caption"), &opts);
    let entry = c.pkg.graph("decoder").unwrap();
    let data = entry
        .data_file
        .as_ref()
        .expect("external data file recorded");
    assert!(c.pkg.dir.join(data).is_file());
    check_caption(&c.pkg, &Goldens::load("tiny-caption"));
}

#[test]
fn original_pth_with_interpolated_position_embeddings_matches_pytorch() {
    let c = convert_pth_48();
    let m = &c.pkg.manifest;
    assert_eq!(
        (
            m.model.image_size,
            m.model.image_tokens,
            m.source.format.as_str()
        ),
        (48, 37, "salesforce-pth")
    );
    assert_eq!(m.source.interpolated_from_image_size, Some(32));
    check_caption(&c.pkg, &Goldens::load("tiny-caption-pth-48"));
}

fn check_retrieval(pkg: &blip_package::Package, g: &Goldens) {
    vision_parity(pkg, g, true);
    let ids = g.i("text.input_ids");
    let mask = g.i("text.attention_mask");
    // The package tokenizer reproduces the reference token ids.
    let tok = tokenizers::Tokenizer::from_file(pkg.tokenizer_path()).unwrap();
    let texts: Vec<String> = serde_json::from_value(g.meta["texts"].clone()).unwrap();
    for (r, text) in texts.iter().enumerate() {
        let enc = tok.encode(text.as_str(), true).unwrap();
        let n = mask
            .index_axis(Axis(0), r)
            .iter()
            .filter(|&&m| m == 1)
            .count();
        let want: Vec<i64> = ids.index_axis(Axis(0), r).iter().take(n).copied().collect();
        assert_eq!(
            enc.get_ids().iter().map(|&i| i as i64).collect::<Vec<_>>(),
            want,
            "tokens of {text:?}"
        );
    }
    let mut s = session(pkg, "text_encoder");
    let out = run(
        &mut s,
        vec![
            ("input_ids", In::I(ids.clone())),
            ("attention_mask", In::I(mask.clone())),
        ],
    );
    assert_close(
        "text last_hidden_state (padded batch 3)",
        &out["last_hidden_state"],
        g.f("text.last_hidden_state"),
    );
    assert_close("text_embeds", &out["text_embeds"], g.f("text.text_embeds"));
    for r in 0..3 {
        // Batch 1 without padding gives the same embedding as the padded batch.
        let n = mask
            .index_axis(Axis(0), r)
            .iter()
            .filter(|&&m| m == 1)
            .count();
        let one_ids = rows_i(ids, r..r + 1)
            .slice_axis(Axis(1), ndarray::Slice::from(0..n))
            .to_owned();
        let one = run(
            &mut s,
            vec![
                ("input_ids", In::I(one_ids)),
                ("attention_mask", In::I(ones_i64(&[1, n]))),
            ],
        );
        assert_close(
            "text_embeds b1",
            &one["text_embeds"],
            &rows(g.f("text.text_embeds"), r..r + 1),
        );
    }
    // ITC similarity from the two graphs' embeddings.
    let mut v = session(pkg, "vision_encoder");
    let img = run(
        &mut v,
        vec![("pixel_values", In::F(g.f("pixel_values").clone()))],
    );
    let ie = img["image_embeds"]
        .clone()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let te = out["text_embeds"]
        .clone()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    assert_close(
        "itc similarity",
        &ie.dot(&te.t()).into_dyn(),
        g.f("itc.similarity"),
    );
    // ITM for all 9 (image, text) pairs at once.
    let states = g.f("vision.last_hidden_state");
    // Image-major pairs: image i with each of the 3 texts.
    let order: Vec<usize> = (0..3).flat_map(|i| [i; 3]).collect();
    let pairs = states.select(Axis(0), &order);
    let mut itm = session(pkg, "itm");
    let out = run(
        &mut itm,
        vec![
            ("input_ids", In::I(g.i("itm.input_ids").clone())),
            ("attention_mask", In::I(g.i("itm.attention_mask").clone())),
            ("encoder_hidden_states", In::F(pairs)),
        ],
    );
    assert_close(
        "itm logits (9 pairs)",
        &out["itm_logits"],
        g.f("itm.logits"),
    );
    // Each pair alone, without padding, gives the same logits as inside the padded batch.
    let itm_mask = g.i("itm.attention_mask");
    for p in 0..9 {
        let n = itm_mask
            .index_axis(Axis(0), p)
            .iter()
            .filter(|&&m| m == 1)
            .count();
        let ids = rows_i(g.i("itm.input_ids"), p..p + 1)
            .slice_axis(Axis(1), ndarray::Slice::from(0..n))
            .to_owned();
        let one = run(
            &mut itm,
            vec![
                ("input_ids", In::I(ids)),
                ("attention_mask", In::I(ones_i64(&[1, n]))),
                (
                    "encoder_hidden_states",
                    In::F(rows(states, p / 3..p / 3 + 1)),
                ),
            ],
        );
        assert_close(
            "itm logits b1",
            &one["itm_logits"],
            &rows(g.f("itm.logits"), p..p + 1),
        );
    }
}

#[test]
fn retrieval_package_matches_pytorch() {
    let c = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    assert_eq!(c.pkg.manifest.head, blip_package::Head::Retrieval);
    assert_eq!(c.pkg.manifest.model.embed_dim, Some(24));
    check_retrieval(&c.pkg, &Goldens::load("tiny-retrieval"));
}

#[test]
fn pytorch_model_bin_folder_matches_pytorch() {
    let opts = ConvertOptions {
        tokenizer: Some(fixture("models/tiny-retrieval/vocab.txt")),
        ..Default::default()
    };
    let c = convert_fixture(&fixture("models/tiny-retrieval-bin"), &opts);
    assert_eq!(c.pkg.manifest.source.format, "hf-pytorch-bin");
    check_retrieval(&c.pkg, &Goldens::load("tiny-retrieval"));
}

fn check_vqa(pkg: &blip_package::Package, g: &Goldens) {
    vision_parity(pkg, g, false);
    let mut q = session(pkg, "vqa_question_encoder");
    let out = run(
        &mut q,
        vec![
            ("input_ids", In::I(g.i("question.input_ids").clone())),
            (
                "attention_mask",
                In::I(g.i("question.attention_mask").clone()),
            ),
            (
                "encoder_hidden_states",
                In::F(g.f("vision.last_hidden_state").clone()),
            ),
        ],
    );
    assert_close(
        "question states",
        &out["last_hidden_state"],
        g.f("question.last_hidden_state"),
    );
    let q_mask = g.i("question.attention_mask");
    for r in 0..3 {
        // Unpadded batch 1: the valid positions equal the padded batch's.
        let n = q_mask
            .index_axis(Axis(0), r)
            .iter()
            .filter(|&&m| m == 1)
            .count();
        let ids = rows_i(g.i("question.input_ids"), r..r + 1)
            .slice_axis(Axis(1), ndarray::Slice::from(0..n))
            .to_owned();
        let one = run(
            &mut q,
            vec![
                ("input_ids", In::I(ids)),
                ("attention_mask", In::I(ones_i64(&[1, n]))),
                (
                    "encoder_hidden_states",
                    In::F(rows(g.f("vision.last_hidden_state"), r..r + 1)),
                ),
            ],
        );
        let want = rows(g.f("question.last_hidden_state"), r..r + 1)
            .slice_axis(Axis(1), ndarray::Slice::from(0..n))
            .to_owned();
        assert_close("question states b1", &one["last_hidden_state"], &want);
    }
    let states = g.f("question.last_hidden_state");
    decoder_parity(pkg, g, states);
    let t = &pkg.manifest.tokens;
    let mut dec = Decoder::new(pkg);
    assert_eq!(
        dec.greedy(&vec![vec![t.bos]; 3], states, 10, t.eos, t.pad),
        g.ids("greedy"),
        "greedy answer ids"
    );
}

#[test]
fn vqa_package_matches_pytorch() {
    let c = convert_fixture(&fixture("models/tiny-vqa"), &ConvertOptions::default());
    assert_eq!(c.pkg.manifest.head, blip_package::Head::Vqa);
    check_vqa(&c.pkg, &Goldens::load("tiny-vqa"));
}

#[test]
fn sharded_safetensors_folder_matches_pytorch() {
    // Split the VQA fixture into two shards with an index, as transformers does for big checkpoints.
    let src = fixture("models/tiny-vqa");
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("sharded");
    std::fs::create_dir(&ck).unwrap();
    for f in ["config.json", "vocab.txt"] {
        std::fs::copy(src.join(f), ck.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &ck.join(&file)).unwrap();
        for n in part.iter() {
            weight_map.insert(n.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(ck.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let c = convert_fixture(&ck, &ConvertOptions::default());
    assert_eq!(c.pkg.manifest.source.files.len(), 2);
    check_vqa(&c.pkg, &Goldens::load("tiny-vqa"));
}

#[test]
fn head_can_be_forced_and_is_checked() {
    let opts = ConvertOptions {
        head: Some(Head::Caption),
        ..Default::default()
    };
    let c = convert_fixture(&fixture("models/tiny-caption"), &opts);
    assert_eq!(
        c.pkg.manifest.graphs.keys().cloned().collect::<Vec<_>>(),
        ["cross_kv", "decoder", "vision_encoder"]
    );
    let err = blip_convert::convert(
        &fixture("models/tiny-caption"),
        &tempfile::tempdir().unwrap().path().join("p"),
        &ConvertOptions {
            head: Some(Head::Retrieval),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("itm_head"), "{err}");
}
