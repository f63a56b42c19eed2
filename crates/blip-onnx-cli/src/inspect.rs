use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blip_package::Package;
use blip_runtime::{Runtime, SessionOptions};
use ndarray::{ArrayD, IxDyn};
use ort::value::Tensor;

/// Concrete sizes for symbolic dims in a smoke run.
fn dim_value(name: &str, image_tokens: usize) -> usize {
    match name {
        "batch" => 2,
        "sequence" => 5,
        "past_sequence" => 3,
        "total_sequence" => 8,
        "encoder_sequence" => image_tokens,
        _ => 1,
    }
}

pub fn inspect(dir: &Path, run: bool, threads: usize) -> Result<()> {
    let pkg = Package::open(dir)?;
    let m = &pkg.manifest;
    println!(
        "package   {} ({} head, {}, opset {})",
        dir.display(),
        m.head,
        m.precision,
        m.opset
    );
    println!(
        "source    {} [{}] sha256 {}",
        m.source.name, m.source.format, m.source.sha256
    );
    println!(
        "model     vision {}x{} (d={}), text {}x{} (d={}), image {}px -> {} tokens, vocab {}",
        m.model.vision_layers,
        m.model.vision_heads,
        m.model.vision_hidden_size,
        m.model.text_layers,
        m.model.text_heads,
        m.model.text_hidden_size,
        m.model.image_size,
        m.model.image_tokens,
        m.model.vocab_size
    );
    println!(
        "tokens    bos {} enc {} sep/eos {} pad {}",
        m.tokens.bos, m.tokens.enc, m.tokens.sep, m.tokens.pad
    );
    let rt = if run { Some(Runtime::init()?) } else { None };
    for (role, g) in &m.graphs {
        print!(
            "graph     {role:<22} {:>12} bytes  {} in / {} out  {}",
            g.bytes,
            g.inputs.len(),
            g.outputs.len(),
            g.precision
        );
        if let Some(rt) = &rt {
            let opts = SessionOptions {
                intra_threads: threads,
                ..Default::default()
            };
            let t0 = Instant::now();
            let mut session = rt.session(&dir.join(&g.file), &opts)?;
            let load = t0.elapsed();
            let mut inputs: Vec<(String, ort::value::DynValue)> = Vec::new();
            for spec in &g.inputs {
                let shape: Vec<usize> = spec
                    .dims
                    .iter()
                    .map(|d| {
                        d.as_u64().map(|v| v as usize).unwrap_or_else(|| {
                            dim_value(d.as_str().unwrap_or(""), m.model.image_tokens)
                        })
                    })
                    .collect();
                let n: usize = shape.iter().product();
                let value = match spec.dtype.as_str() {
                    "int64" => {
                        // ids within the vocabulary, masks of ones, positions counting up.
                        let data: Vec<i64> = (0..n as i64)
                            .map(|i| {
                                if spec.name.contains("mask") {
                                    1
                                } else {
                                    (i % 7) + 1
                                }
                            })
                            .collect();
                        Tensor::from_array(ArrayD::from_shape_vec(IxDyn(&shape), data)?)?.into_dyn()
                    }
                    "float32" => {
                        let data: Vec<f32> =
                            (0..n).map(|i| ((i % 13) as f32 - 6.0) * 0.05).collect();
                        Tensor::from_array(ArrayD::from_shape_vec(IxDyn(&shape), data)?)?.into_dyn()
                    }
                    other => bail!("input {} has unsupported dtype {other}", spec.name),
                };
                inputs.push((spec.name.clone(), value));
            }
            let t1 = Instant::now();
            let outputs = session
                .run(inputs)
                .with_context(|| format!("running {role}"))?;
            let run_time = t1.elapsed();
            let mut finite = true;
            for spec in &g.outputs {
                let (_, data) = outputs[spec.name.as_str()].try_extract_tensor::<f32>()?;
                finite &= data.iter().all(|v| v.is_finite());
            }
            if !finite {
                bail!("{role}: non-finite output on synthetic input");
            }
            print!(
                "  load {:>7.1} ms  run {:>7.1} ms  ok",
                load.as_secs_f64() * 1e3,
                run_time.as_secs_f64() * 1e3
            );
        }
        println!();
        for (what, how) in [
            ("quantized", &g.quantization),
            ("optimized", &g.optimization),
        ] {
            if let Some(how) = how {
                println!("          {what}: {how}");
            }
        }
    }
    Ok(())
}
