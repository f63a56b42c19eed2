//! `blip-onnx bench-runtime`: in-process latencies of the runtime on real-size packages, as JSON
//! (driven side by side with PyTorch by `tools/reference/blip_reference.py bench-runtime`).

use std::path::Path;

use crate::Result;
use blip_runtime::{
    BlipModel, CandidateStates, CaptionOptions, ImageInput, SessionOptions, Strategy,
};
use serde_json::json;

/// Median milliseconds of `reps` timed runs after a warm-up (`bench`'s timer).
fn time<T>(reps: usize, f: impl FnMut() -> Result<T>) -> Result<f64> {
    let times = crate::timed(reps, f)?;
    Ok(crate::stats(times, 1, String::new()).median_ms)
}

pub fn run(
    caption_pkg: &Path,
    retrieval_pkg: Option<&Path>,
    image: &Path,
    reps: usize,
    threads: usize,
) -> Result<u8> {
    let opts = SessionOptions {
        intra_threads: threads,
        ..Default::default()
    };
    let mut rows = Vec::new();
    let mut model = BlipModel::open(caption_pkg, &opts)?;
    let input = ImageInput::Path(image.to_path_buf());
    let px = model.pixel_values(&input)?;
    for batch in [1usize, 8] {
        let pixels: Vec<f32> = std::iter::repeat_n(px.iter().copied(), batch)
            .flatten()
            .collect();
        let ms = time(if batch == 1 { reps } else { reps.div_ceil(2) }, || {
            Ok(model.vision(&pixels, batch)?)
        })?;
        rows.push(json!({"case": format!("vision encoder b{batch}"), "median_ms": ms}));
    }
    // Exactly 20 new tokens after [DEC] (EOS blocked until then), from the image file.
    for (name, strategy) in [
        ("caption greedy, 20 tokens", Strategy::Greedy),
        (
            "caption beam 3, 20 tokens",
            Strategy::Beam {
                num_beams: 3,
                length_penalty: 1.0,
                early_stopping: false,
            },
        ),
    ] {
        let opts = CaptionOptions {
            prompt: String::new(),
            strategy,
            max_length: 21,
            min_length: 21,
            repetition_penalty: 1.0,
            no_cache: false,
        };
        let ms = time(reps.div_ceil(2), || -> Result<()> {
            let c = model.caption(std::slice::from_ref(&input), &opts)?;
            c.into_iter().next().transpose()?;
            Ok(())
        })?;
        rows.push(json!({"case": name, "median_ms": ms}));
    }
    drop(model);
    if let Some(pkg) = retrieval_pkg {
        let mut model = BlipModel::open(pkg, &opts)?;
        let (_, hidden) = model.embed_images(std::slice::from_ref(&input))?;
        // 1000 cached unit image embeddings; the 16 rerank candidates' hidden states are cached too.
        let dim = model.package.manifest.model.embed_dim.unwrap_or(256);
        let embeds = ndarray::Array3::from_shape_fn((1000, 1, dim), |(i, _, j)| {
            (((i * 31 + j * 17) % 97) as f32 - 48.0) / 400.0
        });
        let cand = hidden.select(ndarray::Axis(0), &[0; 16]);
        let ms = time(reps, || {
            Ok(model.rank_images(
                "a woman in a uniform standing next to a flag",
                embeds.view(),
                16,
                CandidateStates::Stored(&mut |_| Ok(cand.clone())),
            )?)
        })?;
        rows.push(json!({"case": "retrieval: 1 text vs 1000 images, rerank 16", "median_ms": ms}));
    }
    println!(
        "{}",
        json!({"engine": "blip-onnx (Rust, ORT)", "threads": threads, "rows": rows})
    );
    Ok(0)
}
