//! BLIP-2 retrieval (`Blip2ForImageTextRetrieval`) against PyTorch goldens
//! (tools/reference/blip2_reference.py), FP32 ≤ 1e-4, batch 3 and batch 1: the ViT states, the
//! per-query ITC image embeddings, the text embeddings, the ITC scores (best query) and ITM logits.

use crate::common;

use blip_convert::ConvertOptions;
use blip_package::{Family, Head};
use common::*;
use ndarray::{ArrayD, Axis, IxDyn};

/// `logits_per_image [I, T]`: for each image and text, the best of the image's query similarities.
fn itc_scores(image_embeds: &ArrayD<f32>, text_embeds: &ArrayD<f32>) -> ArrayD<f32> {
    let (n_img, n_txt) = (image_embeds.shape()[0], text_embeds.shape()[0]);
    ArrayD::from_shape_fn(IxDyn(&[n_img, n_txt]), |ix| {
        let text = text_embeds.index_axis(Axis(0), ix[1]);
        image_embeds
            .index_axis(Axis(0), ix[0])
            .outer_iter()
            .map(|query| {
                query
                    .iter()
                    .zip(text.iter())
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
            })
            .fold(f32::NEG_INFINITY, f32::max)
    })
}

fn check_blip2_retrieval(pkg: &blip_package::Package, g: &Goldens) {
    let m = &pkg.manifest;
    assert_eq!((m.family, m.head), (Family::Blip2, Head::Retrieval));
    assert_eq!(m.model.query_tokens, Some(8));
    assert_eq!(
        m.tokens.enc, m.tokens.cls,
        "BLIP-2 ITM text starts with [CLS]"
    );

    let mut vision = session(pkg, "vision_encoder");
    let out = run(
        &mut vision,
        vec![("pixel_values", In::F(g.f("pixel_values").clone()))],
    );
    let states = &out["last_hidden_state"];
    assert_close("vision states b3", states, g.f("vision.last_hidden_state"));
    assert_close("image_embeds b3", &out["image_embeds"], g.f("image_embeds"));
    for i in 0..3 {
        let one = run(
            &mut vision,
            vec![("pixel_values", In::F(rows(g.f("pixel_values"), i..i + 1)))],
        );
        assert_close(
            "image_embeds b1",
            &one["image_embeds"],
            &rows(g.f("image_embeds"), i..i + 1),
        );
    }

    let ids = g.i("input_ids");
    let mask = g.i("attention_mask");
    assert!(
        mask.iter().any(|&v| v == 0),
        "the golden texts must include padding"
    );
    let mut text = session(pkg, "text_encoder");
    let t = run(
        &mut text,
        vec![
            ("input_ids", In::I(ids.clone())),
            ("attention_mask", In::I(mask.clone())),
        ],
    );
    assert_close("text_embeds b3", &t["text_embeds"], g.f("text_embeds"));
    for i in 0..3 {
        // Alone, each text is cut to its own length: no padding at all.
        let len = mask
            .index_axis(Axis(0), i)
            .iter()
            .filter(|&&v| v == 1)
            .count();
        let one_ids = rows_i(ids, i..i + 1)
            .slice_axis(Axis(1), (0..len).into())
            .to_owned();
        let one = run(
            &mut text,
            vec![
                ("input_ids", In::I(one_ids)),
                ("attention_mask", In::I(ones_i64(&[1, len]))),
            ],
        );
        assert_close(
            "text_embeds b1 unpadded",
            &one["text_embeds"],
            &rows(g.f("text_embeds"), i..i + 1),
        );
    }
    assert_close(
        "ITC scores (best query)",
        &itc_scores(&out["image_embeds"], &t["text_embeds"]),
        g.f("logits_per_image"),
    );

    let mut itm = session(pkg, "itm");
    let logits = run(
        &mut itm,
        vec![
            ("input_ids", In::I(ids.clone())),
            ("attention_mask", In::I(mask.clone())),
            ("encoder_hidden_states", In::F(states.clone())),
        ],
    );
    assert_close("itm_logits b3", &logits["itm_logits"], g.f("itm_logits"));
}

#[test]
fn blip2_retrieval_package_matches_pytorch() {
    let c = convert_fixture(
        &fixture("models/tiny-blip2-retrieval"),
        &ConvertOptions::default(),
    );
    check_blip2_retrieval(&c.pkg, &Goldens::load("tiny-blip2-retrieval"));
}

/// LAVIS and older transformers store the vision attention's biases as `q_bias` and `v_bias`.
#[test]
fn blip2_checkpoint_with_separate_q_and_v_biases_converts_the_same() {
    let opts = ConvertOptions {
        tokenizer: Some(fixture("models/tiny-blip2-retrieval/vocab.txt")),
        ..Default::default()
    };
    let c = convert_fixture(&fixture("models/tiny-blip2-retrieval-qv-bias"), &opts);
    check_blip2_retrieval(&c.pkg, &Goldens::load("tiny-blip2-retrieval"));
}

#[test]
fn blip2_models_it_cannot_convert_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixture("models/tiny-blip2-retrieval/model.safetensors");
    for (config, expected) in [
        (
            r#"{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "opt"}}"#,
            "BLIP-2 (Blip2ForConditionalGeneration, opt language model) is not supported: captioning and VQA (Blip2ForConditionalGeneration) are not converted yet",
        ),
        (
            r#"{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "llama"}}"#,
            "BLIP-2 (Blip2ForConditionalGeneration, llama language model) is not supported: only OPT and Flan-T5",
        ),
        (
            r#"{"model_type": "instructblip", "architectures": ["InstructBlipForConditionalGeneration"], "text_config": {"model_type": "llama"}}"#,
            "InstructBLIP (InstructBlipForConditionalGeneration, llama language model) is not supported",
        ),
    ] {
        let ck = dir.path().join("ck");
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("config.json"), config).unwrap();
        std::fs::copy(&weights, ck.join("model.safetensors")).unwrap();
        let out = dir.path().join("out");
        let e = blip_convert::convert(&ck, &out, &ConvertOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(expected), "{config}\n→ {e}");
        assert!(!out.exists(), "nothing is written for a refused model");
        // The hub door asks the same question before it downloads any weights.
        let e = blip_convert::check_config(&ck.join("config.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(expected), "check_config: {e}");
    }
}

/// `--head` other than retrieval on a BLIP-2 retrieval checkpoint: BLIP's mismatch error, nothing written.
#[test]
fn blip2_retrieval_checkpoint_refuses_another_head() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let opts = ConvertOptions {
        head: Some(Head::Caption),
        ..Default::default()
    };
    let e = blip_convert::convert(&fixture("models/tiny-blip2-retrieval"), &out, &opts)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--head caption does not match the checkpoint, which has no text_decoder tensors"
    );
    assert!(!out.exists());
}
