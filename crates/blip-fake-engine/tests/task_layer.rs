//! The task layer over the fake engine (`blip_fake_engine`): decoding, iteration-level batching,
//! ranking and error paths, each checked against results computed here from the fake's public
//! math (its logit function, its embeddings and ITM logits), not from the code under test.

use std::collections::HashMap;

use blip_fake_engine::{
    self as fake, DEC, EOS, FakeCross, FakeGraphs, IMAGE_TOKENS, PIXELS, VOCAB,
};
use blip_package::Head;
use blip_preprocess::FirstToken;
use blip_tasks::{
    Blip, CandidateStates, CaptionOptions, DecodeBatch, Generation, Graphs, Strategy, TaskError,
    VqaOptions, ready,
};
use ndarray::{Array2, Axis};

// Word ids of the fake's tokenizer.
const A: i64 = 6;
const CAT: i64 = 7;
const DOG: i64 = 8;
const ON: i64 = 9;
const MAT: i64 = 10;
const SITS: i64 = 11;

/// A deterministic image, different for every `k`.
fn image(k: usize) -> Vec<f32> {
    (0..PIXELS)
        .map(|i| ((i * (k + 3) + k * 5) % 11) as f32 / 10.0 + 0.3 * k as f32 - 1.0)
        .collect()
}

/// An image whose fake features are `f` (each quarter of the pixels holds one value).
fn image_with(f: [f32; 4]) -> Vec<f32> {
    (0..PIXELS).map(|i| f[i * 4 / PIXELS]).collect()
}

/// What a decoder row reads of an image when the caption decoder attends to all its tokens.
fn image_context(pixels: &[f32]) -> f32 {
    let v = ready(FakeGraphs::default().vision(pixels, 1)).unwrap();
    fake::context(v.hidden.index_axis(Axis(0), 0), &[1; IMAGE_TOKENS])
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// Greedy decoding written out: the argmax of the fake's logits after HF's repetition penalty
/// and min-length rule, until EOS or `max_length`.
fn reference_greedy(prompt: &[i64], ctx: f32, max: usize, min: usize, penalty: f32) -> Vec<i64> {
    let mut seq = prompt.to_vec();
    while seq.len() < max {
        let mut logits = fake::next_token_logits(&seq, ctx);
        let mut seen = seq.clone();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            let l = &mut logits[t as usize];
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
        if seq.len() < min {
            logits[EOS as usize] = f32::NEG_INFINITY;
        }
        let tok = argmax(&logits) as i64;
        seq.push(tok);
        if tok == EOS {
            break;
        }
    }
    seq
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    v.iter().map(|&x| x as f64 - lse).collect()
}

/// Every finished sequence of at most `steps` generated tokens (ended by EOS, or cut at the
/// length limit) with BLIP's beam score: summed log-probabilities / generated length ^ `lp`.
fn brute_force_best(prompt: &[i64], ctx: f32, steps: usize, lp: f32) -> (Vec<i64>, f64) {
    let mut best = (Vec::new(), f64::NEG_INFINITY);
    // Open prefixes with their summed log-probabilities, expanded by every token.
    let mut open = vec![(prompt.to_vec(), 0.0f64)];
    while let Some((seq, logp)) = open.pop() {
        let generated = seq.len() + 1 - prompt.len();
        let lps = log_softmax(&fake::next_token_logits(&seq, ctx));
        for (tok, l) in lps.iter().enumerate() {
            let mut next = seq.clone();
            next.push(tok as i64);
            if tok as i64 == EOS || generated == steps {
                let normed = (logp + l) / (generated as f64).powf(lp as f64);
                if normed > best.1 {
                    best = (next, normed);
                }
            } else {
                open.push((next, logp + l));
            }
        }
    }
    best
}

fn opts(strategy: Strategy, prompt: &str, max_length: usize, min_length: usize) -> CaptionOptions {
    CaptionOptions {
        prompt: prompt.into(),
        strategy,
        max_length,
        min_length,
        repetition_penalty: 1.0,
        no_cache: false,
    }
}

fn beam(num_beams: usize, length_penalty: f32) -> Strategy {
    Strategy::Beam {
        num_beams,
        length_penalty,
        early_stopping: false,
    }
}

fn sample(top_k: usize, temperature: f32, seed: u64) -> Strategy {
    Strategy::Sample {
        temperature,
        top_k,
        top_p: 0.9,
        seed,
    }
}

/// The caption ids of one image, on a fresh fake engine.
fn caption_ids(pixels: &[f32], o: &CaptionOptions) -> Vec<i64> {
    let mut blip = fake::fake_blip(Head::Caption);
    ready(blip.caption_pixels(pixels, 1, o))
        .unwrap()
        .remove(0)
        .ids
}

const PROMPTS: [(&str, &[i64]); 3] = [
    ("", &[DEC]),
    ("a cat", &[DEC, A, CAT]),
    ("A dog sits on", &[DEC, A, DOG, SITS, ON]),
];

#[test]
fn greedy_is_the_argmax_chain_of_the_fakes_logits() {
    let mut distinct = std::collections::HashSet::new();
    for (prompt, prompt_ids) in PROMPTS {
        let o = opts(Strategy::Greedy, prompt, 20, 0);
        // Four images captioned in one batch: each row reads its own image.
        let pixels: Vec<f32> = (0..4).flat_map(image).collect();
        let mut blip = fake::fake_blip(Head::Caption);
        let captions = ready(blip.caption_pixels(&pixels, 4, &o)).unwrap();
        for (k, c) in captions.iter().enumerate() {
            let want = reference_greedy(prompt_ids, image_context(&image(k)), 20, 0, 1.0);
            assert_eq!(c.ids, want, "image {k}, prompt {prompt:?}");
            assert_eq!(*c.ids.last().unwrap(), EOS, "the fake's captions end");
            distinct.insert(c.ids.clone());
        }
        // The cached path equals re-feeding the whole sequence every step.
        let no_cache = CaptionOptions {
            no_cache: true,
            ..o
        };
        let refed = ready(blip.caption_pixels(&pixels, 4, &no_cache)).unwrap();
        assert_eq!(refed, captions);
    }
    assert!(
        distinct.len() > 6,
        "images and prompts change the captions: {distinct:?}"
    );
}

#[test]
fn beam_search_with_one_beam_is_greedy() {
    for (prompt, _) in PROMPTS {
        for k in 0..4 {
            let greedy = caption_ids(&image(k), &opts(Strategy::Greedy, prompt, 20, 3));
            let one_beam = caption_ids(&image(k), &opts(beam(1, 1.0), prompt, 20, 3));
            assert_eq!(one_beam, greedy, "image {k}, prompt {prompt:?}");
        }
    }
}

#[test]
fn beam_search_finds_the_brute_force_best_sequence() {
    // Three generated tokens at most over 12 tokens: 12² beams hold every live prefix, so the
    // search is exhaustive and must return the best finished sequence under BLIP's score.
    const STEPS: usize = 3;
    let beams = VOCAB * VOCAB;
    let mut beats_greedy = 0;
    let mut lp_matters = 0;
    for (prompt, prompt_ids) in PROMPTS {
        let max_length = prompt_ids.len() + STEPS;
        for k in 0..4 {
            let ctx = image_context(&image(k));
            let mut bests = Vec::new();
            for lp in [0.0, 1.0, 2.0] {
                let (best, score) = brute_force_best(prompt_ids, ctx, STEPS, lp);
                let mut blip = fake::fake_blip(Head::Caption);
                let o = opts(beam(beams, lp), prompt, max_length, 0);
                let c = ready(blip.caption_pixels(&image(k), 1, &o))
                    .unwrap()
                    .remove(0);
                assert_eq!(
                    c.ids, best,
                    "image {k}, prompt {prompt:?}, length penalty {lp}"
                );
                let got = c.score.expect("beam search scores") as f64;
                assert!(
                    (got - score).abs() < 1e-4,
                    "score {got} vs brute force {score}"
                );
                let greedy = reference_greedy(prompt_ids, ctx, max_length, 0, 1.0);
                beats_greedy += usize::from(best != greedy);
                bests.push(best);
            }
            lp_matters += usize::from(bests.iter().any(|b| *b != bests[0]));
        }
    }
    // The cases are not ones greedy decoding already solves, and the length penalty decides some.
    assert!(
        beats_greedy > 0,
        "every brute-force best was the greedy sequence"
    );
    assert!(
        lp_matters > 0,
        "the length penalty never changed the best sequence"
    );
}

/// An image and prompt whose greedy caption ends by EOS after at least four generated tokens.
fn long_caption_case() -> (Vec<f32>, &'static str, &'static [i64], Vec<i64>) {
    for (prompt, ids) in PROMPTS {
        for k in 0..8 {
            let free = caption_ids(&image(k), &opts(Strategy::Greedy, prompt, 30, 0));
            if free.len() >= ids.len() + 4 && *free.last().unwrap() == EOS {
                return (image(k), prompt, ids, free);
            }
        }
    }
    panic!("no greedy caption of four tokens or more");
}

#[test]
fn min_length_blocks_eos_until_then() {
    let (pixels, prompt, prompt_ids, free) = long_caption_case();
    let min = free.len() + 3;
    let ids = caption_ids(&pixels, &opts(Strategy::Greedy, prompt, 30, min));
    let ctx = image_context(&pixels);
    assert_eq!(ids, reference_greedy(prompt_ids, ctx, 30, min, 1.0));
    assert!(
        !ids[..min].contains(&EOS),
        "EOS before min_length {min}: {ids:?}"
    );
    assert!(ids.len() > free.len(), "{ids:?} is no longer than {free:?}");
    // Beam search too: no finished sequence is shorter than min_length + its EOS.
    let beamed = caption_ids(&pixels, &opts(beam(3, 1.0), prompt, 30, min));
    assert!(
        beamed.len() > min && !beamed[..min].contains(&EOS),
        "{beamed:?}"
    );
}

#[test]
fn max_length_stops_decoding() {
    let (pixels, prompt, _, free) = long_caption_case();
    let max = free.len() - 2;
    for strategy in [Strategy::Greedy, beam(3, 1.0), sample(0, 1.0, 3)] {
        let ids = caption_ids(&pixels, &opts(strategy.clone(), prompt, max, 0));
        assert!(ids.len() <= max, "{strategy:?}: {ids:?} is over {max}");
        if strategy == Strategy::Greedy {
            assert_eq!(ids, free[..max], "greedy is cut, not changed");
        }
    }
}

#[test]
fn repetition_penalty_changes_a_repeated_choice() {
    // Find a caption whose greedy choice repeats a token it already holds.
    let mut found = false;
    for (prompt, prompt_ids) in PROMPTS {
        for k in 0..6 {
            let free = caption_ids(&image(k), &opts(Strategy::Greedy, prompt, 20, 0));
            let repeats = (prompt_ids.len()..free.len()).any(|i| free[..i].contains(&free[i]));
            if !repeats {
                continue;
            }
            found = true;
            let o = CaptionOptions {
                repetition_penalty: 3.0,
                ..opts(Strategy::Greedy, prompt, 20, 0)
            };
            let ids = caption_ids(&image(k), &o);
            assert_ne!(
                ids, free,
                "the penalty changed nothing (image {k}, prompt {prompt:?})"
            );
            let want = reference_greedy(prompt_ids, image_context(&image(k)), 20, 0, 3.0);
            assert_eq!(ids, want);
        }
    }
    assert!(found, "no greedy caption repeats a token");
}

#[test]
fn seeded_sampling_is_reproducible_and_top_k_1_is_greedy() {
    let mut seen = std::collections::HashSet::new();
    for seed in 0..6 {
        let o = opts(sample(0, 1.0, seed), "a cat", 20, 0);
        let first = caption_ids(&image(1), &o);
        assert_eq!(caption_ids(&image(1), &o), first, "seed {seed}");
        seen.insert(first);
    }
    assert!(
        seen.len() > 1,
        "six seeds drew one caption: sampling draws nothing"
    );
    for k in 0..4 {
        let greedy = caption_ids(&image(k), &opts(Strategy::Greedy, "", 20, 2));
        let top1 = caption_ids(&image(k), &opts(sample(1, 0.7, 11), "", 20, 2));
        assert_eq!(top1, greedy, "image {k}");
    }
}

/// A request ready to join a decode batch: its decoding and its image's cross state.
fn start(
    blip: &mut Blip<FakeGraphs>,
    pixels: &[f32],
    o: &CaptionOptions,
) -> (Generation, FakeCross) {
    let (generation, _) = blip.caption_generation(1, o).unwrap();
    let vision = ready(blip.vision(pixels, 1)).unwrap();
    let cross = ready(
        blip.graphs
            .cross_kv(vision.hidden.view(), None, generation.rows()),
    )
    .unwrap();
    (generation, cross)
}

/// Four requests of different prompt lengths and strategies.
fn batch_requests() -> Vec<(Vec<f32>, CaptionOptions)> {
    let penalised = CaptionOptions {
        repetition_penalty: 1.3,
        ..opts(Strategy::Greedy, "a", 20, 0)
    };
    vec![
        (image(0), opts(Strategy::Greedy, "a cat", 20, 6)),
        (image(1), opts(beam(3, 1.0), "", 20, 5)),
        (image(2), opts(sample(0, 1.0, 5), "A dog sits on", 20, 8)),
        (image(3), penalised),
    ]
}

fn join(
    blip: &mut Blip<FakeGraphs>,
    batch: &mut DecodeBatch<FakeGraphs, usize>,
    tag: usize,
    done: &mut HashMap<usize, Vec<i64>>,
) -> Result<(), Box<(usize, TaskError)>> {
    let (pixels, o) = &batch_requests()[tag];
    let (generation, cross) = start(blip, pixels, o);
    if let Some((tag, g)) = ready(batch.join(&mut blip.graphs, tag, generation, cross))? {
        done.insert(tag, g.sequences[0].clone());
    }
    Ok(())
}

fn step(
    blip: &mut Blip<FakeGraphs>,
    batch: &mut DecodeBatch<FakeGraphs, usize>,
    done: &mut HashMap<usize, Vec<i64>>,
) {
    for (tag, g) in ready(batch.step(&mut blip.graphs)).unwrap() {
        done.insert(tag, g.sequences[0].clone());
    }
}

#[test]
fn iteration_level_batching_gives_each_request_its_own_tokens() {
    let alone: Vec<Vec<i64>> = batch_requests()
        .iter()
        .map(|(p, o)| caption_ids(p, o))
        .collect();
    let mut blip = fake::fake_blip(Head::Caption);
    let mut batch = DecodeBatch::new();
    let mut done = HashMap::new();
    // Requests join a running batch at different steps, so their caches differ in length.
    for (tag, steps_after) in [(0, 2), (1, 1), (2, 3), (3, 0)] {
        join(&mut blip, &mut batch, tag, &mut done).unwrap();
        for _ in 0..steps_after {
            step(&mut blip, &mut batch, &mut done);
        }
    }
    while !batch.is_empty() {
        step(&mut blip, &mut batch, &mut done);
    }
    for (tag, want) in alone.iter().enumerate() {
        assert_eq!(done.get(&tag), Some(want), "request {tag}");
    }
    let g = &blip.graphs;
    // Rows of three requests (beam 3 + two of 1 row) ran together, joined and left.
    assert!(g.decode_rows.iter().any(|&r| r >= 5), "{:?}", g.decode_rows);
    assert_eq!((g.calls.join_caches, g.calls.join_cross), (3, 3));
    assert!(g.calls.select_cache_rows >= 1 && g.calls.select_cross_rows >= 1);
}

#[test]
fn a_request_failing_to_join_gets_its_error_and_the_others_their_captions() {
    let alone: Vec<Vec<i64>> = batch_requests()
        .iter()
        .map(|(p, o)| caption_ids(p, o))
        .collect();
    let mut blip = fake::fake_blip(Head::Caption);
    let mut batch = DecodeBatch::new();
    let mut done = HashMap::new();
    join(&mut blip, &mut batch, 0, &mut done).unwrap();
    step(&mut blip, &mut batch, &mut done);
    join(&mut blip, &mut batch, 1, &mut done).unwrap();
    step(&mut blip, &mut batch, &mut done);
    // Request 2's prompt step (its next decoder run) fails.
    blip.graphs.fail_decode_at = Some(blip.graphs.calls.decode);
    let (tag, err) = *join(&mut blip, &mut batch, 2, &mut done).unwrap_err();
    assert_eq!(tag, 2);
    assert!(
        matches!(&err, TaskError::Engine { graph, message } if graph == blip_package::DECODER && message.contains("injected")),
        "{err:?}"
    );
    assert!(batch.is_intact() && batch.len() == 2);
    join(&mut blip, &mut batch, 3, &mut done).unwrap();
    while !batch.is_empty() {
        step(&mut blip, &mut batch, &mut done);
    }
    assert_eq!(done.len(), 3);
    for tag in [0, 1, 3] {
        assert_eq!(done[&tag], alone[tag], "request {tag}");
    }
}

#[test]
fn a_failed_batched_step_fails_every_request_in_it() {
    // The batch API has no per-request errors inside a step: one decoder run serves every row.
    let mut blip = fake::fake_blip(Head::Caption);
    let mut batch = DecodeBatch::new();
    let mut done = HashMap::new();
    join(&mut blip, &mut batch, 0, &mut done).unwrap();
    join(&mut blip, &mut batch, 1, &mut done).unwrap();
    blip.graphs.fail_decode_at = Some(blip.graphs.calls.decode);
    let err = ready(batch.step(&mut blip.graphs)).unwrap_err();
    assert!(matches!(&err, TaskError::Engine { graph, .. } if graph == blip_package::DECODER));
    assert!(!batch.is_intact());
    assert_eq!(batch.abort(), vec![0, 1]);
    assert!(batch.is_empty() && done.is_empty());
}

#[test]
fn engine_failures_surface_as_task_errors_naming_the_graph() {
    let o = opts(beam(3, 1.0), "a cat", 20, 0);
    let mut blip = fake::fake_blip(Head::Caption);
    blip.graphs.fail_vision = true;
    let err = ready(blip.caption_pixels(&image(0), 1, &o)).unwrap_err();
    assert!(
        matches!(&err, TaskError::Engine { graph, .. } if graph == blip_package::VISION_ENCODER),
        "{err:?}"
    );
    assert_eq!(
        blip.graphs.calls.decode, 0,
        "nothing decoded after the vision failure"
    );

    let mut blip = fake::fake_blip(Head::Caption);
    blip.graphs.fail_decode_at = Some(2);
    let err = ready(blip.caption_pixels(&image(0), 1, &o)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "running decoder: injected failure at decoder run 2"
    );
    assert_eq!(
        blip.graphs.calls.decode, 3,
        "decoding stopped at the failure"
    );
}

#[test]
fn rank_images_reranks_the_itc_top_k_by_itm_plus_itc() {
    let features = [
        [0.9, 0.1, 0.8, 0.2],
        [0.2, 0.9, 0.1, 0.7],
        [3.0, 0.3, 2.0, 0.1],
        [0.5, 0.5, 0.5, 0.5],
        [0.1, 0.2, 0.9, 0.1],
        // Brighter: ITC (normalised) cannot tell, ITM (scale-aware) ranks it up.
        [4.5, 4.2, 0.6, 6.0],
    ];
    let images: Vec<Vec<f32>> = features.iter().map(|&f| image_with(f)).collect();
    let text = "cat sits on a mat";
    // By hand, from the fake's raw outputs on an engine of its own.
    let mut reference = FakeGraphs::default();
    let all: Vec<f32> = images.concat();
    let vision = ready(reference.vision(&all, images.len())).unwrap();
    let embeds = vision.embeds.unwrap();
    let blip = fake::fake_blip(Head::Retrieval);
    let cls = blip
        .tokenizer
        .encode_batch(&[text], FirstToken::Cls, Some(35))
        .unwrap();
    let t = ready(reference.text_embeds(&cls)).unwrap();
    let itc: Vec<f32> = (0..images.len())
        .map(|i| {
            let v: ndarray::ArrayView1<f32> = embeds.slice(ndarray::s![i, 0, ..]);
            v.dot(&t.row(0))
        })
        .collect();
    let mut by_itc: Vec<usize> = (0..images.len()).collect();
    by_itc.sort_by(|&a, &b| itc[b].total_cmp(&itc[a]));
    let k = 4;
    let enc = blip
        .tokenizer
        .encode_batch(&[text; 4], FirstToken::Enc, Some(35))
        .unwrap();
    let cand_states = vision.hidden.select(Axis(0), &by_itc[..k]);
    let itm: Array2<f32> = ready(reference.itm_logits(&enc, cand_states.view())).unwrap();
    let mut want: Vec<(usize, f32)> = (0..k)
        .map(|j| (by_itc[j], itm[[j, 1]] + itc[by_itc[j]]))
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    want.extend(by_itc[k..].iter().map(|&i| (i, itc[i])));
    assert_ne!(
        want.iter().map(|w| w.0).collect::<Vec<_>>(),
        by_itc,
        "the rerank changes ITC's order (else this test shows nothing)"
    );

    let mut blip = fake::fake_blip(Head::Retrieval);
    let mut pixels_of = |cand: &[usize]| Ok(cand.iter().flat_map(|&i| images[i].clone()).collect());
    let hits = ready(blip.rank_images(
        text,
        embeds.view(),
        k,
        CandidateStates::Pixels(&mut pixels_of),
    ))
    .unwrap();
    let got: Vec<(usize, f32)> = hits.iter().map(|h| (h.index, h.score)).collect();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        want.iter().map(|w| w.0).collect::<Vec<_>>()
    );
    for ((_, g), (_, w)) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    assert!(hits[..k].iter().all(|h| h.itm.is_some()) && hits[k..].iter().all(|h| h.itm.is_none()));
    // Only the k candidates were encoded, in one vision run.
    assert_eq!((blip.graphs.calls.vision, blip.graphs.calls.images), (1, k));

    // k = 0: ITC order alone, no ITM run.
    let none = ready(blip.rank_images(
        text,
        embeds.view(),
        0,
        CandidateStates::Pixels(&mut pixels_of),
    ))
    .unwrap();
    assert_eq!(none.iter().map(|h| h.index).collect::<Vec<_>>(), by_itc);
    assert_eq!(blip.graphs.calls.itm, 1);
}

/// The context a VQA answer reads: the question states (image mean state + token features) over
/// the question's tokens ([ENC] first), padding masked.
fn question_context(pixels: &[f32], question_ids: &[i64]) -> f32 {
    let v = ready(FakeGraphs::default().vision(pixels, 1)).unwrap();
    let mean = v.hidden.index_axis(Axis(0), 0).mean_axis(Axis(0)).unwrap();
    let states = Array2::from_shape_fn((question_ids.len(), 4), |(l, d)| {
        mean[d] + fake::token_feature(question_ids[l], d)
    });
    fake::context(states.view(), &vec![1; question_ids.len()])
}

#[test]
fn vqa_encodes_the_image_once_for_several_questions() {
    let questions = ["cat on a mat", "dog", "a dog sits on a cat"];
    let question_ids: [&[i64]; 3] = [
        &[fake::ENC, CAT, ON, A, MAT, fake::SEP],
        &[fake::ENC, DOG, fake::SEP],
        &[fake::ENC, A, DOG, SITS, ON, A, CAT, fake::SEP],
    ];
    let o = VqaOptions {
        strategy: Strategy::Greedy,
        mask_question_padding: true,
        ..VqaOptions::default()
    };
    let pixels = image(2);
    let mut blip = fake::fake_blip(Head::Vqa);
    let answers = ready(blip.answer_pixels_of(&pixels, 1, &[0, 0, 0], &questions, &o)).unwrap();
    let c = blip.graphs.calls;
    assert_eq!(
        (c.vision, c.images, c.question_states, c.cross_kv),
        (1, 1, 1, 1)
    );
    for (i, a) in answers.iter().enumerate() {
        let ctx = question_context(&pixels, question_ids[i]);
        let want = reference_greedy(&[DEC], ctx, o.max_length, o.min_length, 1.0);
        assert_eq!(a.ids, want, "question {i}");
    }
    let distinct: std::collections::HashSet<_> = answers.iter().map(|a| &a.ids).collect();
    assert!(distinct.len() > 1, "the questions change the answers");
    // Beam search answers one at a time equal the batched ones (padding masked).
    let o = VqaOptions {
        mask_question_padding: true,
        ..VqaOptions::default()
    };
    let batched =
        ready(fake::fake_blip(Head::Vqa).answer_pixels_of(&pixels, 1, &[0, 0, 0], &questions, &o))
            .unwrap();
    for (q, b) in questions.iter().zip(&batched) {
        let alone = ready(fake::fake_blip(Head::Vqa).answer_pixels(&pixels, 1, &[q], &o)).unwrap();
        assert_eq!(alone[0], *b, "{q}");
    }
}

#[test]
fn vqa_rank_mode_scores_answers_by_their_smoothed_likelihood() {
    let answers = ["cat", "a dog", "mat", "a cat sits", "on"];
    let answer_ids: [&[i64]; 5] = [&[CAT], &[A, DOG], &[MAT], &[A, CAT, SITS], &[ON]];
    let question = "a cat on a mat";
    let q_ids = [fake::ENC, A, CAT, ON, A, MAT, fake::SEP];
    let pixels = image(4);
    let ctx = question_context(&pixels, &q_ids);
    // LAVIS: -Σ over answer tokens and [SEP] of 0.9 · NLL + 0.1 · (log-sum-exp − mean logit).
    let score = |ids: &[i64]| -> f32 {
        let mut seq = vec![DEC];
        let mut s = 0.0;
        for &target in ids.iter().chain(&[EOS]) {
            let l = fake::next_token_logits(&seq, ctx);
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + l.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            s -= 0.9 * (lse - l[target as usize])
                + 0.1 * (lse - l.iter().sum::<f32>() / VOCAB as f32);
            seq.push(target);
        }
        s
    };
    let first = fake::next_token_logits(&[DEC], ctx);
    let k = 3;
    let mut order: Vec<usize> = (0..answers.len()).collect();
    order.sort_by(|&a, &b| {
        first[answer_ids[b][0] as usize]
            .total_cmp(&first[answer_ids[a][0] as usize])
            .then(a.cmp(&b))
    });
    order.truncate(k);
    let want: Vec<(usize, f32)> = order.iter().map(|&a| (a, score(answer_ids[a]))).collect();
    let best = want
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
        .0;

    let mut blip = fake::fake_blip(Head::Vqa);
    let ranked = ready(blip.rank_answers_pixels(&pixels, 1, &[question], &answers, k, 35)).unwrap();
    assert_eq!(ranked[0].best, best);
    assert_eq!(
        ranked[0].candidates.iter().map(|c| c.0).collect::<Vec<_>>(),
        order
    );
    for ((_, g), (_, w)) in ranked[0].candidates.iter().zip(&want) {
        assert!(
            (g - w).abs() < 1e-4,
            "{:?} vs {want:?}",
            ranked[0].candidates
        );
    }
}
