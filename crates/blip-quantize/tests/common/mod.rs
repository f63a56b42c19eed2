//! What the quantization tests share: the checklist assertion, greedy caption settings and the
//! largest element-wise difference.

use blip_runtime::{CaptionOptions, Strategy};

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
