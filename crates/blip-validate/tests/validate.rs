//! `validate` on the fixture packages: FP32 passes every gate against the PyTorch goldens; a
//! deliberately perturbed package (checksums updated, so `check` still passes) fails, naming the gate.

use std::path::Path;

use blip_convert::ConvertOptions;
use blip_testkit::{convert_fixture, fixture};
use blip_validate::{ValidateOptions, validate};
use onnx_writer::onnx::ModelProto;
use prost::Message;

fn against_goldens(name: &str) -> ValidateOptions {
    ValidateOptions {
        reference: Some(fixture(&format!("goldens/{name}.json"))),
        images_dir: Some(fixture("images")),
        long_run: 300,
        ..Default::default()
    }
}

fn assert_passes(report: &blip_validate::ValidateReport, expected: &[&str]) {
    assert!(
        report.passed(),
        "{:#?}",
        report.failures().collect::<Vec<_>>()
    );
    for e in expected {
        assert!(
            report
                .gates
                .iter()
                .any(|g| g.name.contains(e) && g.pass == Some(true)),
            "no passing gate {e:?} in {:#?}",
            report.gates.iter().map(|g| &g.name).collect::<Vec<_>>()
        );
    }
}

#[test]
fn fp32_caption_package_passes_every_gate() {
    let c = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    let report = validate(&c.pkg.dir, &against_goldens("tiny-caption")).unwrap();
    assert_passes(
        &report,
        &[
            "preprocess synthetic_a.png",
            "vision.last_hidden_state",
            "decoder.logits",
            "caption beam3_prompt exact match",
            "caption greedy exact match",
            "batch 1..8: vision states",
            "batch 1..8: beam-3 captions",
            "edge: 1x1 image",
            "edge: very wide image",
            "edge: grayscale image",
            "edge: empty text",
            "long run: 300 inferences",
        ],
    );
}

#[test]
fn fp32_retrieval_and_vqa_packages_pass_and_agree_with_themselves() {
    let r = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    let opts = ValidateOptions {
        against: Some(r.pkg.dir.clone()),
        max_batch: 4,
        long_run: 50,
        ..against_goldens("tiny-retrieval")
    };
    let report = validate(&r.pkg.dir, &opts).unwrap();
    assert_passes(
        &report,
        &[
            "image_embeds",
            "text.text_embeds",
            "itc.similarity",
            "itm.logits",
            "against: ITC top-1",
            "against: text embedding cosine",
            "batch 1..4: text embeddings",
        ],
    );
    let v = convert_fixture(&fixture("models/tiny-vqa"), &ConvertOptions::default());
    let opts = ValidateOptions {
        max_batch: 3,
        long_run: 0,
        ..against_goldens("tiny-vqa")
    };
    let report = validate(&v.pkg.dir, &opts).unwrap();
    assert_passes(
        &report,
        &[
            "question.last_hidden_state",
            "answer beam3 exact match",
            "answer greedy exact match",
        ],
    );
}

/// Maps every value of the float initializer `name` of `role`'s graph through `edit`, and updates
/// the manifest's checksum so only the numbers are wrong.
fn perturb(pkg: &Path, role: &str, name: &str, edit: impl Fn(f32) -> f32) {
    let manifest_path = pkg.join("blip.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let file = pkg.join(manifest["graphs"][role]["file"].as_str().unwrap());
    let mut model = ModelProto::decode(std::fs::read(&file).unwrap().as_slice()).unwrap();
    let t = model
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no initializer {name}"));
    let raw = t.raw_data.as_mut().unwrap();
    for c in raw.chunks_exact_mut(4) {
        let v = edit(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        c.copy_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&file, model.encode_to_vec()).unwrap();
    manifest["graphs"][role]["sha256"] = blip_package::sha256_files(std::slice::from_ref(&file))
        .unwrap()
        .into();
    manifest["graphs"][role]["bytes"] = std::fs::metadata(&file).unwrap().len().into();
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_perturbed_package_passes_check_but_fails_validate() {
    let good = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    let bad = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    perturb(
        &bad.pkg.dir,
        "vision_encoder",
        "vision_model.post_layernorm.bias",
        |v| v + 0.01,
    );
    assert!(blip_validate::check(&bad.pkg.dir, true).passed());
    let opts = ValidateOptions {
        against: Some(good.pkg.dir.clone()),
        max_batch: 2,
        long_run: 0,
        ..against_goldens("tiny-caption")
    };
    let report = validate(&bad.pkg.dir, &opts).unwrap();
    assert!(!report.passed());
    let failed: Vec<&str> = report.failures().map(|g| g.name.as_str()).collect();
    assert!(
        failed.contains(&"reference: vision.last_hidden_state max abs diff"),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"against: vision states max abs diff"),
        "{failed:?}"
    );
    let vision = report
        .gates
        .iter()
        .find(|g| g.name == "reference: vision.last_hidden_state max abs diff")
        .unwrap();
    assert!((vision.value - 0.01).abs() < 1e-3, "{vision:?}");
    // Runtime checks do not depend on the reference: they still pass.
    assert!(
        report
            .gates
            .iter()
            .any(|g| g.name.starts_with("edge: ") && g.pass == Some(true))
    );
}

#[test]
fn a_retrieval_package_with_flipped_text_embeddings_fails_the_against_gates() {
    // The text projection negated (weight and bias): every text embedding is the original's
    // opposite, so its cosine with the original is -1 and every text ranks the images backwards.
    // The vision side is untouched.
    let good = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    let bad = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    for name in ["text_proj.weight", "text_proj.bias"] {
        perturb(&bad.pkg.dir, "text_encoder", name, |v| -v);
    }
    assert!(blip_validate::check(&bad.pkg.dir, true).passed());
    let opts = ValidateOptions {
        against: Some(good.pkg.dir.clone()),
        max_batch: 0,
        long_run: 0,
        ..against_goldens("tiny-retrieval")
    };
    let report = validate(&bad.pkg.dir, &opts).unwrap();
    let gate = |name: &str| {
        report
            .gates
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no gate {name:?}"))
    };
    let top1 = gate("against: ITC top-1 agreement");
    assert_eq!((top1.pass, top1.value), (Some(false), 0.0), "{top1:?}");
    let text = gate("against: text embedding cosine (min)");
    assert_eq!(text.pass, Some(false), "{text:?}");
    assert!((text.value + 1.0).abs() < 1e-4, "{text:?}");
    let image = gate("against: image embedding cosine (min)");
    assert_eq!(image.pass, Some(true), "{image:?}");
    assert!(!report.passed());
}

#[test]
fn quantized_package_is_gated_by_cosine_and_agreement_not_by_fp32_tolerance() {
    let fp32 = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    let int8 = fp32.dir.path().join("int8");
    blip_quantize::quantize_package(&fp32.pkg.dir, &int8, &Default::default()).unwrap();
    let opts = ValidateOptions {
        against: Some(fp32.pkg.dir.clone()),
        max_batch: 0,
        long_run: 0,
        ..against_goldens("tiny-retrieval")
    };
    let report = validate(&int8, &opts).unwrap();
    assert_passes(
        &report,
        &["against: image embedding cosine", "against: ITC top-1"],
    );
    // No FP32 max-abs gate for a quantized package, but its reference diffs are reported and nonzero.
    assert!(
        !report
            .gates
            .iter()
            .any(|g| g.name == "against: vision states max abs diff")
    );
    let d = report
        .gates
        .iter()
        .find(|g| g.name == "reference: vision.image_embeds max abs diff")
        .unwrap();
    assert!(d.value > 1e-4 && d.value < 0.5, "{d:?}");
    // A stricter cosine gate than INT8 reaches makes the same package fail.
    let strict = ValidateOptions {
        thresholds: blip_validate::Thresholds {
            min_cosine: 0.999_999_9,
            ..Default::default()
        },
        ..opts
    };
    assert!(!validate(&int8, &strict).unwrap().passed());
}
