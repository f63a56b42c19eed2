//! A smoke run: one graph loaded and run on synthetic input built from the manifest's I/O specs
//! (`inspect --run`; a server's readiness check).

use std::time::{Duration, Instant};

use blip_package::{CROSS_GROUPS, CROSS_SLOTS, Package};
use ort::value::{DynValue, Tensor};

use crate::engine::infer_err;
use crate::{OrtLibrary, Result, RuntimeError, SessionOptions};

/// Concrete sizes for symbolic dims in a smoke run.
fn dim_value(name: &str, image_tokens: usize) -> usize {
    match name {
        "batch" => 2,
        "sequence" => 5,
        "past_sequence" => 3,
        "total_sequence" => 8,
        "encoder_sequence" => image_tokens,
        // The decoder's two rows are two beams of one image, sharing its cross K/V.
        "images" => 1,
        "group" => 2,
        _ => 1,
    }
}

/// How long a graph took to load and to run once.
#[derive(Debug, Clone, Copy)]
pub struct SmokeRun {
    pub load: Duration,
    pub run: Duration,
}

/// Loads the graph of `role` and runs it once on synthetic input (ids within the vocabulary, masks
/// of ones, small floats); fails on any error or a non-finite output.
pub fn run_graph(
    library: &OrtLibrary,
    package: &Package,
    role: &str,
    opts: &SessionOptions,
) -> Result<SmokeRun> {
    let graph = package.graph(role)?;
    let t0 = Instant::now();
    let mut session = library.package_session(package, role, opts)?;
    let load = t0.elapsed();
    let image_tokens = package.manifest.model.image_tokens;
    let mut inputs: Vec<(String, DynValue)> = Vec::new();
    for spec in &graph.inputs {
        let shape: Vec<usize> = spec
            .dims
            .iter()
            .map(|d| match d.as_u64() {
                Some(v) => v as usize,
                None => dim_value(d.as_str().unwrap_or(""), image_tokens),
            })
            .collect();
        let n: usize = shape.iter().product();
        let value = match spec.dtype.as_str() {
            "int64" => {
                let data: Vec<i64> = (0..n as i64)
                    .map(|i| {
                        if spec.name.contains("mask") {
                            1
                        } else if spec.name == CROSS_GROUPS || spec.name == CROSS_SLOTS {
                            // Row indices: `images · group` equals the batch of rows.
                            i
                        } else {
                            (i % 7) + 1
                        }
                    })
                    .collect();
                Tensor::from_array((shape, data))
                    .map_err(infer_err(role))?
                    .into_dyn()
            }
            "float32" => {
                let data: Vec<f32> = (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.05).collect();
                Tensor::from_array((shape, data))
                    .map_err(infer_err(role))?
                    .into_dyn()
            }
            other => {
                return Err(RuntimeError::Input(format!(
                    "{role}: input {} has unsupported dtype {other}",
                    spec.name
                )));
            }
        };
        inputs.push((spec.name.clone(), value));
    }
    let t1 = Instant::now();
    let outputs = session.run(inputs).map_err(infer_err(role))?;
    let run = t1.elapsed();
    for spec in &graph.outputs {
        let value = outputs.get(spec.name.as_str()).ok_or_else(|| {
            RuntimeError::Input(format!("{role}: no output {} in the graph", spec.name))
        })?;
        let (_, data) = value.try_extract_tensor::<f32>().map_err(infer_err(role))?;
        if !data.iter().all(|v| v.is_finite()) {
            return Err(RuntimeError::Input(format!(
                "{role}: non-finite output {} on synthetic input",
                spec.name
            )));
        }
    }
    Ok(SmokeRun { load, run })
}
