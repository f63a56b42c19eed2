//! Shared by the test suites: fixture paths, the PyTorch goldens written by
//! `tools/reference/blip_reference.py`, and fixture checkpoints converted into temporary packages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blip_convert::{ConvertOptions, convert};
use blip_package::Package;
use ndarray::{ArrayD, IxDyn};

/// FP32 parity tolerance (max abs diff) against PyTorch.
pub const TOL: f32 = 1e-4;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub fn fixture(rel: &str) -> PathBuf {
    repo().join("fixtures").join(rel)
}

/// Golden tensors and metadata.
pub struct Goldens {
    pub f32: HashMap<String, ArrayD<f32>>,
    pub i64: HashMap<String, ArrayD<i64>>,
    pub meta: serde_json::Value,
}

impl Goldens {
    pub fn load(name: &str) -> Goldens {
        let bytes =
            std::fs::read(fixture(&format!("goldens/{name}.safetensors"))).expect("golden file");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("golden safetensors");
        let mut f32s = HashMap::new();
        let mut i64s = HashMap::new();
        for (k, v) in st.tensors() {
            let shape = IxDyn(v.shape());
            match v.dtype() {
                safetensors::Dtype::F32 => {
                    let data = v
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    f32s.insert(
                        k.to_string(),
                        ArrayD::from_shape_vec(shape, data).expect("golden shape"),
                    );
                }
                safetensors::Dtype::I64 => {
                    let data = v
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                        .collect();
                    i64s.insert(
                        k.to_string(),
                        ArrayD::from_shape_vec(shape, data).expect("golden shape"),
                    );
                }
                other => panic!("unexpected golden dtype {other:?}"),
            }
        }
        let meta_text =
            std::fs::read_to_string(fixture(&format!("goldens/{name}.json"))).expect("golden json");
        Goldens {
            f32: f32s,
            i64: i64s,
            meta: serde_json::from_str(&meta_text).expect("golden json"),
        }
    }

    pub fn f(&self, k: &str) -> &ArrayD<f32> {
        self.f32
            .get(k)
            .unwrap_or_else(|| panic!("golden {k} missing"))
    }

    pub fn i(&self, k: &str) -> &ArrayD<i64> {
        self.i64
            .get(k)
            .unwrap_or_else(|| panic!("golden {k} missing"))
    }

    /// Token ids of a `generate` run recorded under `meta.generate[key]`.
    pub fn ids(&self, key: &str) -> Vec<Vec<i64>> {
        serde_json::from_value(self.meta["generate"][key]["ids"].clone())
            .unwrap_or_else(|_| panic!("golden ids {key}"))
    }

    pub fn settings(&self, key: &str) -> &serde_json::Value {
        &self.meta["generate"][key]["settings"]
    }
}

/// A fixture checkpoint converted into a temporary package (removed on drop).
pub struct Converted {
    pub dir: tempfile::TempDir,
    pub pkg: Package,
}

pub fn convert_fixture(checkpoint: &Path, opts: &ConvertOptions) -> Converted {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("pkg");
    convert(checkpoint, &out, opts)
        .unwrap_or_else(|e| panic!("convert {}: {e}", checkpoint.display()));
    let pkg = Package::open(&out).expect("package opens");
    Converted { dir, pkg }
}

/// The original-layout `.pth` fixture converted at 48 px (position embeddings interpolated from 32),
/// with the HF config and tokenizer of the same weights (goldens: `tiny-caption-pth-48`).
pub fn convert_pth_48() -> Converted {
    let opts = ConvertOptions {
        image_size: Some(48),
        config: Some(fixture("models/tiny-caption/config.json")),
        tokenizer: Some(fixture("models/tiny-caption")),
        ..Default::default()
    };
    convert_fixture(
        &fixture("models/tiny-caption-pth/model_tiny_caption.pth"),
        &opts,
    )
}

/// The manifest (`blip.json`) of the package at `dir`, as JSON.
pub fn manifest_json(dir: &Path) -> serde_json::Value {
    let path = dir.join("blip.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[track_caller]
pub fn assert_close(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>) {
    let d = max_abs_diff(got, want);
    assert!(d <= TOL, "{what}: max abs diff {d:e} > {TOL:e}");
    // A broken graph that outputs zeros must not pass because the golden is small.
    assert!(
        want.iter().any(|v| v.abs() > 1e-3),
        "{what}: golden is degenerate"
    );
}

/// A PNG that is only a valid header of `w × h` pixels and one empty IDAT chunk (CRCs correct):
/// a decompression bomb when large, a truncated image when small.
pub fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind_and_data: &[u8]| {
        png.extend_from_slice(&((kind_and_data.len() - 4) as u32).to_be_bytes());
        png.extend_from_slice(kind_and_data);
        png.extend_from_slice(&crc32(kind_and_data).to_be_bytes());
    };
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&ihdr);
    chunk(b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01");
    chunk(b"IEND");
    png
}

/// `fixtures/requests/task-options.json`, the cross-door table of VQA, ITM and search options,
/// with its `{"$list": [item, n]}` and `{"$string": [unit, n]}` written out (long lists and long
/// texts stay readable in the file).
pub fn task_options() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("requests/task-options.json"))
        .expect("fixtures/requests/task-options.json");
    expand_table(&serde_json::from_str(&text).expect("task-options.json is JSON"))
}

fn expand_table(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) if m.contains_key("$list") => {
            let n = m["$list"][1].as_u64().expect("$list count") as usize;
            Value::Array(vec![expand_table(&m["$list"][0]); n])
        }
        Value::Object(m) if m.contains_key("$string") => {
            let n = m["$string"][1].as_u64().expect("$string count") as usize;
            Value::String(m["$string"][0].as_str().expect("$string unit").repeat(n))
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), expand_table(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(expand_table).collect()),
        other => other.clone(),
    }
}

/// The two decodings the parity tests compare on: greedy, and beam search (3 beams, BLIP's
/// captioning setting).
pub fn greedy_and_beam() -> [blip_tasks::Strategy; 2] {
    [
        blip_tasks::Strategy::Greedy,
        blip_tasks::Strategy::Beam {
            num_beams: 3,
            length_penalty: 1.0,
            early_stopping: false,
        },
    ]
}
