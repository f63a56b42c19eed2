//! Open-to-first-caption-ready of a package in this process, for cold-process open timings
//! (`scripts/bench-cpu-quant.sh` runs it once per process):
//!
//!     open_time PACKAGE [THREADS]
//!
//! Prints one JSON line: the seconds from before `BlipModel::open` (package checks, tokenizer,
//! every graph's session) to a model ready to caption, then the seconds of a first 1-token caption
//! of a blank image (which has to run every graph once).

use std::time::Instant;

use blip_runtime::{BlipModel, CaptionOptions, SessionOptions, Strategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: open_time PACKAGE [THREADS]")?;
    let threads: usize = args.next().map_or(Ok(2), |t| t.parse())?;
    let opts = SessionOptions {
        intra_threads: threads,
        ..Default::default()
    };
    let start = Instant::now();
    let mut model = BlipModel::open(std::path::Path::new(&dir), &opts)?;
    let open_s = start.elapsed().as_secs_f64();
    let size = model.package.manifest.preprocess.image_size;
    let pixels = vec![0f32; 3 * size * size];
    let caption = CaptionOptions {
        prompt: String::new(),
        strategy: Strategy::Greedy,
        max_length: 2,
        min_length: 0,
        repetition_penalty: 1.0,
        no_cache: false,
    };
    let first = Instant::now();
    model.caption_pixels(&pixels, 1, &caption)?;
    println!(
        "{{\"open_s\": {open_s:.4}, \"first_caption_s\": {:.4}}}",
        first.elapsed().as_secs_f64()
    );
    Ok(())
}
