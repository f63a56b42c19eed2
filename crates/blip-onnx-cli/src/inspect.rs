use std::path::Path;

use anyhow::Result;
use blip_package::Package;
use blip_runtime::{Int8Path, OrtLibrary, SessionOptions, smoke};

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
    if m.graphs
        .values()
        .any(|g| g.precision == blip_package::Precision::Int8)
    {
        let path = Int8Path::detect();
        println!("int8      {} on this CPU: {}", path.name(), path.reason());
    }
    let rt = if run { Some(OrtLibrary::init()?) } else { None };
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
            let smoke = smoke::run_graph(rt, &pkg, role, &opts)?;
            print!(
                "  load {:>7.1} ms  run {:>7.1} ms  ok",
                smoke.load.as_secs_f64() * 1e3,
                smoke.run.as_secs_f64() * 1e3
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
