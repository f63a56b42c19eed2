//! Runtime tasks against the PyTorch reference: preprocessing vs Pillow, captions and answers token-exact
//! with transformers' `generate` (greedy, beam, penalties, early stopping; with and without prompt),
//! cached vs uncached decoding, ITC / ITM / rerank scores, VQA rank mode; bad input.

use blip_convert::ConvertOptions;
use blip_runtime::{
    BlipModel, CandidateStates, CaptionOptions, ImageInput, SessionOptions, Strategy, VqaOptions,
};
use blip_testkit::{Converted, Goldens, assert_close, convert_fixture, convert_pth_48, fixture};
use ndarray::Axis;

fn model(name: &str) -> (Converted, BlipModel) {
    let c = convert_fixture(
        &fixture(&format!("models/{name}")),
        &ConvertOptions::default(),
    );
    let m = BlipModel::open(
        &c.pkg.dir,
        &SessionOptions {
            intra_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    (c, m)
}

fn images(g: &Goldens) -> Vec<ImageInput> {
    let names: Vec<String> = serde_json::from_value(g.meta["images"].clone()).unwrap();
    names
        .iter()
        .map(|n| ImageInput::Path(fixture(&format!("images/{n}"))))
        .collect()
}

fn options_from(g: &Goldens, key: &str) -> CaptionOptions {
    let s = g.settings(key);
    let num_beams = s["num_beams"].as_u64().unwrap() as usize;
    let strategy = if num_beams > 1 {
        Strategy::Beam {
            num_beams,
            length_penalty: s["length_penalty"].as_f64().unwrap_or(1.0) as f32,
            early_stopping: s["early_stopping"].as_bool().unwrap_or(false),
        }
    } else {
        Strategy::Greedy
    };
    CaptionOptions {
        prompt: g.meta["generate"][key]["prompt"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        strategy,
        max_length: s["max_length"].as_u64().unwrap() as usize,
        min_length: s["min_length"].as_u64().unwrap_or(0) as usize,
        repetition_penalty: s["repetition_penalty"].as_f64().unwrap_or(1.0) as f32,
        no_cache: false,
    }
}

/// HF pads greedy rows with pad; its beam search fills with pad, or eos when pad is 0.
fn fill_for(opts: &CaptionOptions) -> i64 {
    if matches!(opts.strategy, Strategy::Beam { .. }) {
        102
    } else {
        0
    }
}

#[test]
fn pixel_values_match_pillow() {
    for golden in ["tiny-caption", "tiny-caption-pth-48"] {
        let g = Goldens::load(golden);
        let size = g.meta["image_size"].as_u64().unwrap() as usize;
        let pre = blip_preprocess::ImagePreprocessor::new(&blip_package::Preprocess::blip(size));
        for (i, input) in images(&g).iter().enumerate() {
            let ImageInput::Path(path) = input else {
                unreachable!()
            };
            let px = pre.pixel_values(&pre.load_path(path).unwrap()).unwrap();
            let want = g.f("pixel_values").index_axis(Axis(0), i).to_owned();
            let n = size * size;
            let mut worst_level = 0f32;
            for c in 0..3 {
                for j in 0..n {
                    let d = (px[c * n + j] - want.as_slice().unwrap()[c * n + j]).abs()
                        * pre.std[c]
                        * 255.0;
                    worst_level = worst_level.max(d);
                }
            }
            let is_png = path.extension().unwrap() == "png";
            // PNG: the resize alone, within one level of Pillow. JPEG also carries decoder differences.
            let limit = if is_png { 1.01 } else { 6.0 };
            assert!(
                worst_level <= limit,
                "{golden} {}: {worst_level} levels from Pillow",
                path.display()
            );
        }
    }
}

fn check_captions(golden: &str, pkg_model: &mut BlipModel) {
    let g = Goldens::load(golden);
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let keys: Vec<String> = g.meta["generate"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(keys.len() >= 10);
    for key in keys {
        let opts = options_from(&g, &key);
        let caps = pkg_model.caption_pixels(&pixels, 3, &opts).unwrap();
        let got: Vec<Vec<i64>> = {
            let generated = blip_runtime::Generated {
                sequences: caps.iter().map(|c| c.ids.clone()).collect(),
                scores: None,
            };
            generated.padded(fill_for(&opts))
        };
        assert_eq!(
            got,
            g.ids(&key),
            "{golden} {key}: token ids differ from transformers' generate"
        );
        // The same without the KV cache (whole sequence re-fed each step).
        let refeed = pkg_model
            .caption_pixels(
                &pixels,
                3,
                &CaptionOptions {
                    no_cache: true,
                    ..opts.clone()
                },
            )
            .unwrap();
        for (a, b) in refeed.iter().zip(&caps) {
            assert_eq!(
                a.ids, b.ids,
                "{golden} {key}: cached and uncached decoding differ"
            );
            // Beam search scores every sequence, greedy none: both paths must say the same.
            match (&opts.strategy, a.score, b.score) {
                (Strategy::Beam { .. }, Some(x), Some(y)) => assert!(
                    (x - y).abs() < 1e-4,
                    "{golden} {key}: cached score {y}, uncached {x}"
                ),
                (Strategy::Greedy, None, None) => {}
                (strategy, x, y) => {
                    panic!("{golden} {key}: {strategy:?} scored {y:?} cached, {x:?} uncached")
                }
            }
        }
    }
}

#[test]
fn captions_are_token_exact_with_transformers_generate() {
    let (_c, mut m) = model("tiny-caption");
    check_captions("tiny-caption", &mut m);
}

#[test]
fn captions_from_an_interpolated_pth_package_are_token_exact() {
    let c = convert_pth_48();
    let mut m = BlipModel::open(&c.pkg.dir, &SessionOptions::default()).unwrap();
    check_captions("tiny-caption-pth-48", &mut m);
}

#[test]
fn captions_from_files_batch_and_single_agree_and_prompt_is_stripped() {
    let (_c, mut m) = model("tiny-caption");
    let g = Goldens::load("tiny-caption");
    let imgs = images(&g);
    let opts = options_from(&g, "beam3_prompt");
    let batch: Vec<_> = m
        .caption(&imgs, &opts)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        let one = m
            .caption(std::slice::from_ref(img), &opts)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(one.ids, batch[i].ids, "image {i}: batch of 3 vs alone");
    }
    // PNG inputs (images 0 and 2) preprocess within one level of Pillow: same tokens as PyTorch.
    for i in [0, 2] {
        let want: Vec<i64> = g.ids("beam3_prompt")[i].clone();
        let n = batch[i].ids.len();
        assert_eq!(batch[i].ids[..], want[..n]);
        assert!(want[n..].iter().all(|&t| t == 102));
        assert!(
            !batch[i].text.starts_with("a picture of"),
            "prompt stripped: {:?}",
            batch[i].text
        );
        assert!(!batch[i].text.is_empty());
    }
}

#[test]
fn a_bad_image_fails_alone_and_the_rest_of_the_batch_is_captioned() {
    let (_c, mut m) = model("tiny-caption");
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let good = ImageInput::Path(fixture("images/synthetic_a.png"));
    let inputs = vec![
        good.clone(),
        ImageInput::Path(corrupt),
        ImageInput::Bytes {
            name: "empty".into(),
            data: vec![],
        },
        good,
    ];
    let out = m.caption(&inputs, &CaptionOptions::default()).unwrap();
    assert!(out[0].is_ok() && out[3].is_ok());
    assert_eq!(out[0].as_ref().unwrap(), out[3].as_ref().unwrap());
    let e1 = out[1].as_ref().unwrap_err().to_string();
    assert!(
        e1.contains("corrupt.png") && e1.contains("corrupt or truncated"),
        "{e1}"
    );
    let e2 = out[2].as_ref().unwrap_err().to_string();
    assert!(e2.contains("empty"), "{e2}");
}

/// A PNG claiming `w × h` pixels: valid signature and IHDR, a token IDAT, no real image data.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    let idat = b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01";
    png.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
    png.extend_from_slice(idat);
    png.extend_from_slice(&crc32(idat).to_be_bytes());
    png.extend_from_slice(&[0, 0, 0, 0]);
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    png
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    let pre = blip_preprocess::ImagePreprocessor::new(&blip_package::Preprocess::blip(32));
    for (w, h) in [(30000, 30000), (20000, 20000)] {
        let err = pre
            .load_bytes(&png_header(w, h), "bomb.png")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{w}x{h}")) && err.contains("over the limit"),
            "{err}"
        );
    }
    let truncated = pre
        .load_bytes(&png_header(64, 64), "truncated.png")
        .unwrap_err()
        .to_string();
    assert!(truncated.contains("truncated.png"), "{truncated}");
}

#[test]
fn retrieval_embeddings_itm_and_rerank_match_pytorch() {
    let (_c, mut m) = model("tiny-retrieval");
    let g = Goldens::load("tiny-retrieval");
    let texts: Vec<String> = serde_json::from_value(g.meta["texts"].clone()).unwrap();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let te = m.embed_texts(&texts).unwrap();
    assert_close(
        "text embeds",
        &te.clone().into_dyn(),
        g.f("text.text_embeds"),
    );
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let vision = m.vision(&pixels, 3).unwrap();
    let ie = vision.embeds.clone().unwrap();
    let itc = blip_runtime::itc_similarities(ie.view(), te.view(), "text").unwrap();
    assert_close("itc", &itc.into_dyn(), g.f("itc.similarity"));
    let itm_golden = g.f("itm.logits");
    for (t, text) in texts.iter().enumerate() {
        // t2i: all 3 images, rerank the top 2 by ITC with ITM; score = ITM logit + ITC sim.
        let hidden = vision.hidden.clone();
        let hits = m
            .rank_images(
                text,
                ie.view(),
                2,
                CandidateStates::Stored(&mut |idx| Ok(hidden.select(Axis(0), idx))),
            )
            .unwrap();
        assert_eq!(hits.len(), 3);
        let sims = g.f("itc.similarity").index_axis(Axis(1), t).to_owned();
        let mut by_itc: Vec<usize> = (0..3).collect();
        by_itc.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]));
        let mut want: Vec<(usize, f32)> = by_itc[..2]
            .iter()
            .map(|&i| (i, itm_golden[[i * 3 + t, 1]] + sims[i]))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (h, (i, score)) in hits.iter().zip(&want) {
            assert_eq!(h.index, *i, "text {t}: rerank order");
            assert!(
                (h.score - score).abs() < 1e-4,
                "text {t}: score {} vs {score}",
                h.score
            );
        }
        assert_eq!(hits[2].index, by_itc[2]);
        assert_eq!(hits[2].itm, None);
    }
}

/// BLIP-2 through the same task layer: `itm` gives transformers' ITM logits and the ITC score of
/// the best query; ranking uses that score; raw one-per-image embeddings are refused by name.
#[test]
fn blip2_retrieval_scores_and_ranking_match_pytorch() {
    let (_c, mut m) = model("tiny-blip2-retrieval");
    let g = Goldens::load("tiny-blip2-retrieval");
    let texts: Vec<String> = serde_json::from_value(g.meta["texts"].clone()).unwrap();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let itc = g.f("logits_per_image");
    let itm = g.f("itm_logits");
    let pixels = g.f("pixel_values");
    let per_image = pixels.len() / 3;
    let all = pixels.as_slice().unwrap();
    for i in 0..3 {
        let scores = m
            .itm(&all[i * per_image..(i + 1) * per_image], &texts)
            .unwrap();
        for (j, s) in scores.iter().enumerate() {
            assert!(
                (s.itc - itc[[i, j]]).abs() <= 1e-4,
                "image {i} text {j}: ITC {} vs {}",
                s.itc,
                itc[[i, j]]
            );
        }
        // The goldens pair image i with text i.
        let s = &scores[i];
        for c in 0..2 {
            assert!(
                (s.logits[c] - itm[[i, c]]).abs() <= 1e-4,
                "pair {i}: ITM {:?} vs {}",
                s.logits,
                itm.index_axis(Axis(0), i)
            );
        }
    }
    let vision = m.vision(all, 3).unwrap();
    let embeds = vision.embeds.clone().unwrap();
    assert_eq!(embeds.shape(), &[3, 8, 16], "one vector per learned query");
    for (t, text) in texts.iter().enumerate() {
        let hidden = vision.hidden.clone();
        let hits = m
            .rank_images(
                text,
                embeds.view(),
                0,
                CandidateStates::Stored(&mut |idx| Ok(hidden.select(Axis(0), idx))),
            )
            .unwrap();
        let mut want: Vec<usize> = (0..3).collect();
        want.sort_by(|&a, &b| itc[[b, t]].total_cmp(&itc[[a, t]]));
        assert_eq!(
            hits.iter().map(|h| h.index).collect::<Vec<_>>(),
            want,
            "text {t}: ITC order (best query)"
        );
        for h in &hits {
            assert!((h.itc - itc[[h.index, t]]).abs() <= 1e-4);
        }
    }
    let e = blip_runtime::one_vector_per_image(embeds)
        .unwrap_err()
        .to_string();
    assert!(e.contains("8 vectors (BLIP-2"), "{e}");
}

#[test]
fn text_input_errors_and_truncation() {
    let (_c, mut m) = model("tiny-retrieval");
    assert!(
        m.embed_texts(&["   "])
            .unwrap_err()
            .to_string()
            .contains("empty text")
    );
    let long = vec!["word"; 10_000].join(" ");
    let e = m.embed_texts(&[long.as_str(), "short"]).unwrap();
    assert_eq!(e.shape(), &[2, 24]);
    let norms: Vec<f32> = e.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4));
}

#[test]
fn vqa_answers_and_rank_mode_match_the_reference() {
    let (_c, mut m) = model("tiny-vqa");
    let g = Goldens::load("tiny-vqa");
    let imgs = images(&g);
    let questions: Vec<String> = serde_json::from_value(g.meta["questions"].clone()).unwrap();
    let questions: Vec<&str> = questions.iter().map(String::as_str).collect();
    // From the golden pixels, so the comparison is about the model, not JPEG decoding.
    let pixels = g.f("pixel_values").as_slice().unwrap().to_vec();
    let answers = m
        .answer_pixels(&pixels, 3, &questions, &VqaOptions::default())
        .unwrap();
    let generated = blip_runtime::Generated {
        sequences: answers.iter().map(|a| a.ids.clone()).collect(),
        scores: None,
    };
    assert_eq!(generated.padded(102), g.ids("beam3"), "beam-3 answers");
    let greedy = VqaOptions {
        strategy: Strategy::Greedy,
        ..Default::default()
    };
    let answers = m.answer_pixels(&pixels, 3, &questions, &greedy).unwrap();
    let generated = blip_runtime::Generated {
        sequences: answers.iter().map(|a| a.ids.clone()).collect(),
        scores: None,
    };
    assert_eq!(generated.padded(0), g.ids("greedy"), "greedy answers");
    // From files too (PNG and JPEG): runs end to end.
    assert_eq!(
        m.answer(&imgs, &questions, &VqaOptions::default())
            .unwrap()
            .len(),
        3
    );
    let rank = &g.meta["rank"];
    let list: Vec<String> = serde_json::from_value(rank["answers"].clone()).unwrap();
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    let k = rank["k"].as_u64().unwrap() as usize;
    let ranked = m
        .rank_answers_pixels(&pixels, 3, &questions, &list, k, 35)
        .unwrap();
    let topk: Vec<Vec<usize>> =
        serde_json::from_value(rank["first_token_topk_ids"].clone()).unwrap();
    let scores: Vec<Vec<f32>> = serde_json::from_value(rank["scores"].clone()).unwrap();
    let best: Vec<usize> = serde_json::from_value(rank["best"].clone()).unwrap();
    for (q, r) in ranked.iter().enumerate() {
        assert_eq!(
            r.candidates.iter().map(|c| c.0).collect::<Vec<_>>(),
            topk[q],
            "question {q}: first-token top-k"
        );
        for (c, s) in r.candidates.iter().zip(&scores[q]) {
            assert!((c.1 - s).abs() < 2e-3, "question {q}: score {} vs {s}", c.1);
        }
        assert_eq!(r.best, best[q], "question {q}: best answer");
    }
}

#[test]
fn image_formats_and_layouts_match_pillow() {
    let g = Goldens::load("formats-32");
    let names: Vec<String> = serde_json::from_value(g.meta["images"].clone()).unwrap();
    let png_like: Vec<String> = serde_json::from_value(g.meta["png_like"].clone()).unwrap();
    let pre = blip_preprocess::ImagePreprocessor::new(&blip_package::Preprocess::blip(32));
    let n = 32 * 32;
    for (i, name) in names.iter().enumerate() {
        let path = fixture(&format!("images/formats/{name}"));
        let from_path = pre.pixel_values(&pre.load_path(&path).unwrap()).unwrap();
        // Bytes in memory give the same result as the file.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            pre.pixel_values(&pre.load_bytes(&bytes, name).unwrap())
                .unwrap(),
            from_path,
            "{name}"
        );
        let want = g.f("pixel_values").index_axis(Axis(0), i).to_owned();
        let want = want.as_slice().unwrap();
        let mut worst = 0f32;
        for c in 0..3 {
            for j in 0..n {
                worst =
                    worst.max((from_path[c * n + j] - want[c * n + j]).abs() * pre.std[c] * 255.0);
            }
        }
        // Lossless encodings: within a level of Pillow. JPEG: decoder differences (and CMYK conversion).
        let limit = if png_like.contains(name) { 1.01 } else { 3.0 };
        eprintln!("{name}: max {worst:.2} levels from Pillow");
        assert!(worst <= limit, "{name}: {worst} levels from Pillow");
    }
}

#[test]
fn a_package_with_a_missing_graph_is_refused() {
    let c = convert_fixture(&fixture("models/tiny-vqa"), &ConvertOptions::default());
    std::fs::remove_file(c.pkg.dir.join("cross_kv.onnx")).unwrap();
    let Err(err) = BlipModel::open(&c.pkg.dir, &SessionOptions::default()) else {
        panic!("must fail")
    };
    assert!(
        err.to_string().contains("cross_kv.onnx is missing"),
        "{err}"
    );
}

#[test]
fn an_image_repeated_in_one_call_is_encoded_once() {
    let (_c, mut m) = model("tiny-vqa");
    let img = ImageInput::Path(fixture("images/synthetic_a.png"));
    let other = ImageInput::Bytes {
        name: "b".into(),
        data: std::fs::read(fixture("images/synthetic_b.png")).unwrap(),
    };
    let qs = [
        "what color is the circle?",
        "how many shapes?",
        "is it red?",
    ];
    let together = m
        .answer(
            &[img.clone(), img.clone(), other.clone()],
            &qs,
            &VqaOptions::default(),
        )
        .unwrap();
    assert_eq!(m.images_encoded(), 2, "two distinct images");
    // Same answers as feeding the three images' pixels separately (no de-duplication).
    let pre = &m.images;
    let mut pixels = Vec::new();
    for image in [&img, &img, &other] {
        let decoded = match image {
            ImageInput::Path(p) => pre.load_path(p).unwrap(),
            ImageInput::Bytes { name, data } => pre.load_bytes(data, name).unwrap(),
        };
        pixels.extend(pre.pixel_values(&decoded).unwrap());
    }
    let separate = m
        .answer_pixels(&pixels, 3, &qs, &VqaOptions::default())
        .unwrap();
    assert_eq!(separate, together);
    // With the question padding masked, an answer no longer depends on the other questions' lengths.
    let masked = VqaOptions {
        mask_question_padding: true,
        ..Default::default()
    };
    let batch = m
        .answer(&[img.clone(), img.clone(), other.clone()], &qs, &masked)
        .unwrap();
    for (i, (image, q)) in [&img, &img, &other].into_iter().zip(qs).enumerate() {
        let alone = m
            .answer(std::slice::from_ref(image), &[q], &masked)
            .unwrap();
        assert_eq!(alone[0].ids, batch[i].ids, "question {i}");
    }
    let (c, mut cap) = model("tiny-caption");
    let a = ImageInput::Path(fixture("images/synthetic_a.png"));
    let out = cap
        .caption(
            &[
                a.clone(),
                a.clone(),
                ImageInput::Path(c.pkg.dir.join("missing.png")),
                a,
            ],
            &CaptionOptions::default(),
        )
        .unwrap();
    assert_eq!(cap.images_encoded(), 1);
    assert_eq!(out[0].as_ref().unwrap(), out[3].as_ref().unwrap());
    assert!(out[2].is_err());
}
