//! `check` passes on every package the converter writes and names the item a damaged package fails.

use blip_convert::{ConvertOptions, ExternalData};
use blip_testkit::{convert_fixture, convert_pth_48, fixture};
use blip_validate::check;

fn edit_manifest(dir: &std::path::Path, f: impl Fn(&mut serde_json::Value)) {
    let path = dir.join("blip.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn failing(dir: &std::path::Path) -> Vec<(String, String)> {
    let r = check(dir, false);
    r.failures()
        .map(|i| (i.item.clone(), i.reason.clone()))
        .collect()
}

#[test]
fn every_converted_package_passes() {
    let mut packages = vec![convert_pth_48()];
    for head in ["caption", "retrieval", "vqa"] {
        packages.push(convert_fixture(
            &fixture(&format!("models/tiny-{head}")),
            &ConvertOptions::default(),
        ));
    }
    packages.push(convert_fixture(
        &fixture("models/tiny-caption"),
        &ConvertOptions {
            external_data: ExternalData::Always,
            ..Default::default()
        },
    ));
    for c in &packages {
        let r = check(&c.pkg.dir, true);
        assert!(r.passed(), "{:#?}", r.failures().collect::<Vec<_>>());
        // manifest, head graphs, tokenizer; per graph 8 static items and the ORT load
        assert_eq!(r.items.len(), 3 + c.pkg.manifest.graphs.len() * 9);
    }
}

#[test]
fn damaged_packages_fail_with_the_item_named() {
    let c = convert_fixture(
        &fixture("models/tiny-caption"),
        &ConvertOptions {
            external_data: ExternalData::Always,
            ..Default::default()
        },
    );
    let dir = &c.pkg.dir;

    edit_manifest(dir, |m| {
        m["graphs"]["decoder"]["sha256"] = "00".repeat(32).into()
    });
    let f = failing(dir);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, "decoder: checksum");

    edit_manifest(dir, |m| m["tokens"]["bos"] = 101.into());
    assert!(
        failing(dir)
            .iter()
            .any(|(i, r)| i == "package: tokenizer ids" && r.contains("[DEC]"))
    );

    edit_manifest(dir, |m| {
        m["graphs"]["cross_kv"]["inputs"][0]["name"] = "image_states".into()
    });
    assert!(
        failing(dir)
            .iter()
            .any(|(i, r)| i == "cross_kv: input names" && r.contains("image_states"))
    );

    edit_manifest(dir, |m| {
        m["graphs"]["vision_encoder"]["outputs"][0]["dims"][0] = 1.into()
    });
    assert!(
        failing(dir)
            .iter()
            .any(|(i, _)| i == "vision_encoder: output types and dynamic axes")
    );

    // A missing external data file, like a missing graph file, already fails the opening.
    std::fs::remove_file(dir.join("decoder.onnx.data")).unwrap();
    assert!(failing(dir).iter().any(|(i, r)| i == "package: manifest"
        && r.contains("graph decoder")
        && r.contains("decoder.onnx.data is missing")));

    std::fs::write(dir.join("blip.json"), "{ not json").unwrap();
    let f = failing(dir);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0, "package: manifest");
}

#[test]
fn targets_report_what_each_runtime_runs_with_reasons() {
    use blip_package::Runtime;
    use blip_quantize::{Policy, QuantizeOptions, Scheme, quantize_package};
    use blip_validate::check_targets;
    let fp32 = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    // The converted package is standard ops: every runtime runs every graph, and it is made for all.
    let r = check_targets(&fp32.pkg.dir, &Runtime::ALL);
    assert!(r.passed(), "{:#?}", r.failures().collect::<Vec<_>>());
    assert_eq!(
        r.items
            .iter()
            .filter(|i| i.item.contains(": runs on "))
            .count(),
        3 * 7
    );
    let reason = |r: &blip_validate::CheckReport, item: &str| {
        r.items
            .iter()
            .find(|i| i.item == item)
            .map(|i| (i.pass, i.reason.clone()))
            .unwrap_or_else(|| panic!("no item {item}: {r:#?}"))
    };
    let (pass, why) = reason(&r, "package: made for tract");
    assert!(pass && why.starts_with("yes"), "{why}");
    let (_, why) = reason(&r, "package: OpenVINO precision");
    assert!(why.contains("INFERENCE_PRECISION_HINT=f32"), "{why}");

    // FP16: the LM head is written as MatMul + Add (tract fails on an FP16 Gemm), so every graph
    // loads on tract; but tract computes LayerNormalization and Softmax in half precision, which the
    // portability suite measures outside its gate: check declares the graphs that have them and passes
    // the cross K/V projection, with a note. The package is made for native ONNX Runtime.
    let fp16 = fp32.dir.path().join("fp16");
    let opts = QuantizeOptions {
        scheme: Scheme::Fp16,
        policy: Policy::All,
        ..Default::default()
    };
    quantize_package(&fp32.pkg.dir, &fp16, &opts).unwrap();
    let r = check_targets(&fp16, &[Runtime::Tract, Runtime::Web]);
    let mut failing: Vec<&str> = r.failures().map(|i| i.item.as_str()).collect();
    failing.sort();
    assert_eq!(
        failing,
        ["decoder: runs on tract", "vision_encoder: runs on tract"],
        "{r:#?}"
    );
    for graph in ["decoder", "vision_encoder"] {
        let (_, why) = reason(&r, &format!("{graph}: runs on tract"));
        assert!(
            why.starts_with("FP16: tract computes LayerNormalization, Softmax")
                && why.contains("half precision")
                && !why.contains("Gemm"),
            "{graph}: {why}"
        );
    }
    let (pass, why) = reason(&r, "cross_kv: runs on tract");
    assert!(pass && why.contains("half precision"), "{why}");
    let (pass, why) = reason(&r, "package: made for web");
    assert!(
        pass && why.starts_with("no, made for ort, node, ort-mobile"),
        "{why}"
    );
    let (pass, why) = reason(&r, "vision_encoder: runs on web");
    assert!(pass && !why.contains("half precision"), "{why}");

    // Native INT8 + INT4 at accuracy level 4: runs on the web, where level 4 does not take effect,
    // and on WebGPU the dynamic-INT8 ops fall back to wasm; both said, neither a failure.
    let int8 = fp32.dir.path().join("int8");
    quantize_package(&fp32.pkg.dir, &int8, &QuantizeOptions::default()).unwrap();
    let mixed = fp32.dir.path().join("mixed");
    let int4 = QuantizeOptions {
        scheme: Scheme::Int4 {
            block_size: 32,
            accuracy_level: 4,
        },
        policy: Policy::Decoder,
        ..Default::default()
    };
    quantize_package(&int8, &mixed, &int4).unwrap();
    let r = check_targets(&mixed, &[Runtime::Web, Runtime::Webgpu, Runtime::Ort]);
    assert!(r.passed(), "{:#?}", r.failures().collect::<Vec<_>>());
    let (_, why) = reason(&r, "decoder: runs on web");
    assert!(why.contains("accuracy level 4"), "{why}");
    let (_, why) = reason(&r, "decoder: runs on ort");
    assert!(!why.contains("accuracy level"), "{why}");
    let (_, why) = reason(&r, "vision_encoder: runs on webgpu");
    assert!(
        why.contains("MatMulInteger") && why.contains("run on wasm"),
        "{why}"
    );
}
