//! ORT-optimized packages compute what the portable ones do (≤ 1e-4, tokens exact) and pass `check`.

use blip_convert::ConvertOptions;
use blip_runtime::{BlipModel, CaptionOptions, SessionOptions, VqaOptions};
use blip_testkit::{Goldens, assert_close, convert_fixture, fixture};

fn optimized(name: &str) -> (blip_testkit::Converted, std::path::PathBuf) {
    let fp32 = convert_fixture(
        &fixture(&format!("models/{name}")),
        &ConvertOptions::default(),
    );
    let out = fp32.dir.path().join("opt");
    let reports = blip_optimize::optimize_package(&fp32.pkg.dir, &out, false).unwrap();
    // ORT really rewrote the graphs: fused nodes appear and the node count drops.
    let vision = reports.iter().find(|r| r.role == "vision_encoder").unwrap();
    assert!(vision.nodes_after < vision.nodes_before, "{vision:?}");
    assert!(
        vision
            .fused_ops
            .iter()
            .any(|(op, _)| op.starts_with("com.microsoft.")),
        "{vision:?}"
    );
    // Attention fused into MultiHeadAttention wherever K/V are computed in the graph (ViT, the
    // text encoders' self-attention) and in the decoder's self-attention over its KV cache, one
    // per block; cross-attention is left as it is (the encoders project the text, not the image
    // states; the decoder reads precomputed K/V).
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("models/{name}/config.json"))).unwrap(),
    )
    .unwrap();
    let layers = |key: &str| cfg[key]["num_hidden_layers"].as_u64().unwrap() as usize;
    for r in &reports {
        let expected = match r.role.as_str() {
            "vision_encoder" => layers("vision_config"),
            "text_encoder" => layers("text_config"),
            "itm" | "vqa_question_encoder" => layers("text_config"),
            "decoder" => layers("text_config"),
            _ => 0,
        };
        let mha = r
            .fused_ops
            .iter()
            .find(|(op, _)| op == "com.microsoft.MultiHeadAttention")
            .map_or(0, |(_, n)| *n);
        assert_eq!(mha, expected, "{r:?}");
    }
    let report = blip_validate::check(&out, true);
    assert!(
        report.passed(),
        "{:#?}",
        report.failures().collect::<Vec<_>>()
    );
    let manifest = blip_testkit::manifest_json(&out);
    assert_eq!(
        manifest["graphs"]["vision_encoder"]["optimization"],
        "ort-extended"
    );
    // Made for every runtime but tract and WebGPU, whose attention kernels lack the decoder's
    // past key/value; `check --target` says so, naming the op.
    assert_eq!(
        manifest["runtimes"],
        serde_json::json!(["ort", "node", "web", "openvino", "ort-mobile"])
    );
    if name == "tiny-caption" {
        use blip_package::Runtime;
        let r =
            blip_validate::check_targets(&out, &[Runtime::Tract, Runtime::Webgpu, Runtime::Web]);
        let failed: Vec<_> = r
            .failures()
            .map(|i| (i.item.as_str(), i.reason.as_str()))
            .collect();
        for target in ["tract", "webgpu"] {
            let item = format!("decoder: runs on {target}");
            let reason = failed.iter().find(|(i, _)| *i == item).map(|(_, r)| *r);
            assert!(
                reason.is_some_and(|r| r.starts_with("MultiHeadAttention with a mask or past")),
                "{failed:#?}"
            );
        }
        assert!(
            failed.iter().all(|(i, _)| !i.ends_with("on web")),
            "{failed:#?}"
        );
    }
    (fp32, out)
}

fn open(dir: &std::path::Path) -> BlipModel {
    BlipModel::open(dir, &SessionOptions::default()).unwrap()
}

#[test]
fn optimized_caption_package_matches_the_portable_one() {
    let (fp32, out) = optimized("tiny-caption");
    let g = Goldens::load("tiny-caption");
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let (mut a, mut b) = (open(&fp32.pkg.dir), open(&out));
    let (va, vb) = (a.vision(&pixels, 3).unwrap(), b.vision(&pixels, 3).unwrap());
    assert_close(
        "vision states",
        &vb.hidden.clone().into_dyn(),
        &va.hidden.clone().into_dyn(),
    );
    // Decoder logits, all positions from an empty cache (rows right-padded differently), then a
    // cached prefix and one step: the fused self-attention masks padding and the future as the
    // converter's mask does.
    let (rows, t) = (3, 6);
    let ids: Vec<i64> = [
        [30522, 1037, 2158, 2003, 102, 0],
        [30522, 2158, 102, 0, 0, 0],
        [30522, 1037, 2450, 1999, 1037, 102],
    ]
    .concat();
    let mask: Vec<i64> = ids.iter().map(|&i| i64::from(i != 0)).collect();
    let e = va.hidden.shape()[1];
    let enc_mask = vec![1; rows * e];
    assert_close(
        "decoder logits",
        &b.decoder_logits(vb.hidden.view(), &enc_mask, &ids, &mask, t)
            .unwrap()
            .into_dyn(),
        &a.decoder_logits(va.hidden.view(), &enc_mask, &ids, &mask, t)
            .unwrap()
            .into_dyn(),
    );
    let step_logits = |m: &mut BlipModel, states: ndarray::ArrayView3<'_, f32>| {
        use blip_runtime::generate::Step;
        let mut dec = m.cached_decoder(states).unwrap();
        let prefix: Vec<i64> = ids.chunks(t).flat_map(|r| r[..3].to_vec()).collect();
        let first = dec.step(&prefix, 3, None).unwrap();
        let next = dec.step(&[1037, 2158, 2450], 1, None).unwrap();
        ndarray::Array1::from([first, next].concat()).into_dyn()
    };
    assert_close(
        "cached decoder steps",
        &step_logits(&mut b, vb.hidden.view()),
        &step_logits(&mut a, va.hidden.view()),
    );
    for strategy in blip_testkit::greedy_and_beam() {
        let opts = CaptionOptions {
            strategy,
            max_length: 20,
            min_length: 0,
            ..Default::default()
        };
        let (ca, cb) = (
            a.caption_pixels(&pixels, 3, &opts).unwrap(),
            b.caption_pixels(&pixels, 3, &opts).unwrap(),
        );
        for (x, y) in ca.iter().zip(&cb) {
            assert_eq!(x.ids, y.ids);
        }
    }
    // Optimizing twice, or quantizing the fused graphs, is refused and writes nothing.
    let again = fp32.dir.path().join("again");
    let err = blip_optimize::optimize_package(&out, &again, false).unwrap_err();
    assert!(err.to_string().contains("already optimized"), "{err}");
    let err = blip_quantize::quantize_package(&out, &again, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("before `optimize`"), "{err}");
    assert!(!again.exists());
}

#[test]
fn optimized_retrieval_package_matches_the_portable_one() {
    let (fp32, out) = optimized("tiny-retrieval");
    let g = Goldens::load("tiny-retrieval");
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let texts: Vec<String> = serde_json::from_value(g.meta["texts"].clone()).unwrap();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (mut a, mut b) = (open(&fp32.pkg.dir), open(&out));
    let (va, vb) = (a.vision(&pixels, 3).unwrap(), b.vision(&pixels, 3).unwrap());
    assert_close(
        "image embeds",
        &vb.embeds.clone().unwrap().into_dyn(),
        &va.embeds.clone().unwrap().into_dyn(),
    );
    assert_close(
        "text embeds",
        &b.embed_texts(&texts).unwrap().into_dyn(),
        &a.embed_texts(&texts).unwrap().into_dyn(),
    );
    assert_close(
        "itm logits",
        &b.itm_pairs(vb.hidden.view(), &texts).unwrap().into_dyn(),
        &a.itm_pairs(va.hidden.view(), &texts).unwrap().into_dyn(),
    );
}

#[test]
fn optimized_vqa_package_answers_the_same() {
    let (fp32, out) = optimized("tiny-vqa");
    let g = Goldens::load("tiny-vqa");
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let questions: Vec<String> = serde_json::from_value(g.meta["questions"].clone()).unwrap();
    let questions: Vec<&str> = questions.iter().map(String::as_str).collect();
    let (mut a, mut b) = (open(&fp32.pkg.dir), open(&out));
    let opts = VqaOptions::default();
    let (x, y) = (
        a.answer_pixels(&pixels, 3, &questions, &opts).unwrap(),
        b.answer_pixels(&pixels, 3, &questions, &opts).unwrap(),
    );
    assert_eq!(x.len(), 3);
    for (p, q) in x.iter().zip(&y) {
        assert_eq!(p.ids, q.ids);
    }
}
