//! A graph file swapped for another package's graph is refused when its session opens, naming the
//! file and the difference, even when the manifest's checksum was updated to match the new file.

use blip_convert::ConvertOptions;
use blip_runtime::{BlipModel, RuntimeError, SessionOptions};
use blip_testkit::{convert_fixture, fixture};

#[test]
fn a_swapped_graph_with_a_matching_checksum_is_refused_at_open() {
    let retrieval = convert_fixture(
        &fixture("models/tiny-retrieval"),
        &ConvertOptions::default(),
    );
    let caption = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    let role = "vision_encoder";
    // The caption head's vision encoder has no image_embeds output.
    let target = retrieval.pkg.graph_path(role).unwrap();
    std::fs::copy(caption.pkg.graph_path(role).unwrap(), &target).unwrap();
    let manifest_path = retrieval.pkg.dir.join("blip.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let sha = blip_package::sha256_files(std::slice::from_ref(&target)).unwrap();
    manifest["graphs"][role]["sha256"] = sha.into();
    manifest["graphs"][role]["bytes"] = std::fs::metadata(&target).unwrap().len().into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let opts = SessionOptions {
        intra_threads: 1,
        ..Default::default()
    };
    let err = match BlipModel::open(&retrieval.pkg.dir, &opts) {
        Ok(_) => panic!("a package with a swapped vision encoder opened"),
        Err(e) => e,
    };
    assert!(matches!(err, RuntimeError::GraphMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&target.display().to_string()) && msg.contains("image_embeds"),
        "{msg}"
    );
    // The untouched caption package still opens.
    BlipModel::open(&caption.pkg.dir, &opts).unwrap();
}

#[test]
fn lengths_past_the_models_positions_are_refused_before_inference() {
    let caption = convert_fixture(&fixture("models/tiny-caption"), &ConvertOptions::default());
    let mut m = BlipModel::open(
        &caption.pkg.dir,
        &SessionOptions {
            intra_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let positions = m.package.manifest.model.max_position_embeddings;
    let image = blip_runtime::ImageInput::Path(fixture("images/synthetic_a.png"));
    let opts = blip_runtime::CaptionOptions {
        max_length: positions + 1,
        ..Default::default()
    };
    let err = m
        .caption(std::slice::from_ref(&image), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_length") && err.contains(&positions.to_string()),
        "{err}"
    );
    let long_prompt = "a ".repeat(positions + 5);
    let opts = blip_runtime::CaptionOptions {
        prompt: long_prompt,
        ..Default::default()
    };
    let err = m.caption(&[image], &opts).unwrap_err().to_string();
    assert!(
        err.contains("prompt \"a a a")
            && err.contains(&format!("over the model's {positions} positions")),
        "{err}"
    );
    assert_eq!(m.images_encoded(), 0, "inference ran on refused input");
}
