//! Caption packages side by side in one process, rounds interleaved (each round times every package
//! once), for `scripts/bench-cpu-quant.sh`:
//!
//!     quant_bench IMAGE ROUNDS REPS THREADS PACKAGE...
//!
//! The cases are `blip-onnx bench-runtime`'s: vision encoder batch 1 and 8 on the image, and
//! captions of exactly 20 new tokens (EOS blocked) greedy and beam 3, from the image file. Prints one
//! JSON object: per package and case the median ms of each round (a round's figure is the median of
//! REPS runs after a warm-up).

use std::path::Path;
use std::time::Instant;

use blip_runtime::{BlipModel, CaptionOptions, ImageInput, SessionOptions, Strategy};

type Error = Box<dyn std::error::Error>;

fn median_ms(reps: usize, mut f: impl FnMut() -> Result<(), Error>) -> Result<f64, Error> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn caption_opts(strategy: Strategy) -> CaptionOptions {
    CaptionOptions {
        prompt: String::new(),
        strategy,
        max_length: 21,
        min_length: 21,
        repetition_penalty: 1.0,
        no_cache: false,
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, rounds, reps, threads, packages @ ..] = args.as_slice() else {
        return Err("usage: quant_bench IMAGE ROUNDS REPS THREADS PACKAGE...".into());
    };
    let (rounds, reps, threads): (usize, usize, usize) =
        (rounds.parse()?, reps.parse()?, threads.parse()?);
    let opts = SessionOptions {
        intra_threads: threads,
        ..Default::default()
    };
    let input = ImageInput::Path(image.into());
    let mut models = Vec::new();
    for p in packages {
        models.push(BlipModel::open(Path::new(p), &opts)?);
    }
    let cases = [
        "vision encoder b1",
        "vision encoder b8",
        "caption greedy, 20 tokens",
        "caption beam 3, 20 tokens",
    ];
    // results[package][case][round]
    let mut results = vec![vec![Vec::new(); cases.len()]; models.len()];
    for _ in 0..rounds {
        for (m, model) in models.iter_mut().enumerate() {
            let px = model.pixel_values(&input)?;
            for (c, batch) in [1usize, 8].into_iter().enumerate() {
                let pixels: Vec<f32> = std::iter::repeat_n(px.iter().copied(), batch)
                    .flatten()
                    .collect();
                let n = if batch == 1 { reps } else { reps.div_ceil(2) };
                results[m][c].push(median_ms(n, || {
                    model.vision(&pixels, batch)?;
                    Ok(())
                })?);
            }
            let beam = Strategy::Beam {
                num_beams: 3,
                length_penalty: 1.0,
                early_stopping: false,
            };
            for (c, strategy) in [(2, Strategy::Greedy), (3, beam)] {
                let o = caption_opts(strategy);
                results[m][c].push(median_ms(reps.div_ceil(2), || {
                    let caption = model.caption(std::slice::from_ref(&input), &o)?;
                    caption.into_iter().next().transpose()?;
                    Ok(())
                })?);
            }
        }
    }
    let rows: Vec<String> = packages
        .iter()
        .zip(&results)
        .map(|(p, per_case)| {
            let cases: Vec<String> = cases
                .iter()
                .zip(per_case)
                .map(|(c, ms)| format!("\"{c}\": {ms:?}"))
                .collect();
            format!("{{\"package\": {p:?}, \"ms\": {{{}}}}}", cases.join(", "))
        })
        .collect();
    println!(
        "{{\"threads\": {threads}, \"rounds\": {rounds}, \"reps\": {reps}, \"packages\": [{}]}}",
        rows.join(", ")
    );
    Ok(())
}
