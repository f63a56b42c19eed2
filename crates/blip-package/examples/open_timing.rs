//! Times `Package::open` on a package folder: the first open (hashing every graph, writing the
//! verified stamp) against re-opens (stamp trusted), and a full re-hash for comparison.
//!   cargo run --release -p blip-package --example open_timing -- PACKAGE_DIR

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: open_timing DIR")?);
    let _ = std::fs::remove_file(dir.join(blip_package::VERIFIED_STAMP));
    let bytes: u64 = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let t = Instant::now();
    let pkg = blip_package::Package::open(&dir)?;
    let first = t.elapsed();
    let t = Instant::now();
    for _ in 0..10 {
        blip_package::Package::open(&dir)?;
    }
    let stamped = t.elapsed() / 10;
    let t = Instant::now();
    pkg.verify_checksums_fully()?;
    let full = t.elapsed();
    println!(
        "{} MB: first open {:.3} s (hashing), re-open with stamp {:.2} ms, full re-hash {:.3} s",
        bytes >> 20,
        first.as_secs_f64(),
        stamped.as_secs_f64() * 1e3,
        full.as_secs_f64()
    );
    Ok(())
}
