//! Embeds the built browser assets (web/dist, the demo page, the npm package files) into the
//! binary, so an installed `blip-onnx` exports a site from anywhere: for release builds (what
//! `cargo install` makes) and for any build with BLIP_ONNX_EMBED_WEB=1, when scripts/build-web.sh
//! has run. Otherwise nothing is embedded and `export-web` asks for --web-dir.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let web = manifest.join("../../web");
    println!("cargo:rerun-if-env-changed=BLIP_ONNX_EMBED_WEB");
    for p in ["dist", "demo", "index.js", "index.d.ts", "package.json"] {
        println!("cargo:rerun-if-changed={}", web.join(p).display());
    }
    let wanted = std::env::var("PROFILE").is_ok_and(|p| p == "release")
        || std::env::var("BLIP_ONNX_EMBED_WEB").is_ok_and(|v| v == "1");
    let built = web.join("dist/pkg/blip_web.js").is_file();
    let mut list = Vec::new();
    if wanted && built {
        for rel in ["index.js", "index.d.ts", "package.json"] {
            list.push(web.join(rel));
        }
        files(&web.join("demo"), &mut list);
        files(&web.join("dist"), &mut list);
    }
    let mut code = String::from("pub(crate) static EMBEDDED: &[(&str, &[u8])] = &[\n");
    for path in &list {
        let rel = path
            .strip_prefix(&web)
            .map(|r| r.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        let abs = path.canonicalize().unwrap_or_else(|_| path.clone());
        let _ = writeln!(
            code,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("embedded_web.rs");
    std::fs::write(out, code).unwrap_or_else(|e| panic!("writing embedded_web.rs: {e}"));
}
