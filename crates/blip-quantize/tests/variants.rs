//! FP16, QUInt8, asymmetric INT4 and quantized embeddings: each passes the checklist, runs in ORT
//! and stays close to the FP32 package on the fixture goldens.

use crate::common;

use blip_convert::ConvertOptions;
use blip_quantize::{Policy, QuantizeOptions, Scheme, WeightType, quantize_package};
use blip_runtime::{BlipModel, SessionOptions};
use blip_testkit::{Goldens, convert_fixture, cosine, fixture, manifest_json};
use common::{assert_checks, greedy, max_diff};

#[test]
fn fp16_caption_package_keeps_the_fp32_interface_and_the_captions() {
    let fp32 = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    let out = fp32.dir.path().join("fp16");
    let opts = QuantizeOptions {
        scheme: Scheme::Fp16,
        policy: Policy::All,
        ..Default::default()
    };
    let stats = quantize_package(&fp32.pkg.dir, &out, &opts).unwrap();
    for s in &stats {
        assert!(
            s.other_rewrites > 0 && s.bytes_after < s.bytes_before * 7 / 10,
            "{s:?}"
        );
    }
    assert_checks(&out);
    let manifest = manifest_json(&out);
    assert_eq!(manifest["precision"], "fp16");
    assert_eq!(manifest["graphs"]["decoder"]["file"], "decoder_fp16.onnx");

    let g = Goldens::load("tiny-caption");
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let mut a = BlipModel::open(&fp32.pkg.dir, &SessionOptions::default()).unwrap();
    let mut b = BlipModel::open(&out, &SessionOptions::default()).unwrap();
    let (va, vb) = (a.vision(&pixels, 3).unwrap(), b.vision(&pixels, 3).unwrap());
    let (ha, hb) = (va.hidden.as_slice().unwrap(), vb.hidden.as_slice().unwrap());
    let d = max_diff(ha, hb);
    assert!(d > 0.0 && d < 2e-2, "FP16 vision states differ by {d}");
    let (ca, cb) = (
        a.caption_pixels(&pixels, 3, &greedy(20)).unwrap(),
        b.caption_pixels(&pixels, 3, &greedy(20)).unwrap(),
    );
    for (x, y) in ca.iter().zip(&cb) {
        assert_eq!(x.ids, y.ids, "FP16 greedy caption differs");
    }
    // FP16 is made from FP32 graphs only.
    let int8 = fp32.dir.path().join("int8");
    quantize_package(&fp32.pkg.dir, &int8, &QuantizeOptions::default()).unwrap();
    let err = quantize_package(&int8, &fp32.dir.path().join("x"), &opts).unwrap_err();
    assert!(err.to_string().contains("FP32 package"), "{err}");
    assert!(!fp32.dir.path().join("x").exists());
}

#[test]
fn fp16_retrieval_keeps_normalised_embeddings_and_itm() {
    let fp32 = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    let out = fp32.dir.path().join("fp16");
    quantize_package(
        &fp32.pkg.dir,
        &out,
        &QuantizeOptions {
            scheme: Scheme::Fp16,
            policy: Policy::All,
            ..Default::default()
        },
    )
    .unwrap();
    assert_checks(&out);
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
        assert!(ci > 0.9999 && ct > 0.9999, "row {r}: {ci} {ct}");
        let norm: f32 = ib.row(r).iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-3,
            "FP16 image embedding norm {norm}"
        );
    }
    let la = a.itm_pairs(va.hidden.view(), &texts).unwrap();
    let lb = b.itm_pairs(vb.hidden.view(), &texts).unwrap();
    let d = max_diff(la.as_slice().unwrap(), lb.as_slice().unwrap());
    assert!(d < 1e-2, "FP16 ITM logits differ by {d}");
}

#[test]
fn quint8_weights_compute_what_qint8_weights_do() {
    let fp32 = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    let (s8, u8_) = (fp32.dir.path().join("s8"), fp32.dir.path().join("u8"));
    // 7-bit weights: on x86 without VNNI, ORT's u8 x s8 kernel sums pairs of products in
    // saturating int16 (vpmaddubsw), so full-range QInt8 weights can differ there (0.14 on an
    // AVX2-only EPYC) while u8 x u8 does not; reduce-range keeps both exact on every CPU.
    let opts = |weight_type| QuantizeOptions {
        policy: Policy::All,
        weight_type,
        reduce_range: true,
        ..Default::default()
    };
    quantize_package(&fp32.pkg.dir, &s8, &opts(WeightType::QInt8)).unwrap();
    quantize_package(&fp32.pkg.dir, &u8_, &opts(WeightType::QUInt8)).unwrap();
    assert_checks(&u8_);
    let g = Goldens::load("tiny-retrieval");
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let mut a = BlipModel::open(&s8, &SessionOptions::default()).unwrap();
    let mut b = BlipModel::open(&u8_, &SessionOptions::default()).unwrap();
    let (ea, eb) = (
        a.vision(&pixels, 3).unwrap().embeds.unwrap(),
        b.vision(&pixels, 3).unwrap().embeds.unwrap(),
    );
    // Same codes, shifted by the zero point: the integer products are identical.
    let d = max_diff(ea.as_slice().unwrap(), eb.as_slice().unwrap());
    assert!(d < 1e-5, "QUInt8 vs QInt8 embeddings differ by {d}");
}

#[test]
fn int4_everywhere_with_embeddings_shrinks_the_package_and_stays_close() {
    let fp32 = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    let g = Goldens::load("tiny-retrieval");
    let texts: Vec<String> = serde_json::from_value(g.meta["texts"].clone()).unwrap();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut a = BlipModel::open(&fp32.pkg.dir, &SessionOptions::default()).unwrap();
    let ta = a.embed_texts(&texts).unwrap();
    for symmetric in [true, false] {
        let out = fp32.dir.path().join(format!("q4-{symmetric}"));
        let stats = quantize_package(
            &fp32.pkg.dir,
            &out,
            &QuantizeOptions {
                scheme: Scheme::Int4 {
                    block_size: 32,
                    accuracy_level: 0,
                },
                policy: Policy::All,
                int4_symmetric: symmetric,
                ..Default::default()
            },
        )
        .unwrap();
        let text = stats.iter().find(|s| s.role == "text_encoder").unwrap();
        assert_eq!(text.other_rewrites, 1, "the word-embedding Gather");
        // The tiny text graphs are mostly vocabulary: 4-bit rows cut them to under a fifth.
        assert!(
            text.bytes_after * 5 < text.bytes_before,
            "{} -> {}",
            text.bytes_before,
            text.bytes_after
        );
        assert_checks(&out);
        let mut b = BlipModel::open(&out, &SessionOptions::default()).unwrap();
        let tb = b.embed_texts(&texts).unwrap();
        for r in 0..3 {
            let c = cosine(ta.row(r).as_slice().unwrap(), tb.row(r).as_slice().unwrap());
            assert!(
                c > 0.97 && c < 1.0 - 1e-6,
                "symmetric {symmetric}, row {r}: cosine {c}"
            );
        }
    }
}

#[test]
fn targets_record_their_runtimes_and_refuse_what_cannot_run_there() {
    use blip_quantize::{QuantizeError, Target};
    let fp32 = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    assert_eq!(
        manifest_json(&fp32.pkg.dir)["runtimes"],
        serde_json::json!([
            "ort",
            "node",
            "web",
            "webgpu",
            "openvino",
            "tract",
            "ort-mobile"
        ])
    );
    let web = fp32.dir.path().join("web");
    let t = Target::Web;
    let scheme = t.default_scheme();
    let opts = QuantizeOptions {
        policy: t.default_policy(&scheme),
        scheme,
        weight_type: t.default_weight_type(),
        target: t,
        ..Default::default()
    };
    let stats = quantize_package(&fp32.pkg.dir, &web, &opts).unwrap();
    assert_eq!(stats.len(), 3, "every graph, the decoder too: {stats:?}");
    assert_checks(&web);
    let m = manifest_json(&web);
    assert_eq!(m["runtimes"], serde_json::json!(["web", "ort-mobile"]));
    assert_eq!(m["precision"], "int8");
    assert!(
        m["graphs"]["decoder"]["quantization"]
            .as_str()
            .is_some_and(|q| q.contains("QUInt8")),
        "{m}"
    );
    // A web package quantized again for WebGPU would be made for nothing.
    let webgpu_int4 = QuantizeOptions {
        scheme: Target::Webgpu.int4(32, None),
        policy: Policy::Decoder,
        target: Target::Webgpu,
        ..Default::default()
    };
    let native_int4 = QuantizeOptions {
        scheme: Scheme::Int4 {
            block_size: 32,
            accuracy_level: 4,
        },
        policy: Policy::Decoder,
        ..Default::default()
    };
    let partial = fp32.dir.path().join("web-int8-encoders");
    quantize_package(
        &fp32.pkg.dir,
        &partial,
        &QuantizeOptions {
            policy: Policy::Encoders,
            ..opts.clone()
        },
    )
    .unwrap();
    let out = fp32.dir.path().join("x");
    let err = quantize_package(&partial, &out, &webgpu_int4).unwrap_err();
    assert!(matches!(err, QuantizeError::NoRuntime { .. }), "{err}");
    assert!(
        err.to_string().contains("made for web, ort-mobile"),
        "{err}"
    );
    assert!(!out.exists());
    // WebGPU has no dynamic-INT8 kernels.
    let err = quantize_package(
        &fp32.pkg.dir,
        &out,
        &QuantizeOptions {
            target: Target::Webgpu,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("--target webgpu refuses int8"),
        "{err}"
    );
    assert!(!out.exists());
    // Native INT8 then native INT4: the recommended package stays made for native ONNX Runtime
    // (not ORT mobile: its full-range QInt8 encoders saturate there on x86 without VNNI).
    let int8 = fp32.dir.path().join("int8");
    quantize_package(&fp32.pkg.dir, &int8, &QuantizeOptions::default()).unwrap();
    let mixed = fp32.dir.path().join("mixed");
    quantize_package(&int8, &mixed, &native_int4).unwrap();
    assert_eq!(
        manifest_json(&mixed)["runtimes"],
        serde_json::json!(["ort", "node"])
    );
}
