//! Decoding strategies with transformers' `generate` semantics (v5): greedy, beam search (vectorised
//! beam search with its early-stop heuristic and length penalty), and sampling (temperature, top-k,
//! top-p), with the repetition-penalty and min-length processors. Token ids match HF for the same
//! logits; the model side is behind [`Step`], so the same code drives the KV-cached decoder and the
//! re-feeding reference used in tests.

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::Result;

/// How tokens are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Greedy,
    Beam {
        num_beams: usize,
        length_penalty: f32,
        early_stopping: bool,
    },
    Sample {
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
    },
}

/// Generation settings. Lengths count tokens, prompt included (HF `max_length` / `min_length`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub strategy: Strategy,
    pub max_length: usize,
    pub min_length: usize,
    pub repetition_penalty: f32,
    pub eos: i64,
    pub pad: i64,
}

/// The model side of decoding: feeds `tokens` (`rows × t`, row-major) for every row and returns the
/// logits of the last position (`rows × vocab`). `reorder[r]` names the row whose history row `r`
/// continues (beam search), applied before feeding.
pub trait Step {
    fn rows(&self) -> usize;
    fn vocab(&self) -> usize;
    fn step(&mut self, tokens: &[i64], t: usize, reorder: Option<&[usize]>) -> Result<Vec<f32>>;
}

/// Generated sequences per input (prompt included), each trimmed after its EOS.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub sequences: Vec<Vec<i64>>,
    /// Beam search: the final (length-penalised) score of each returned sequence.
    pub scores: Option<Vec<f32>>,
}

impl Generated {
    /// Sequences as HF returns them: padded to a common length (finished greedy rows with `pad`;
    /// beam search fills with `pad`, or `eos` when `pad` is 0, as transformers does).
    pub fn padded(&self, fill: i64) -> Vec<Vec<i64>> {
        let len = self.sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        self.sequences
            .iter()
            .map(|s| {
                s.iter()
                    .copied()
                    .chain(std::iter::repeat(fill))
                    .take(len)
                    .collect()
            })
            .collect()
    }
}

fn apply_processors(scores: &mut [f32], history: &[i64], cfg: &GenerationConfig) {
    if cfg.repetition_penalty != 1.0 {
        let p = cfg.repetition_penalty;
        let mut seen: Vec<usize> = history
            .iter()
            .filter(|&&t| t >= 0 && (t as usize) < scores.len())
            .map(|&t| t as usize)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            let s = scores[t];
            scores[t] = if s < 0.0 { s * p } else { s / p };
        }
    }
    if history.len() < cfg.min_length && (cfg.eos as usize) < scores.len() {
        scores[cfg.eos as usize] = f32::NEG_INFINITY;
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

fn log_softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = v.iter().map(|x| (x - max).exp()).sum();
    let lse = max + sum.ln();
    for x in v.iter_mut() {
        *x -= lse;
    }
}

/// Runs generation for `batch` inputs that all start from `prompt`.
pub fn generate(
    model: &mut dyn Step,
    batch: usize,
    prompt: &[i64],
    cfg: &GenerationConfig,
) -> Result<Generated> {
    match &cfg.strategy {
        Strategy::Greedy => greedy_or_sample(model, batch, prompt, cfg, None),
        Strategy::Sample {
            temperature,
            top_k,
            top_p,
            seed,
        } => {
            let sampler = Sampler {
                temperature: *temperature,
                top_k: *top_k,
                top_p: *top_p,
                rng: StdRng::seed_from_u64(*seed),
            };
            greedy_or_sample(model, batch, prompt, cfg, Some(sampler))
        }
        Strategy::Beam {
            num_beams,
            length_penalty,
            early_stopping,
        } => beam_search(
            model,
            batch,
            prompt,
            cfg,
            *num_beams,
            *length_penalty,
            *early_stopping,
        ),
    }
}

struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    rng: StdRng,
}

impl Sampler {
    /// Temperature, top-k and top-p warpers (in HF's order), then a draw from the softmax.
    fn draw(&mut self, scores: &mut [f32]) -> usize {
        if self.temperature > 0.0 && self.temperature != 1.0 {
            for s in scores.iter_mut() {
                *s /= self.temperature;
            }
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        if self.top_k > 0 && self.top_k < scores.len() {
            for &i in &order[self.top_k..] {
                scores[i] = f32::NEG_INFINITY;
            }
        }
        if self.top_p < 1.0 {
            // Keep the smallest set of most likely tokens whose probability reaches top_p (at least one).
            let max = scores[order[0]];
            let probs: Vec<f32> = order.iter().map(|&i| (scores[i] - max).exp()).collect();
            let total: f32 = probs.iter().sum();
            let mut cum = 0.0;
            for (rank, &i) in order.iter().enumerate() {
                if rank > 0 && cum >= self.top_p {
                    scores[i] = f32::NEG_INFINITY;
                }
                cum += probs[rank] / total;
            }
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f32 = weights.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, w) in weights.iter().enumerate() {
            if *w > 0.0 {
                if r < *w {
                    return i;
                }
                r -= w;
            }
        }
        argmax(scores)
    }
}

fn greedy_or_sample(
    model: &mut dyn Step,
    batch: usize,
    prompt: &[i64],
    cfg: &GenerationConfig,
    mut sampler: Option<Sampler>,
) -> Result<Generated> {
    let vocab = model.vocab();
    let mut seqs: Vec<Vec<i64>> = vec![prompt.to_vec(); batch];
    let mut done = vec![false; batch];
    let mut feed: Vec<i64> = seqs.iter().flatten().copied().collect();
    let mut t = prompt.len();
    while seqs[0].len() < cfg.max_length && done.iter().any(|d| !d) {
        let logits = model.step(&feed, t, None)?;
        feed.clear();
        for (r, seq) in seqs.iter_mut().enumerate() {
            let mut scores = logits[r * vocab..(r + 1) * vocab].to_vec();
            apply_processors(&mut scores, seq, cfg);
            let tok = if done[r] {
                cfg.pad
            } else {
                match sampler.as_mut() {
                    Some(s) => s.draw(&mut scores) as i64,
                    None => argmax(&scores) as i64,
                }
            };
            if tok == cfg.eos {
                done[r] = true;
            }
            seq.push(tok);
            feed.push(tok);
        }
        t = 1;
    }
    let sequences = seqs
        .into_iter()
        .map(|mut s| {
            if let Some(end) = s[prompt.len()..].iter().position(|&x| x == cfg.eos) {
                s.truncate(prompt.len() + end + 1);
            }
            s
        })
        .collect();
    Ok(Generated {
        sequences,
        scores: None,
    })
}

/// Beam search as transformers v5 `_beam_search` (num_return_sequences = 1).
fn beam_search(
    model: &mut dyn Step,
    batch: usize,
    prompt: &[i64],
    cfg: &GenerationConfig,
    k: usize,
    length_penalty: f32,
    early_stopping: bool,
) -> Result<Generated> {
    let vocab = model.vocab();
    let prompt_len = prompt.len();
    let keep = 2 * k; // candidates per step: (1 EOS token + 1) * num_beams
    let neg = -1.0e9f32;
    // Running beams, row b*k + j.
    let mut running: Vec<Vec<i64>> = vec![prompt.to_vec(); batch * k];
    let mut running_scores: Vec<f32> = (0..batch * k)
        .map(|r| if r % k == 0 { 0.0 } else { neg })
        .collect();
    // Finished slots per batch item.
    let mut fin_seq: Vec<Vec<i64>> = vec![prompt.to_vec(); batch * k];
    let mut fin_score: Vec<f32> = vec![neg; batch * k];
    let mut fin_done: Vec<bool> = vec![false; batch * k];
    let mut unsatisfied = vec![true; batch];
    let mut cur_len = prompt_len;
    let mut feed: Vec<i64> = running.iter().flatten().copied().collect();
    let mut t = prompt_len;
    let mut reorder: Option<Vec<usize>> = None;
    loop {
        let logits = model.step(&feed, t, reorder.as_deref())?;
        let mut next_running = Vec::with_capacity(batch * k);
        let mut next_scores = Vec::with_capacity(batch * k);
        let mut sources = Vec::with_capacity(batch * k);
        let mut all_hit = true;
        for b in 0..batch {
            // Accumulated log-probs of every (beam, token) continuation.
            let mut acc = Vec::with_capacity(k * vocab);
            for j in 0..k {
                let r = b * k + j;
                let mut lp = logits[r * vocab..(r + 1) * vocab].to_vec();
                log_softmax_in_place(&mut lp);
                apply_processors(&mut lp, &running[r], cfg);
                acc.extend(lp.iter().map(|x| x + running_scores[r]));
            }
            let top = top_k_desc(&acc, keep);
            // (score, source beam, token, hits stopping criteria)
            let cands: Vec<(f32, usize, i64, bool)> = top
                .iter()
                .map(|&i| {
                    let tok = (i % vocab) as i64;
                    (
                        acc[i],
                        i / vocab,
                        tok,
                        tok == cfg.eos || cur_len + 1 >= cfg.max_length,
                    )
                })
                .collect();
            all_hit &= cands.iter().all(|c| c.3);
            // Next running beams: best k candidates that did not stop.
            let run_scores: Vec<f32> = cands
                .iter()
                .map(|c| c.0 + if c.3 { neg } else { 0.0 })
                .collect();
            for &c in top_k_desc(&run_scores, k).iter() {
                let (_, beam, tok, _) = cands[c];
                let mut s = running[b * k + beam].clone();
                s.push(tok);
                next_running.push(s);
                next_scores.push(run_scores[c]);
                sources.push(b * k + beam);
            }
            // Finished beams: merge the top-k candidates that stopped into the k finished slots.
            let all_finished = fin_done[b * k..(b + 1) * k].iter().all(|&d| d);
            let denom = ((cur_len + 1 - prompt_len) as f32).powf(length_penalty);
            let mut merged: Vec<(f32, Vec<i64>, bool)> = (0..k)
                .map(|j| {
                    (
                        fin_score[b * k + j],
                        fin_seq[b * k + j].clone(),
                        fin_done[b * k + j],
                    )
                })
                .collect();
            for (c, &(score, beam, tok, hit)) in cands.iter().enumerate() {
                let just_finished = hit && c < k;
                let mut s = score / denom;
                if all_finished && early_stopping {
                    s += neg;
                }
                if !unsatisfied[b] {
                    s += neg;
                }
                if !just_finished {
                    s += neg;
                }
                let mut seq = running[b * k + beam].clone();
                seq.push(tok);
                merged.push((s, seq, just_finished));
            }
            let scores: Vec<f32> = merged.iter().map(|m| m.0).collect();
            for (j, &m) in top_k_desc(&scores, k).iter().enumerate() {
                fin_score[b * k + j] = merged[m].0;
                fin_seq[b * k + j] = merged[m].1.clone();
                fin_done[b * k + j] = merged[m].2;
            }
        }
        running = next_running;
        running_scores = next_scores;
        cur_len += 1;
        for b in 0..batch {
            let best_len = (cur_len - prompt_len) as f32;
            let best_possible = running_scores[b * k] / best_len.powf(length_penalty);
            let worst = fin_score[b * k..(b + 1) * k]
                .iter()
                .copied()
                .fold(f32::INFINITY, f32::min);
            let improvable =
                (0..k).any(|j| best_possible > if fin_done[b * k + j] { worst } else { neg });
            unsatisfied[b] = unsatisfied[b] && improvable;
        }
        let open = !(fin_done.iter().all(|&d| d) && early_stopping);
        if !(unsatisfied.iter().any(|&u| u) && open && !all_hit) || cur_len >= cfg.max_length {
            break;
        }
        feed = running
            .iter()
            .map(|s| *s.last().expect("beams are never empty. This is a bug."))
            .collect();
        t = 1;
        reorder = Some(sources);
    }
    let mut sequences = Vec::with_capacity(batch);
    let mut scores = Vec::with_capacity(batch);
    for b in 0..batch {
        sequences.push(fin_seq[b * k].clone());
        scores.push(fin_score[b * k]);
    }
    Ok(Generated {
        sequences,
        scores: Some(scores),
    })
}

/// Indices of the `n` largest values, largest first (ties: lower index first).
fn top_k_desc(v: &[f32], n: usize) -> Vec<usize> {
    let n = n.min(v.len());
    let mut idx: Vec<usize> = (0..v.len()).collect();
    if n < v.len() {
        idx.select_nth_unstable_by(n - 1, |&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        idx.truncate(n);
    }
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy model whose next-token logits depend only on the last token.
    struct Table {
        rows: usize,
        hist: Vec<Vec<i64>>,
    }

    impl Step for Table {
        fn rows(&self) -> usize {
            self.rows
        }
        fn vocab(&self) -> usize {
            5
        }
        fn step(
            &mut self,
            tokens: &[i64],
            t: usize,
            reorder: Option<&[usize]>,
        ) -> Result<Vec<f32>> {
            if let Some(src) = reorder {
                self.hist = src.iter().map(|&s| self.hist[s].clone()).collect();
            }
            for (r, chunk) in tokens.chunks(t).enumerate() {
                self.hist[r].extend_from_slice(chunk);
            }
            let mut out = Vec::new();
            for h in &self.hist {
                let last = *h.last().unwrap();
                // token 4 is EOS; from 0 prefer 1, from 1 prefer 2, from 2 EOS is likely.
                let row = match last {
                    0 => [0.0, 2.0, 1.0, 0.0, -1.0],
                    1 => [0.0, 0.0, 2.0, 1.5, 0.5],
                    2 => [0.0, 0.5, 0.0, 0.0, 2.5],
                    _ => [1.0, 0.0, 0.0, 0.0, 1.2],
                };
                out.extend_from_slice(&row);
            }
            Ok(out)
        }
    }

    fn cfg(strategy: Strategy) -> GenerationConfig {
        GenerationConfig {
            strategy,
            max_length: 8,
            min_length: 0,
            repetition_penalty: 1.0,
            eos: 4,
            pad: 0,
        }
    }

    #[test]
    fn greedy_follows_argmax_and_stops_at_eos() {
        let mut m = Table {
            rows: 2,
            hist: vec![vec![]; 2],
        };
        let g = generate(&mut m, 2, &[0], &cfg(Strategy::Greedy)).unwrap();
        assert_eq!(g.sequences, vec![vec![0, 1, 2, 4], vec![0, 1, 2, 4]]);
    }

    #[test]
    fn min_length_blocks_eos() {
        let mut m = Table {
            rows: 1,
            hist: vec![vec![]],
        };
        let mut c = cfg(Strategy::Greedy);
        c.min_length = 5;
        let g = generate(&mut m, 1, &[0], &c).unwrap();
        assert_eq!(g.sequences[0][..4], [0, 1, 2, 1]);
    }

    #[test]
    fn sampling_is_seeded_and_top_k_1_is_greedy() {
        let s = |seed| Strategy::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            seed,
        };
        let run = |st| {
            generate(
                &mut Table {
                    rows: 3,
                    hist: vec![vec![]; 3],
                },
                3,
                &[0],
                &cfg(st),
            )
            .unwrap()
        };
        assert_eq!(run(s(7)), run(s(7)));
        let greedy = run(Strategy::Greedy);
        assert_eq!(
            run(Strategy::Sample {
                temperature: 0.7,
                top_k: 1,
                top_p: 1.0,
                seed: 3
            })
            .sequences,
            greedy.sequences
        );
    }

    #[test]
    fn top_k_desc_orders_and_breaks_ties_by_index() {
        assert_eq!(top_k_desc(&[0.1, 0.5, 0.5, -1.0, 0.3], 3), vec![1, 2, 4]);
    }
}
