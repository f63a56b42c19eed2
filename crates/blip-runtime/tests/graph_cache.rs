//! The optimized-graph cache (`BLIP_ONNX_CACHE/optimized-graphs`): the first open saves what ONNX
//! Runtime's optimizer made of each graph, later opens load it with the optimizer off, and the
//! answers are exactly those of an open that optimizes (FP32 and the default INT8 + INT4 package);
//! a cached graph changed after it was written is not used but made again.
//!
//! One test in its own binary: it points the cache at a temporary folder through the environment.

use std::path::{Path, PathBuf};

use blip_convert::ConvertOptions;
use blip_package::FileStamp;
use blip_runtime::{BlipModel, CaptionOptions, ImageInput, SessionOptions};
use blip_testkit::{convert_fixture, fixture};

/// Greedy and beam-3 caption ids of three shapes test images, and the vision states of the first.
fn answers(dir: &Path) -> (Vec<Vec<i64>>, Vec<f32>) {
    let opts = SessionOptions {
        intra_threads: 1,
        ..Default::default()
    };
    let mut m = BlipModel::open(dir, &opts).unwrap();
    let images: Vec<ImageInput> = (0..3)
        .map(|i| ImageInput::Path(fixture(&format!("shapes/test/images/test_{i:05}.png"))))
        .collect();
    let mut ids = Vec::new();
    for strategy in blip_testkit::greedy_and_beam() {
        let opts = CaptionOptions {
            strategy,
            ..Default::default()
        };
        for c in m.caption(&images, &opts).unwrap() {
            ids.push(c.unwrap().ids);
        }
    }
    let px = m.pixel_values(&images[0]).unwrap();
    let hidden = m.vision(&px, 1).unwrap().hidden;
    (ids, hidden.iter().copied().collect())
}

/// Every file in the cache with its stamp as it is now.
fn cached(cache: &Path) -> Vec<(PathBuf, FileStamp)> {
    let mut out = Vec::new();
    let mut dirs = vec![cache.join("optimized-graphs")];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push((p.clone(), FileStamp::of(&p, "").unwrap()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn cached_graphs_answer_as_the_optimizer_does_and_a_changed_one_is_made_again() {
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("BLIP_ONNX_CACHE", cache.path()) };
    let fp32 = convert_fixture(
        &fixture("shapes/models/shapes-caption"),
        &ConvertOptions::default(),
    );
    // The default quantized package: INT8 encoders, then the INT4 decoder.
    let quant = tempfile::tempdir().unwrap();
    let int8 = quant.path().join("int8");
    let mixed = quant.path().join("mixed");
    let target = blip_quantize::Target::Native;
    for (src, out, scheme) in [
        (fp32.pkg.dir.as_path(), &int8, blip_quantize::Scheme::Int8),
        (
            int8.as_path(),
            &mixed,
            blip_quantize::Scheme::Int4 {
                block_size: blip_quantize::DEFAULT_INT4_BLOCK_SIZE,
                accuracy_level: blip_quantize::DEFAULT_INT4_ACCURACY_LEVEL,
            },
        ),
    ] {
        let opts = blip_quantize::QuantizeOptions {
            policy: target.default_policy(&scheme),
            scheme,
            ..Default::default()
        };
        blip_quantize::quantize_package(src, out, &opts).unwrap();
    }
    for dir in [fp32.pkg.dir.as_path(), mixed.as_path()] {
        let earlier = cached(cache.path());
        let before = earlier.len();
        unsafe { std::env::set_var("BLIP_ONNX_GRAPH_CACHE", "0") };
        let want = answers(dir);
        unsafe { std::env::remove_var("BLIP_ONNX_GRAPH_CACHE") };
        assert_eq!(
            cached(cache.path()).len(),
            before,
            "the cache off writes nothing"
        );
        assert_eq!(answers(dir), want, "{}: first open (saves)", dir.display());
        let saved = cached(cache.path());
        // Three graphs, each saved with its stamp, under this ONNX Runtime build's minor version
        // and commit (a patch release or another build of the same version optimizes again).
        assert_eq!(saved.len(), before + 6, "{saved:#?}");
        let library = blip_runtime::OrtLibrary::init().unwrap();
        let build = library.build;
        let commit = build
            .strip_prefix(&format!("1.{}-", library.minor_version))
            .unwrap_or_else(|| panic!("build {build:?} names no commit"));
        assert!(
            commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{build}"
        );
        let key = cache
            .path()
            .join("optimized-graphs")
            .join(format!("onnxruntime-{build}"));
        assert!(saved.iter().all(|(p, _)| p.starts_with(&key)), "{saved:#?}");
        assert!(
            saved
                .iter()
                .all(|(p, _)| !p.to_string_lossy().ends_with(".partial"))
        );
        assert_eq!(answers(dir), want, "{}: from the cache", dir.display());
        assert_eq!(cached(cache.path()), saved, "a hit rewrites nothing");

        // A cached graph of this package written to after it was saved is optimized again.
        let (graph, _) = saved
            .iter()
            .find(|(p, _)| {
                p.extension().is_some_and(|e| e == "onnx") && !earlier.iter().any(|(q, _)| q == p)
            })
            .unwrap();
        let mut bytes = std::fs::read(graph).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(graph, &bytes).unwrap();
        assert_eq!(
            answers(dir),
            want,
            "{}: after a damaged entry",
            dir.display()
        );
        let again = cached(cache.path());
        assert_eq!(again.len(), saved.len());
        let remade = again.iter().find(|(p, _)| p == graph).unwrap();
        assert!(std::fs::metadata(graph).unwrap().len() > bytes.len() as u64);
        assert_ne!(
            &remade.1,
            &saved.iter().find(|(p, _)| p == graph).unwrap().1,
            "the damaged entry was made again"
        );
    }
}
