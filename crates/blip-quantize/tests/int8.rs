//! INT8 packages: pass the checklist, load in ORT, and stay close to FP32 on the fixtures.

use crate::common;

use blip_convert::ConvertOptions;
use blip_quantize::{Policy, QuantizeOptions, quantize_package};
use blip_runtime::{BlipModel, CaptionOptions, SessionOptions};
use blip_testkit::{Goldens, convert_fixture, cosine, fixture, manifest_json};
use common::{assert_captions_close, assert_checks, greedy, max_diff, shapes_caption};

#[test]
fn int8_retrieval_package_keeps_embeddings_and_itm() {
    let fp32 = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    let out = fp32.dir.path().join("int8");
    let stats = quantize_package(
        &fp32.pkg.dir,
        &out,
        &QuantizeOptions {
            policy: Policy::All,
            ..Default::default()
        },
    )
    .unwrap();
    let vision = stats.iter().find(|s| s.role == "vision_encoder").unwrap();
    assert_eq!(
        vision.quantized_matmuls,
        2 * 4 + 1,
        "qkv, projection, fc1, fc2 per layer + vision_proj"
    );
    assert_checks(&out);
    let manifest = manifest_json(&out);
    assert_eq!(
        manifest["graphs"]["text_encoder"]["file"],
        "text_encoder_quantized.onnx"
    );
    assert_eq!(manifest["precision"], "int8");

    let g = Goldens::load("tiny-retrieval");
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let texts: Vec<String> = serde_json::from_value(g.meta["texts"].clone()).unwrap();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut a = BlipModel::open(&fp32.pkg.dir, &SessionOptions::default()).unwrap();
    let mut b = BlipModel::open(&out, &SessionOptions::default()).unwrap();
    let (va, vb) = (a.vision(&pixels, 3).unwrap(), b.vision(&pixels, 3).unwrap());
    let one =
        |e: Option<ndarray::Array3<f32>>| blip_runtime::one_vector_per_image(e.unwrap()).unwrap();
    let (ia, ib) = (one(va.embeds), one(vb.embeds));
    let (ta, tb) = (
        a.embed_texts(&texts).unwrap(),
        b.embed_texts(&texts).unwrap(),
    );
    for r in 0..3 {
        let ci = cosine(ia.row(r).as_slice().unwrap(), ib.row(r).as_slice().unwrap());
        let ct = cosine(ta.row(r).as_slice().unwrap(), tb.row(r).as_slice().unwrap());
        assert!(
            ci >= 0.99 && ct >= 0.99,
            "row {r}: image cosine {ci}, text cosine {ct}"
        );
        assert!(
            ci < 1.0 - 1e-7 || ct < 1.0 - 1e-7,
            "the INT8 graph must actually differ"
        );
    }
    let la = a.itm_pairs(va.hidden.view(), &texts).unwrap();
    let lb = b.itm_pairs(vb.hidden.view(), &texts).unwrap();
    let worst = max_diff(la.as_slice().unwrap(), lb.as_slice().unwrap());
    assert!(worst < 0.05, "ITM logits moved by {worst}");
}

/// A BLIP-2 retrieval package quantizes like BLIP's: still `blip-2`, every query vector and the
/// ITC and ITM scores close to FP32's.
#[test]
fn int8_blip2_retrieval_package_keeps_query_embeddings_and_itm() {
    let fp32 = convert_fixture(
        &fixture("models/tiny-blip2-retrieval"),
        &ConvertOptions::default(),
    );
    let out = fp32.dir.path().join("int8");
    let stats = quantize_package(&fp32.pkg.dir, &out, &QuantizeOptions::default()).unwrap();
    assert!(stats.iter().all(|s| s.quantized_matmuls > 0), "{stats:?}");
    assert_checks(&out);
    let manifest = manifest_json(&out);
    assert_eq!(
        (&manifest["family"], &manifest["precision"]),
        (&serde_json::json!("blip-2"), &serde_json::json!("int8"))
    );
    let g = Goldens::load("tiny-blip2-retrieval");
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let texts: Vec<String> = serde_json::from_value(g.meta["texts"].clone()).unwrap();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut a = BlipModel::open(&fp32.pkg.dir, &SessionOptions::default()).unwrap();
    let mut b = BlipModel::open(&out, &SessionOptions::default()).unwrap();
    let (va, vb) = (a.vision(&pixels, 3).unwrap(), b.vision(&pixels, 3).unwrap());
    let (ia, ib) = (va.embeds.unwrap(), vb.embeds.unwrap());
    assert_eq!(ib.shape(), &[3, 8, 16]);
    let (ia, ib) = (ia.as_slice().unwrap(), ib.as_slice().unwrap());
    let mut moved = 0f32;
    for (x, y) in ia.chunks(16).zip(ib.chunks(16)) {
        let c = cosine(x, y);
        assert!(c >= 0.99, "a query vector's cosine to FP32 is {c}");
        moved = moved.max(1.0 - c);
    }
    assert!(moved > 1e-7, "the INT8 graph must actually differ");
    let per = pixels.len() / 3;
    for i in 0..3 {
        let (sa, sb) = (
            a.itm(&pixels[i * per..(i + 1) * per], &texts).unwrap(),
            b.itm(&pixels[i * per..(i + 1) * per], &texts).unwrap(),
        );
        for (x, y) in sa.iter().zip(&sb) {
            assert!((x.itc - y.itc).abs() < 0.02, "ITC {} vs {}", x.itc, y.itc);
            let worst = max_diff(&x.logits, &y.logits);
            assert!(worst < 0.05, "ITM logits moved by {worst}");
        }
    }
}

#[test]
fn default_policy_keeps_the_decoder_fp32_and_captions_still_run() {
    let fp32 = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    let out = fp32.dir.path().join("int8");
    let stats = quantize_package(&fp32.pkg.dir, &out, &QuantizeOptions::default()).unwrap();
    let dec = stats.iter().find(|s| s.role == "decoder").unwrap();
    assert_eq!(
        (dec.quantized_matmuls, dec.bytes_before),
        (0, dec.bytes_after)
    );
    let manifest = manifest_json(&out);
    assert_eq!(manifest["precision"], "mixed");
    assert_eq!(manifest["graphs"]["decoder"]["precision"], "fp32");
    assert_eq!(manifest["graphs"]["cross_kv"]["precision"], "int8");
    // How each graph was quantized is recorded; graphs left FP32 say nothing.
    assert_eq!(
        manifest["graphs"]["cross_kv"]["quantization"],
        "dynamic INT8, per-channel QInt8 weights"
    );
    assert!(manifest["graphs"]["decoder"].get("quantization").is_none());
    let g = Goldens::load("tiny-caption");
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let mut m = BlipModel::open(&out, &SessionOptions::default()).unwrap();
    let opts = CaptionOptions {
        prompt: String::new(),
        ..greedy(20)
    };
    let caps = m.caption_pixels(&pixels, 3, &opts).unwrap();
    assert!(caps.iter().all(|c| c.ids.len() > 1 && c.ids[0] == 30522));
    // On the trained shapes model, default policy and everything quantized alike: the same
    // captions as FP32 and decoder logits close to FP32's.
    let shapes = shapes_caption();
    let shapes_int8 = shapes.dir.path().join("int8");
    quantize_package(&shapes.pkg.dir, &shapes_int8, &QuantizeOptions::default()).unwrap();
    assert_captions_close(&shapes.pkg.dir, &shapes_int8, 0.999);
    let shapes_all = shapes.dir.path().join("int8-all");
    let all_opts = QuantizeOptions {
        policy: Policy::All,
        reduce_range: true,
        ..Default::default()
    };
    quantize_package(&shapes.pkg.dir, &shapes_all, &all_opts).unwrap();
    assert_captions_close(&shapes.pkg.dir, &shapes_all, 0.999);
    // Everything quantized on the tiny model too: loads and runs, and is not overwritten.
    let all = fp32.dir.path().join("int8-all");
    quantize_package(&fp32.pkg.dir, &all, &all_opts).unwrap();
    let mut m = BlipModel::open(&all, &SessionOptions::default()).unwrap();
    assert_eq!(m.caption_pixels(&pixels, 3, &opts).unwrap().len(), 3);
    let err = quantize_package(&fp32.pkg.dir, &all, &QuantizeOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
}

#[test]
fn int4_weight_only_decoder_runs_and_stays_close() {
    use blip_quantize::Scheme;
    let fp32 = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    let int8 = fp32.dir.path().join("int8");
    quantize_package(&fp32.pkg.dir, &int8, &QuantizeOptions::default()).unwrap();
    // Chained: INT8 encoders from the first pass, INT4 decoder now.
    let mixed = fp32.dir.path().join("mixed");
    let opts = QuantizeOptions {
        scheme: Scheme::Int4 {
            block_size: 32,
            accuracy_level: 0,
        },
        policy: Policy::Decoder,
        ..Default::default()
    };
    let stats = quantize_package(&int8, &mixed, &opts).unwrap();
    let dec = stats.iter().find(|s| s.role == "decoder").unwrap();
    // Per layer: self QKV (one fused MatMul), O; cross Q, O (cross K/V live in cross_kv); FFN in and out.
    assert_eq!(
        dec.quantized_matmuls,
        2 * 6 + 2,
        "6 MatMuls per layer + LM transform + LM head"
    );
    let manifest = manifest_json(&mixed);
    assert_eq!(manifest["graphs"]["decoder"]["file"], "decoder_q4.onnx");
    assert_eq!(manifest["graphs"]["decoder"]["precision"], "int4");
    assert_eq!(
        manifest["graphs"]["decoder"]["quantization"],
        "weight-only INT4 (MatMulNBits, block 32, symmetric, accuracy level 0); word embeddings too"
    );
    assert_eq!(manifest["graphs"]["vision_encoder"]["precision"], "int8");
    // Carried over from the first pass.
    assert_eq!(
        manifest["graphs"]["vision_encoder"]["quantization"],
        "dynamic INT8, per-channel QInt8 weights"
    );
    assert_eq!(manifest["precision"], "mixed");
    assert_checks(&mixed);

    // The same chain on the trained shapes model: decoder logits (teacher-forced, every position)
    // close to FP32's, and whole greedy captions equal.
    let shapes = shapes_caption();
    let (shapes_int8, shapes_mixed) = (
        shapes.dir.path().join("int8"),
        shapes.dir.path().join("mixed"),
    );
    quantize_package(&shapes.pkg.dir, &shapes_int8, &QuantizeOptions::default()).unwrap();
    quantize_package(&shapes_int8, &shapes_mixed, &opts).unwrap();
    assert_eq!(
        manifest_json(&shapes_mixed)["graphs"]["decoder"]["precision"],
        "int4"
    );
    assert_captions_close(&shapes.pkg.dir, &shapes_mixed, 0.985);
}
