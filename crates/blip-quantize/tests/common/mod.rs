//! What the quantization tests share: the checklist assertion, greedy caption settings, the
//! largest element-wise difference, and the closeness of quantized captions on the shapes model.
#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;

use blip_runtime::{BlipModel, CaptionOptions, ImageInput, SessionOptions, Strategy};
use ndarray::s;

/// Largest absolute element-wise difference.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `check` passes on the package at `dir`, every graph loaded in ORT.
pub fn assert_checks(dir: &std::path::Path) {
    let report = blip_validate::check(dir, true);
    assert!(
        report.passed(),
        "{:#?}",
        report.failures().collect::<Vec<_>>()
    );
}

/// Greedy captions of at most `max_length` tokens, with the package's default prompt.
pub fn greedy(max_length: usize) -> CaptionOptions {
    CaptionOptions {
        strategy: Strategy::Greedy,
        max_length,
        min_length: 0,
        ..Default::default()
    }
}

/// The shapes caption package, converted into a temporary folder: a trained model, so its
/// captions and logits mean something (the tiny fixtures' are noise).
pub fn shapes_caption() -> blip_testkit::Converted {
    blip_testkit::convert_fixture(
        &blip_testkit::fixture("shapes/models/shapes-caption"),
        &blip_convert::ConvertOptions::default(),
    )
}

/// A quantized caption package stays close to its FP32 original on 8 shapes test images:
/// fed the same FP32 image states and the FP32 greedy captions (teacher forcing), its decoder's
/// logits at every real position have a cosine of at least `min_cosine` with the FP32 ones, and
/// differ from them (the quantized graphs ran); and its greedy captions, from its own vision
/// encoder, equal the FP32 captions token for token. Returns the smallest cosine.
pub fn assert_captions_close(fp32: &Path, quantized: &Path, min_cosine: f32) -> f32 {
    let open = |dir: &Path| BlipModel::open(dir, &SessionOptions::default()).unwrap();
    let (mut a, mut b) = (open(fp32), open(quantized));
    let n = 8;
    let mut pixels = Vec::new();
    for i in 0..n {
        let path = blip_testkit::fixture(&format!("shapes/test/images/test_{i:05}.png"));
        pixels.extend(a.pixel_values(&ImageInput::Path(path)).unwrap());
    }
    let opts = greedy(20);
    let ca = a.caption_pixels(&pixels, n, &opts).unwrap();
    let cb = b.caption_pixels(&pixels, n, &opts).unwrap();
    for (i, (x, y)) in ca.iter().zip(&cb).enumerate() {
        assert_eq!(
            y.ids, x.ids,
            "image {i}: {:?} quantized, {:?} FP32",
            y.text, x.text
        );
    }
    let t = ca.iter().map(|c| c.ids.len()).max().unwrap();
    let pad = a.package.manifest.tokens.pad;
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for c in &ca {
        ids.extend(
            c.ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad, t - c.ids.len())),
        );
        mask.extend((0..t).map(|p| i64::from(p < c.ids.len())));
    }
    let states = a.vision(&pixels, n).unwrap().hidden;
    let enc_mask = vec![1; n * states.shape()[1]];
    let la = a
        .decoder_logits(states.view(), &enc_mask, &ids, &mask, t)
        .unwrap();
    let lb = b
        .decoder_logits(states.view(), &enc_mask, &ids, &mask, t)
        .unwrap();
    let mut worst = f32::INFINITY;
    for (r, c) in ca.iter().enumerate() {
        for p in 0..c.ids.len() {
            let (x, y) = (la.slice(s![r, p, ..]), lb.slice(s![r, p, ..]));
            worst = worst.min(blip_testkit::cosine(&x.to_vec(), &y.to_vec()));
        }
    }
    assert!(
        worst >= min_cosine,
        "decoder logits: smallest cosine {worst} < {min_cosine}"
    );
    assert!(
        worst < 1.0 - 1e-6,
        "the quantized decoder's logits equal FP32's"
    );
    worst
}
