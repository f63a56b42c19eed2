//! Decoding strategies with transformers' `generate` semantics (v5): greedy, beam search (vectorised
//! beam search with its early-stop heuristic and length penalty), and sampling (temperature, top-k,
//! top-p), with the repetition-penalty and min-length processors. Token ids match HF for the same
//! logits. Decoding is a state machine, [`Generation`], that never calls a model: the task layer
//! drives it over any engine's graphs, a server can interleave the steps of many requests, and
//! [`generate`] drives it over a blocking [`Step`] model (tests, benchmarks).

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{Result, TaskError};

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

/// What the model must be fed next: `tokens` (`rows × t`, row-major) for every row, after
/// gathering the cache rows named by `reorder` (`reorder[r]`: the row whose history row `r`
/// continues; beam search).
#[derive(Debug, Clone, PartialEq)]
pub struct StepInput {
    pub tokens: Vec<i64>,
    pub t: usize,
    pub reorder: Option<Vec<usize>>,
}

/// Decoding as a state machine ("sans-IO"): it says what to feed ([`Generation::next_input`]),
/// takes the last-position logits of that step ([`Generation::push_logits`]) and, once
/// `next_input` is `None`, returns the sequences ([`Generation::finish`]). Any driver runs it: the
/// blocking loop of [`generate`], the async task layer, a server scheduler interleaving requests.
pub struct Generation {
    cfg: GenerationConfig,
    vocab: usize,
    prompt_len: usize,
    next: Option<StepInput>,
    state: State,
}

enum State {
    Greedy(GreedyState),
    Beam(Box<BeamState>),
}

struct GreedyState {
    seqs: Vec<Vec<i64>>,
    done: Vec<bool>,
    sampler: Option<Box<Sampler>>,
}

struct BeamState {
    k: usize,
    length_penalty: f32,
    early_stopping: bool,
    /// Running beams, row b*k + j.
    running: Vec<Vec<i64>>,
    running_scores: Vec<f32>,
    /// Finished slots per batch item.
    fin_seq: Vec<Vec<i64>>,
    fin_score: Vec<f32>,
    fin_done: Vec<bool>,
    unsatisfied: Vec<bool>,
    cur_len: usize,
}

const NEG: f32 = -1.0e9;

impl Generation {
    /// Starts decoding `batch` inputs that all begin with `prompt`, over a vocabulary of `vocab`.
    pub fn new(cfg: &GenerationConfig, batch: usize, prompt: &[i64], vocab: usize) -> Generation {
        let (state, rows) = match &cfg.strategy {
            Strategy::Greedy => (
                State::Greedy(GreedyState {
                    seqs: vec![prompt.to_vec(); batch],
                    done: vec![false; batch],
                    sampler: None,
                }),
                batch,
            ),
            Strategy::Sample {
                temperature,
                top_k,
                top_p,
                seed,
            } => (
                State::Greedy(GreedyState {
                    seqs: vec![prompt.to_vec(); batch],
                    done: vec![false; batch],
                    sampler: Some(Box::new(Sampler {
                        temperature: *temperature,
                        top_k: *top_k,
                        top_p: *top_p,
                        rng: StdRng::seed_from_u64(*seed),
                    })),
                }),
                batch,
            ),
            Strategy::Beam {
                num_beams,
                length_penalty,
                early_stopping,
            } => {
                let k = (*num_beams).max(1);
                (
                    State::Beam(Box::new(BeamState {
                        k,
                        length_penalty: *length_penalty,
                        early_stopping: *early_stopping,
                        running: vec![prompt.to_vec(); batch * k],
                        running_scores: (0..batch * k)
                            .map(|r| if r % k == 0 { 0.0 } else { NEG })
                            .collect(),
                        fin_seq: vec![prompt.to_vec(); batch * k],
                        fin_score: vec![NEG; batch * k],
                        fin_done: vec![false; batch * k],
                        unsatisfied: vec![true; batch],
                        cur_len: prompt.len(),
                    })),
                    batch * k,
                )
            }
        };
        // As transformers: greedy checks the length before the first step, beam search after it.
        let starts =
            batch > 0 && (matches!(state, State::Beam(_)) || prompt.len() < cfg.max_length);
        let next = starts.then(|| StepInput {
            tokens: (0..rows).flat_map(|_| prompt.iter().copied()).collect(),
            t: prompt.len(),
            reorder: None,
        });
        Generation {
            cfg: cfg.clone(),
            vocab,
            prompt_len: prompt.len(),
            next,
            state,
        }
    }

    /// Rows the model runs: inputs × beams.
    pub fn rows(&self) -> usize {
        match &self.state {
            State::Greedy(g) => g.seqs.len(),
            State::Beam(b) => b.running.len(),
        }
    }

    /// The next step's input; `None` once decoding has finished.
    pub fn next_input(&self) -> Option<&StepInput> {
        self.next.as_ref()
    }

    /// Tokens generated so far in the longest row (prompt excluded).
    pub fn generated_len(&self) -> usize {
        match &self.state {
            State::Greedy(g) => g.seqs.first().map_or(0, |s| s.len() - self.prompt_len),
            State::Beam(b) => b.cur_len - self.prompt_len,
        }
    }

    /// Takes the logits (`rows × vocab`) of the step [`Generation::next_input`] asked for.
    pub fn push_logits(&mut self, logits: &[f32]) -> Result<()> {
        if self.next.is_none() {
            return Err(TaskError::Input(
                "logits pushed after decoding finished".into(),
            ));
        }
        let want = self.rows() * self.vocab;
        if logits.len() != want {
            return Err(TaskError::Engine {
                graph: blip_package::DECODER.into(),
                message: format!(
                    "{} logits for a step, expected {} rows × {} vocabulary = {want}",
                    logits.len(),
                    self.rows(),
                    self.vocab
                ),
            });
        }
        self.next = match &mut self.state {
            State::Greedy(g) => g.push(logits, self.vocab, &self.cfg),
            State::Beam(b) => b.push(logits, self.vocab, self.prompt_len, &self.cfg),
        };
        Ok(())
    }

    /// The generated sequences (call once `next_input` is `None`; earlier, the best so far).
    pub fn finish(self) -> Generated {
        let prompt_len = self.prompt_len;
        let eos = self.cfg.eos;
        match self.state {
            State::Greedy(g) => Generated {
                sequences: g
                    .seqs
                    .into_iter()
                    .map(|mut s| {
                        if let Some(end) = s[prompt_len..].iter().position(|&x| x == eos) {
                            s.truncate(prompt_len + end + 1);
                        }
                        s
                    })
                    .collect(),
                scores: None,
            },
            State::Beam(b) => {
                let batch = b.unsatisfied.len();
                let k = b.k;
                Generated {
                    sequences: (0..batch).map(|i| b.fin_seq[i * k].clone()).collect(),
                    scores: Some((0..batch).map(|i| b.fin_score[i * k]).collect()),
                }
            }
        }
    }
}

impl GreedyState {
    fn push(&mut self, logits: &[f32], vocab: usize, cfg: &GenerationConfig) -> Option<StepInput> {
        let mut feed = Vec::with_capacity(self.seqs.len());
        for (r, seq) in self.seqs.iter_mut().enumerate() {
            let mut scores = logits[r * vocab..(r + 1) * vocab].to_vec();
            apply_processors(&mut scores, seq, cfg);
            let tok = if self.done[r] {
                cfg.pad
            } else {
                match self.sampler.as_mut() {
                    Some(s) => s.draw(&mut scores) as i64,
                    None => argmax(&scores) as i64,
                }
            };
            if tok == cfg.eos {
                self.done[r] = true;
            }
            seq.push(tok);
            feed.push(tok);
        }
        let len = self.seqs.first().map_or(0, Vec::len);
        (len < cfg.max_length && self.done.iter().any(|d| !d)).then_some(StepInput {
            tokens: feed,
            t: 1,
            reorder: None,
        })
    }
}

impl BeamState {
    /// One step of transformers v5 `_beam_search` (num_return_sequences = 1).
    fn push(
        &mut self,
        logits: &[f32],
        vocab: usize,
        prompt_len: usize,
        cfg: &GenerationConfig,
    ) -> Option<StepInput> {
        let k = self.k;
        let batch = self.unsatisfied.len();
        let keep = 2 * k; // candidates per step: (1 EOS token + 1) * num_beams
        let mut next_running = Vec::with_capacity(batch * k);
        let mut next_scores = Vec::with_capacity(batch * k);
        let mut sources = Vec::with_capacity(batch * k);
        let mut all_hit = true;
        let cur_len = self.cur_len;
        for b in 0..batch {
            // Accumulated log-probs of every (beam, token) continuation.
            let mut acc = Vec::with_capacity(k * vocab);
            for j in 0..k {
                let r = b * k + j;
                let mut lp = logits[r * vocab..(r + 1) * vocab].to_vec();
                log_softmax_in_place(&mut lp);
                apply_processors(&mut lp, &self.running[r], cfg);
                acc.extend(lp.iter().map(|x| x + self.running_scores[r]));
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
                .map(|c| c.0 + if c.3 { NEG } else { 0.0 })
                .collect();
            for &c in top_k_desc(&run_scores, k).iter() {
                let (_, beam, tok, _) = cands[c];
                let mut s = self.running[b * k + beam].clone();
                s.push(tok);
                next_running.push(s);
                next_scores.push(run_scores[c]);
                sources.push(b * k + beam);
            }
            // Finished beams: merge the top-k candidates that stopped into the k finished slots.
            let all_finished = self.fin_done[b * k..(b + 1) * k].iter().all(|&d| d);
            let denom = ((cur_len + 1 - prompt_len) as f32).powf(self.length_penalty);
            let mut merged: Vec<(f32, Vec<i64>, bool)> = (0..k)
                .map(|j| {
                    (
                        self.fin_score[b * k + j],
                        self.fin_seq[b * k + j].clone(),
                        self.fin_done[b * k + j],
                    )
                })
                .collect();
            for (c, &(score, beam, tok, hit)) in cands.iter().enumerate() {
                let just_finished = hit && c < k;
                let mut s = score / denom;
                if all_finished && self.early_stopping {
                    s += NEG;
                }
                if !self.unsatisfied[b] {
                    s += NEG;
                }
                if !just_finished {
                    s += NEG;
                }
                let mut seq = self.running[b * k + beam].clone();
                seq.push(tok);
                merged.push((s, seq, just_finished));
            }
            let scores: Vec<f32> = merged.iter().map(|m| m.0).collect();
            for (j, &m) in top_k_desc(&scores, k).iter().enumerate() {
                self.fin_score[b * k + j] = merged[m].0;
                self.fin_seq[b * k + j] = merged[m].1.clone();
                self.fin_done[b * k + j] = merged[m].2;
            }
        }
        self.running = next_running;
        self.running_scores = next_scores;
        self.cur_len += 1;
        for b in 0..batch {
            let best_len = (self.cur_len - prompt_len) as f32;
            let best_possible = self.running_scores[b * k] / best_len.powf(self.length_penalty);
            let worst = self.fin_score[b * k..(b + 1) * k]
                .iter()
                .copied()
                .fold(f32::INFINITY, f32::min);
            let improvable =
                (0..k).any(|j| best_possible > if self.fin_done[b * k + j] { worst } else { NEG });
            self.unsatisfied[b] = self.unsatisfied[b] && improvable;
        }
        let open = !(self.fin_done.iter().all(|&d| d) && self.early_stopping);
        if !(self.unsatisfied.iter().any(|&u| u) && open && !all_hit)
            || self.cur_len >= cfg.max_length
        {
            return None;
        }
        Some(StepInput {
            // Beams are never empty: each starts with the prompt and grows by one token a step.
            tokens: self
                .running
                .iter()
                .map(|s| s.last().copied().unwrap_or(cfg.pad))
                .collect(),
            t: 1,
            reorder: Some(sources),
        })
    }
}

/// Runs generation for `batch` inputs that all start from `prompt` (a blocking driver of
/// [`Generation`] over a [`Step`] model).
pub fn generate(
    model: &mut dyn Step,
    batch: usize,
    prompt: &[i64],
    cfg: &GenerationConfig,
) -> Result<Generated> {
    let mut generation = Generation::new(cfg, batch, prompt, model.vocab());
    while let Some(input) = generation.next_input() {
        let logits = model.step(&input.tokens, input.t, input.reorder.as_deref())?;
        generation.push_logits(&logits)?;
    }
    Ok(generation.finish())
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

    /// The toy model's logits for one row's history (what `Table` computes).
    fn table_logits(history: &[i64]) -> [f32; 5] {
        let mut t = Table {
            rows: 1,
            hist: vec![history[..history.len() - 1].to_vec()],
        };
        let out = t.step(&history[history.len() - 1..], 1, None).unwrap();
        [out[0], out[1], out[2], out[3], out[4]]
    }

    #[test]
    fn interleaved_generations_equal_separate_runs() {
        // Two requests with different strategies stepped in turn by one driver (as a server's
        // continuous batching does): each ends exactly as when run alone.
        let beam = cfg(Strategy::Beam {
            num_beams: 2,
            length_penalty: 1.0,
            early_stopping: false,
        });
        let greedy = cfg(Strategy::Greedy);
        let alone = |c: &GenerationConfig, rows: usize, batch: usize, prompt: &[i64]| {
            let mut m = Table {
                rows,
                hist: vec![vec![]; rows],
            };
            generate(&mut m, batch, prompt, c).unwrap()
        };
        let mut gens = vec![
            (Generation::new(&beam, 2, &[0], 5), Vec::<Vec<i64>>::new()),
            (Generation::new(&greedy, 1, &[3], 5), Vec::new()),
        ];
        let mut steps = 0;
        while gens.iter().any(|(g, _)| g.next_input().is_some()) {
            for (g, hist) in gens.iter_mut() {
                let Some(input) = g.next_input().cloned() else {
                    continue;
                };
                if let Some(src) = &input.reorder {
                    *hist = src.iter().map(|&r| hist[r].clone()).collect();
                }
                if hist.is_empty() {
                    *hist = vec![Vec::new(); g.rows()];
                }
                let mut logits = Vec::new();
                for (row, chunk) in hist.iter_mut().zip(input.tokens.chunks(input.t)) {
                    row.extend_from_slice(chunk);
                    logits.extend_from_slice(&table_logits(row));
                }
                g.push_logits(&logits).unwrap();
            }
            steps += 1;
            assert!(steps < 20, "generation did not finish");
        }
        let mut done = gens.into_iter().map(|(g, _)| g.finish());
        assert_eq!(done.next().unwrap(), alone(&beam, 4, 2, &[0]));
        assert_eq!(done.next().unwrap(), alone(&greedy, 1, 1, &[3]));
    }

    #[test]
    fn wrong_logit_counts_and_pushes_after_the_end_are_errors() {
        let mut g = Generation::new(&cfg(Strategy::Greedy), 2, &[0], 5);
        let err = g.push_logits(&[0.0; 7]).unwrap_err().to_string();
        assert!(err.contains("7 logits") && err.contains("2 rows"), "{err}");
        let mut c = cfg(Strategy::Greedy);
        c.max_length = 2;
        let mut g = Generation::new(&c, 1, &[0], 5);
        g.push_logits(&[0.0, 2.0, 1.0, 0.0, -1.0]).unwrap();
        assert!(g.next_input().is_none());
        assert_eq!(g.finish().sequences, vec![vec![0, 1]]);
        let mut g = Generation::new(&c, 1, &[0], 5);
        g.push_logits(&[0.0; 5]).unwrap();
        assert!(g.push_logits(&[0.0; 5]).is_err());
    }

    #[test]
    fn top_k_desc_orders_and_breaks_ties_by_index() {
        assert_eq!(top_k_desc(&[0.1, 0.5, 0.5, -1.0, 0.3], 3), vec![1, 2, 4]);
    }
}
