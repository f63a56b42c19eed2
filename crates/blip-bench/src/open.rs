//! `blip-onnx bench-open`: how long a package takes to open in a fresh process, the latency a
//! user sees before the first caption (`BlipModel::open`: manifest and checksum stamp, ONNX
//! Runtime, tokenizer, every graph's session). Each run starts this binary anew with `--child`,
//! which opens the package once and prints the milliseconds; the parent also times the whole child
//! process (start, ORT library load, open, exit).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use blip_runtime::{BlipModel, SessionOptions};
use serde_json::json;

use crate::{BenchError, Result, write_atomic};

/// Opens `package` once in this process and prints `{"open_ms": …}`.
pub fn child(package: &Path, threads: usize) -> Result<u8> {
    let t = Instant::now();
    let opts = SessionOptions {
        intra_threads: threads,
        ..Default::default()
    };
    let model = BlipModel::open(package, &opts)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    drop(model);
    println!("{}", json!({ "open_ms": ms }));
    Ok(0)
}

/// `runs` fresh-process opens of each package, interleaved (package A, B, A, B, …) so a busy
/// moment of the machine falls on all of them; writes `out.json` and `out.md` when asked.
pub fn run(packages: &[&Path], runs: usize, threads: usize, out: Option<&Path>) -> Result<u8> {
    let exe = std::env::current_exe().map_err(|source| BenchError::Io {
        action: "finding",
        path: "the running binary".into(),
        source,
    })?;
    let mut open: Vec<Vec<f64>> = vec![Vec::new(); packages.len()];
    let mut process: Vec<Vec<f64>> = vec![Vec::new(); packages.len()];
    // One open first, not counted: the page cache then holds every package as it will in a
    // deployment that restarts (the figures are warm-cache process starts).
    for round in 0..=runs {
        for (i, pkg) in packages.iter().enumerate() {
            let t = Instant::now();
            let output = Command::new(&exe)
                .arg("bench-open")
                .arg("--child")
                .arg("--threads")
                .arg(threads.to_string())
                .arg(pkg)
                .output()
                .map_err(|e| BenchError::Child {
                    what: format!("bench-open --child {}", pkg.display()),
                    message: e.to_string(),
                })?;
            let wall = t.elapsed().as_secs_f64() * 1e3;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let ms = serde_json::from_str::<serde_json::Value>(stdout.trim())
                .ok()
                .and_then(|v| v["open_ms"].as_f64())
                .filter(|_| output.status.success())
                .ok_or_else(|| BenchError::Child {
                    what: format!("bench-open --child {}", pkg.display()),
                    message: format!(
                        "{}{}",
                        stdout.trim(),
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                })?;
            if round > 0 {
                open[i].push(ms);
                process[i].push(wall);
            }
        }
    }
    let rows: Vec<serde_json::Value> = packages
        .iter()
        .enumerate()
        .map(|(i, pkg)| {
            let min = open[i].iter().copied().fold(f64::INFINITY, f64::min);
            let max = open[i].iter().copied().fold(0.0, f64::max);
            json!({
                "package": pkg.display().to_string(),
                "runs": runs,
                "open_median_ms": crate::quantile(&open[i], 0.5),
                "open_min_ms": min,
                "open_max_ms": max,
                "process_median_ms": crate::quantile(&process[i], 0.5),
            })
        })
        .collect();
    let report = json!({ "threads": threads, "rows": rows });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if let Some(out) = out {
        let mut md = format!(
            "# Package open time\n\nMade by `scripts/bench-open.sh` (do not edit by hand): `blip-onnx \
             bench-open`, {runs} fresh processes per package after one uncounted open, packages \
             interleaved, {threads} threads. *open*: `BlipModel::open` inside the process (manifest \
             and checksum stamp, ONNX Runtime, tokenizer, every graph's session: ready to caption); \
             *process*: the whole child process, from start to exit.\n\n\
             | package | open median ms | open min–max ms | process median ms |\n|---|---:|---:|---:|\n"
        );
        for r in &rows {
            md.push_str(&format!(
                "| {} | {:.0} | {:.0}–{:.0} | {:.0} |\n",
                r["package"].as_str().unwrap_or_default(),
                r["open_median_ms"].as_f64().unwrap_or(f64::NAN),
                r["open_min_ms"].as_f64().unwrap_or(f64::NAN),
                r["open_max_ms"].as_f64().unwrap_or(f64::NAN),
                r["process_median_ms"].as_f64().unwrap_or(f64::NAN),
            ));
        }
        let json_text = serde_json::to_string_pretty(&report).unwrap_or_default();
        write_atomic(&out.with_extension("json"), json_text.as_bytes())?;
        write_atomic(&out.with_extension("md"), md.as_bytes())?;
    }
    Ok(0)
}
