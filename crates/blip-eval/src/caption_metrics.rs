//! Caption metrics as the COCO caption evaluation (pycocoevalcap) computes them: BLEU-1..4 over the
//! corpus with the closest reference length, and CIDEr-D (n = 4, σ = 6, document frequencies from the
//! reference set, clipped counts, ×10), on PTB-style tokens.

use std::collections::HashMap;

/// Punctuation the COCO evaluation's PTB tokenizer step removes.
const PUNCTUATION: &[&str] = &[
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Lower-cased tokens with punctuation split off and dropped (the COCO evaluation runs Stanford's
/// PTBTokenizer; for plain English captions this gives the same tokens).
pub fn tokenize(text: &str) -> Vec<String> {
    let mut spaced = String::with_capacity(text.len() + 8);
    for c in text.to_lowercase().chars() {
        if c.is_ascii_punctuation() && c != '\'' {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    spaced
        .split_whitespace()
        .filter(|t| !PUNCTUATION.contains(t))
        .map(String::from)
        .collect()
}

type Ngrams = HashMap<Vec<String>, usize>;

fn ngrams(words: &[String], n: usize) -> Ngrams {
    let mut counts = Ngrams::new();
    for k in 1..=n {
        for w in words.windows(k) {
            *counts.entry(w.to_vec()).or_default() += 1;
        }
    }
    counts
}

/// BLEU-1..4 of hypotheses against their references (one hypothesis per item), corpus level.
pub fn bleu(hyps: &[Vec<String>], refs: &[Vec<Vec<String>>]) -> [f64; 4] {
    let (small, tiny) = (1e-9, 1e-15);
    let (mut testlen, mut reflen) = (0usize, 0usize);
    let mut guess = [0usize; 4];
    let mut correct = [0usize; 4];
    for (h, rs) in hyps.iter().zip(refs) {
        let mut maxref: Ngrams = HashMap::new();
        for r in rs {
            for (g, c) in ngrams(r, 4) {
                let e = maxref.entry(g).or_default();
                *e = (*e).max(c);
            }
        }
        // "closest": the reference length nearest the hypothesis', the shorter on a tie.
        let len = h.len();
        reflen += rs
            .iter()
            .map(|r| r.len())
            .min_by_key(|&l| (l.abs_diff(len), l))
            .unwrap_or(0);
        testlen += len;
        for (k, g) in guess.iter_mut().enumerate() {
            *g += len.saturating_sub(k);
        }
        for (g, c) in ngrams(h, 4) {
            correct[g.len() - 1] += c.min(maxref.get(&g).copied().unwrap_or(0));
        }
    }
    let mut out = [0f64; 4];
    let mut product = 1f64;
    for k in 0..4 {
        product *= (correct[k] as f64 + tiny) / (guess[k] as f64 + small);
        out[k] = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (testlen as f64 + tiny) / (reflen as f64 + small);
    if ratio < 1.0 {
        for b in out.iter_mut() {
            *b *= (1.0 - 1.0 / ratio).exp();
        }
    }
    out
}

/// CIDEr-D: the corpus score and each item's.
pub fn cider_d(hyps: &[Vec<String>], refs: &[Vec<Vec<String>>]) -> (f64, Vec<f64>) {
    const N: usize = 4;
    const SIGMA: f64 = 6.0;
    let mut df: HashMap<Vec<String>, f64> = HashMap::new();
    for rs in refs {
        let mut seen = std::collections::HashSet::new();
        for r in rs {
            for g in ngrams(r, N).into_keys() {
                seen.insert(g);
            }
        }
        for g in seen {
            *df.entry(g).or_default() += 1.0;
        }
    }
    let ref_len = (refs.len() as f64).ln();
    // TF-IDF vectors per n, their norms, and the length (the evaluation counts bigrams here).
    let vec = |words: &[String]| {
        let mut v: Vec<HashMap<Vec<String>, f64>> = vec![HashMap::new(); N];
        let mut norm = [0f64; N];
        let mut length = 0usize;
        for (g, tf) in ngrams(words, N) {
            let n = g.len() - 1;
            let d = df.get(&g).copied().unwrap_or(0.0).max(1.0).ln();
            let x = tf as f64 * (ref_len - d);
            norm[n] += x * x;
            if n == 1 {
                length += tf;
            }
            v[n].insert(g, x);
        }
        (v, norm.map(f64::sqrt), length)
    };
    let scores: Vec<f64> = hyps
        .iter()
        .zip(refs)
        .map(|(h, rs)| {
            let (vh, nh, lh) = vec(h);
            let mut score = [0f64; N];
            for r in rs {
                let (vr, nr, lr) = vec(r);
                let delta = lh as f64 - lr as f64;
                for n in 0..N {
                    let mut val: f64 = vh[n]
                        .iter()
                        .map(|(g, x)| {
                            let y = vr[n].get(g).copied().unwrap_or(0.0);
                            x.min(y) * y
                        })
                        .sum();
                    if nh[n] != 0.0 && nr[n] != 0.0 {
                        val /= nh[n] * nr[n];
                    }
                    score[n] += val * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
                }
            }
            score.iter().sum::<f64>() / N as f64 / rs.len().max(1) as f64 * 10.0
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    (mean, scores)
}
