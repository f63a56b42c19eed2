//! Quality gates of `validate`: numbers measured on a package, each compared with a threshold.

use serde::Serialize;

/// One measured gate. `pass: None` is reported but not gated (e.g. a JPEG's decoder differences).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gate {
    /// What was measured, e.g. `reference: vision.last_hidden_state max abs diff`.
    pub name: String,
    pub value: f64,
    /// The condition, e.g. `<= 1e-4` or `>= 0.995`.
    pub threshold: String,
    pub pass: Option<bool>,
    pub detail: String,
}

impl Gate {
    fn gated(
        name: impl Into<String>,
        value: f64,
        threshold: String,
        pass: bool,
        detail: impl Into<String>,
    ) -> Gate {
        Gate {
            name: name.into(),
            value,
            threshold,
            pass: Some(pass && value.is_finite()),
            detail: detail.into(),
        }
    }

    pub fn at_most(
        name: impl Into<String>,
        value: f64,
        limit: f64,
        detail: impl Into<String>,
    ) -> Gate {
        Gate::gated(name, value, format!("<= {limit:e}"), value <= limit, detail)
    }

    /// Rates are means of fractions: the comparison allows their rounding error.
    pub fn at_least(
        name: impl Into<String>,
        value: f64,
        limit: f64,
        detail: impl Into<String>,
    ) -> Gate {
        Gate::gated(
            name,
            value,
            format!(">= {limit}"),
            value >= limit - 1e-9,
            detail,
        )
    }

    pub fn info(name: impl Into<String>, value: f64, detail: impl Into<String>) -> Gate {
        Gate {
            name: name.into(),
            value,
            threshold: "-".into(),
            pass: None,
            detail: detail.into(),
        }
    }

    /// A step that must simply succeed (value 1) — its error is the detail otherwise.
    pub fn runs(name: impl Into<String>, result: Result<String, String>) -> Gate {
        let (value, pass, detail) = match result {
            Ok(d) => (1.0, true, d),
            Err(e) => (0.0, false, e),
        };
        Gate {
            name: name.into(),
            value,
            threshold: "runs".into(),
            pass: Some(pass),
            detail,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidateReport {
    pub package: String,
    pub gates: Vec<Gate>,
}

impl ValidateReport {
    pub fn passed(&self) -> bool {
        self.gates.iter().all(|g| g.pass != Some(false))
    }

    pub fn failures(&self) -> impl Iterator<Item = &Gate> {
        self.gates.iter().filter(|g| g.pass == Some(false))
    }
}

/// Thresholds of the gates (defaults from the deployment checklist).
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Max abs diff of an FP32 graph output vs PyTorch or vs another FP32 package.
    pub fp32_max_abs: f64,
    /// Max abs diff vs PyTorch for a quantized package (its outputs are compared at this tolerance).
    pub quantized_max_abs: f64,
    /// Min cosine of image / text embeddings (or image states) of a quantized package vs its reference.
    pub min_cosine: f64,
    /// ITC top-1 agreement (text → image) between packages.
    pub min_top1: f64,
    /// Mean overlap of the ITC top-5 (text → image) between packages.
    pub min_top5: f64,
    /// Caption exact-match rate between packages (and vs PyTorch for quantized packages).
    pub min_caption_exact: f64,
    /// VQA answer agreement between packages.
    pub min_answer_agreement: f64,
    /// Preprocessing vs Pillow, in 8-bit levels, on PNG inputs.
    pub max_pixel_levels: f64,
    /// RSS growth allowed over the long run, in MiB.
    pub max_rss_growth_mib: f64,
    /// Relative drop of the task metric (CIDEr-D, R@1, VQA accuracy) allowed against the reference package.
    pub max_quality_drop: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            fp32_max_abs: 1e-4,
            quantized_max_abs: 0.5,
            min_cosine: 0.995,
            min_top1: 0.9,
            min_top5: 0.8,
            min_caption_exact: 0.9,
            min_answer_agreement: 0.9,
            max_pixel_levels: 1.01,
            max_rss_growth_mib: 32.0,
            max_quality_drop: 0.02,
        }
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
}

pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na * nb)
}

/// Fraction of positions where two token sequences agree, over the longer one.
pub fn token_agreement(a: &[i64], b: &[i64]) -> f64 {
    let n = a.len().max(b.len());
    if n == 0 {
        return 1.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n as f64
}

/// Resident set size of this process in bytes (Linux `/proc/self/status`; `None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_small_cases() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 1.0]), 1.0);
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert!((mse(&[1.0, 2.0], &[2.0, 2.0]) - 0.5).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(token_agreement(&[1, 2, 3], &[1, 2]), 2.0 / 3.0);
        assert!(Gate::at_most("x", f64::NAN, 1.0, "").pass == Some(false));
        assert!(Gate::at_least("x", 0.99, 0.995, "").pass == Some(false));
        let r = ValidateReport {
            package: "p".into(),
            gates: vec![Gate::info("i", 5.0, ""), Gate::at_most("m", 0.0, 1.0, "")],
        };
        assert!(r.passed());
    }
}
