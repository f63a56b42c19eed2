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
