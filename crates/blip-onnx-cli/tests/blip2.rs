//! BLIP-2 retrieval through the `blip-onnx` binary: convert, inspect, `itm`, and `index` +
//! `search` over a multi-vector index. Every number equals the library's on the same image file
//! (≤ 1e-4), and PyTorch's within what decoding and resizing the file allows: our resize is within
//! one level of Pillow's (`image_formats_and_layouts_match_pillow`), which moves these tiny
//! model's logits by up to ~1e-4 (the library itself matches PyTorch ≤ 1e-4 on the same pixels:
//! blip-runtime's `blip2_retrieval_scores_and_ranking_match_pytorch`).

use crate::common::blip;
use blip_testkit::{Goldens, fixture};

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// From the same file: the library's answer.
const SAME_PIXELS: f64 = 1e-4;
/// From Pillow's pixels of the file (the goldens): within a level of resize rounding.
const PILLOW_PIXELS: f64 = 1e-3;

#[track_caller]
fn close(what: &str, got: &serde_json::Value, want: f32, tolerance: f64) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {got} is not a number"));
    assert!(
        (got - f64::from(want)).abs() <= tolerance,
        "{what}: {got} vs {want} (tolerance {tolerance})"
    );
}

#[test]
fn blip2_retrieval_converts_scores_indexes_and_searches_as_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("blip2");
    let p = pkg.to_str().unwrap();
    let ck = fixture("models/tiny-blip2-retrieval");
    let (code, stdout, stderr) = blip(&["convert", ck.to_str().unwrap(), "-o", p, "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json(&stdout)["head"], "retrieval");
    let (code, stdout, stderr) = blip(&["check", p]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stdout, stderr) = blip(&["inspect", p, "--run", "--threads", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("graph") && l.ends_with("ok"))
            .count(),
        3,
        "{stdout}"
    );

    let g = Goldens::load("tiny-blip2-retrieval");
    let texts: Vec<String> = serde_json::from_value(g.meta["texts"].clone()).unwrap();
    let images: Vec<String> = serde_json::from_value(g.meta["images"].clone()).unwrap();
    let (itc, itm) = (g.f("logits_per_image"), g.f("itm_logits"));

    // itm: each image with every text; the goldens pair image i with text i for ITM.
    let mut library =
        blip_runtime::BlipModel::open(&pkg, &blip_runtime::SessionOptions::default()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (i, name) in images.iter().enumerate() {
        let image = fixture(&format!("images/{name}"));
        let mut args = vec!["itm", "-p", p, image.to_str().unwrap()];
        args.extend(refs.iter().copied());
        args.extend(["--format", "json"]);
        let (code, stdout, stderr) = blip(&args);
        assert_eq!(code, Some(0), "{stderr}");
        let rows = json(&stdout);
        let input = blip_runtime::ImageInput::Path(image.clone());
        let want = library
            .itm(&library.pixel_values(&input).unwrap(), &refs)
            .unwrap();
        for (j, (row, w)) in rows.as_array().unwrap().iter().zip(&want).enumerate() {
            let what = format!("image {i} text {j}");
            close(&what, &row["itc_similarity"], w.itc, SAME_PIXELS);
            close(&what, &row["itc_similarity"], itc[[i, j]], PILLOW_PIXELS);
            for c in 0..2 {
                close(&what, &row["itm_logits"][c], w.logits[c], SAME_PIXELS);
            }
        }
        for c in 0..2 {
            let what = format!("pair {i} ITM logit {c}");
            close(&what, &rows[i]["itm_logits"][c], itm[[i, c]], PILLOW_PIXELS);
        }
    }

    // index + search: each image stored as its 8 query vectors, scored by the best one.
    let folder = dir.path().join("images");
    std::fs::create_dir(&folder).unwrap();
    for name in &images {
        std::fs::copy(fixture(&format!("images/{name}")), folder.join(name)).unwrap();
    }
    let idx = dir.path().join("blip2.index");
    let (code, _, stderr) = blip(&[
        "index",
        "-p",
        p,
        folder.to_str().unwrap(),
        "-o",
        idx.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let store = blip_index::Store::open_read_only(&idx).unwrap();
    assert_eq!(
        (store.len().unwrap(), store.vectors()),
        (3, 3 * 8),
        "every query vector of every image is indexed"
    );
    drop(store);
    for (t, text) in texts.iter().enumerate() {
        let (code, stdout, stderr) = blip(&[
            "search",
            "-p",
            p,
            idx.to_str().unwrap(),
            text,
            "-k",
            "3",
            "--rerank",
            "2",
            "--format",
            "json",
        ]);
        assert_eq!(code, Some(0), "{stderr}");
        let hits = json(&stdout);
        let hits = hits.as_array().unwrap();
        assert_eq!(hits.len(), 3);
        let mut best_first: Vec<usize> = (0..3).collect();
        best_first.sort_by(|&a, &b| itc[[b, t]].total_cmp(&itc[[a, t]]));
        for h in hits {
            let name = h["image"].as_str().unwrap();
            let i = images
                .iter()
                .position(|n| name.ends_with(n.as_str()))
                .unwrap();
            let what = format!("text {t} image {i}");
            close(&what, &h["itc"], itc[[i, t]], PILLOW_PIXELS);
            if i == t && !h["itm"].is_null() {
                close(&what, &h["itm"], itm[[i, 1]], PILLOW_PIXELS);
            }
        }
        // The image left out of the rerank is the one with the lowest ITC.
        assert!(hits[2]["itm"].is_null());
        assert!(
            hits[2]["image"]
                .as_str()
                .unwrap()
                .ends_with(images[best_first[2]].as_str())
        );
    }

    // tag: each label scored by the image's best query, as the library scores it.
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "red circle\nwoman\nblue square\n").unwrap();
    let image = fixture(&format!("images/{}", images[1]));
    let (code, stdout, stderr) = blip(&[
        "tag",
        "-p",
        p,
        "--labels",
        labels.to_str().unwrap(),
        "--top-k",
        "3",
        image.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let tags = json(&stdout);
    let prompts: Vec<String> = ["red circle", "woman", "blue square"]
        .iter()
        .map(|l| blip_runtime::tag::tag_prompt(l))
        .collect();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let label_embeds = library.embed_texts(&prompts).unwrap();
    let (embeds, _) = library
        .embed_images(&[blip_runtime::ImageInput::Path(image.clone())])
        .unwrap();
    for t in tags[0]["tags"].as_array().unwrap() {
        let j = ["red circle", "woman", "blue square"]
            .iter()
            .position(|l| t["label"] == *l)
            .unwrap();
        let want = blip_runtime::itc_similarity(
            embeds.index_axis(ndarray::Axis(0), 0),
            label_embeds.row(j),
        );
        close(
            &format!("tag {}", t["label"]),
            &t["score"],
            want,
            SAME_PIXELS,
        );
    }

    // Raw embeddings are one vector per image: a BLIP-2 package says why it has none.
    let image = fixture(&format!("images/{}", images[0]));
    let (code, _, stderr) = blip(&["embed", "-p", p, "--image", image.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("8 vectors (BLIP-2"), "{stderr}");
}
