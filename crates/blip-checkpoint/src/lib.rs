//! Reading BLIP checkpoints without Python.
//!
//! Accepted inputs:
//! * a Hugging Face folder: `config.json` + `model.safetensors`, sharded safetensors
//!   (`model.safetensors.index.json`), or `pytorch_model.bin` (torch zip pickle, possibly sharded);
//! * an original salesforce/BLIP `.pth` (torch zip pickle, state dict nested under `"model"`), whose keys
//!   are renamed to the Hugging Face layout ([`rename`]).
//!
//! Tensors stay in the memory-mapped files; [`Checkpoint::f32_bytes`] hands out f32 little-endian
//! bytes, borrowed when the stored tensor already is contiguous f32 and converted otherwise.

mod blip2_config;
mod config;
mod rename;
mod safetensors_source;
mod torch_pickle;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use blip2_config::{Blip2Architecture, Blip2Config, QFormerConfig};
pub use config::{
    BLIP2_GENERATION_NOT_CONVERTED, BlipConfig, Head, TextConfig, VisionConfig,
    head_from_architecture, head_from_tensor_names, infer_config_from_shapes,
};
pub use rename::original_to_hf;

/// Errors reading a checkpoint. Each names the file or tensor concerned.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: no such file or folder")]
    NotFound { path: PathBuf },
    #[error(
        "{dir}: no config.json (a Hugging Face BLIP folder needs config.json next to the weights)"
    )]
    MissingConfig { dir: PathBuf },
    #[error("{path}: invalid config.json: {message}")]
    BadConfig { path: PathBuf, message: String },
    #[error(
        "{path}: model_type is {found:?}, not \"blip\" (this tool converts BLIP checkpoints only)"
    )]
    UnknownModelType { path: PathBuf, found: String },
    /// A checkpoint of the BLIP family this tool does not convert (BLIP-2, InstructBLIP), named.
    #[error("{path}: {model} is not supported: {reason}")]
    UnsupportedModel {
        path: PathBuf,
        model: String,
        reason: String,
    },
    #[error(
        "{dir}: no weights found (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)"
    )]
    NoWeights { dir: PathBuf },
    #[error("{path}: truncated or corrupt safetensors file: {message}")]
    BadSafetensors { path: PathBuf, message: String },
    #[error("{path}: not a readable torch checkpoint: {message}")]
    BadTorchFile { path: PathBuf, message: String },
    #[error(
        "{path}: the checkpoint has no \"model\" key (top-level keys: {keys}); original BLIP .pth files keep the state dict under \"model\""
    )]
    NoModelKey { path: PathBuf, keys: String },
    #[error("missing tensor {name} (checkpoint {path})")]
    MissingTensor { name: String, path: PathBuf },
    #[error("tensor {name} has shape {found:?}, expected {expected:?} (checkpoint {path})")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        path: PathBuf,
    },
    #[error(
        "tensor {name} has dtype {dtype:?}, which cannot be converted to float32 (checkpoint {path})"
    )]
    UnsupportedDtype {
        name: String,
        dtype: DType,
        path: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, CheckpointError>;

/// Stored element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size_of(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
}

/// Which layout the checkpoint came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    HfSafetensors,
    HfPytorchBin,
    OriginalPth,
}

impl CheckpointFormat {
    pub fn name(self) -> &'static str {
        match self {
            CheckpointFormat::HfSafetensors => "hf-safetensors",
            CheckpointFormat::HfPytorchBin => "hf-pytorch-bin",
            CheckpointFormat::OriginalPth => "salesforce-pth",
        }
    }
}

pub(crate) enum Buffer {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Buffer {
    fn bytes(&self) -> &[u8] {
        match self {
            Buffer::Mapped(m) => m,
            Buffer::Owned(v) => v,
        }
    }
}

/// Where one tensor's elements are.
#[derive(Debug, Clone)]
pub(crate) struct TensorEntry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Element strides; `None` means contiguous row-major.
    pub strides: Option<Vec<usize>>,
    pub buffer: usize,
    /// Byte offset of element 0 in the buffer.
    pub offset: usize,
    /// Bytes available from `offset` (bounds check for strided reads).
    pub available: usize,
    pub file: usize,
}

/// A loaded checkpoint: tensor names (Hugging Face layout) → data in mapped files.
pub struct Checkpoint {
    pub format: CheckpointFormat,
    /// The path the user gave (folder or file).
    pub path: PathBuf,
    /// Every weight file read.
    pub files: Vec<PathBuf>,
    /// config.json when there is one.
    pub config_file: Option<PathBuf>,
    pub(crate) buffers: Vec<Buffer>,
    pub(crate) tensors: BTreeMap<String, TensorEntry>,
}

pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the file is opened read-only; the converter never writes into its input.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl Checkpoint {
    /// Opens a Hugging Face folder, or a `.pth` / `.bin` / `.safetensors` file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        if !path.exists() {
            return Err(CheckpointError::NotFound {
                path: path.to_path_buf(),
            });
        }
        if path.is_dir() {
            return Self::open_hf_dir(path);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "safetensors" => {
                let mut ck = Self::empty(CheckpointFormat::HfSafetensors, path);
                safetensors_source::add_file(&mut ck, path)?;
                Ok(ck)
            }
            _ => {
                let mut ck = Self::empty(CheckpointFormat::OriginalPth, path);
                torch_pickle::add_file(&mut ck, path, Some("model"))?;
                ck.tensors = std::mem::take(&mut ck.tensors)
                    .into_iter()
                    .map(|(k, v)| (original_to_hf(&k), v))
                    .collect();
                Ok(ck)
            }
        }
    }

    fn empty(format: CheckpointFormat, path: &Path) -> Checkpoint {
        Checkpoint {
            format,
            path: path.to_path_buf(),
            files: Vec::new(),
            config_file: None,
            buffers: Vec::new(),
            tensors: BTreeMap::new(),
        }
    }

    fn open_hf_dir(dir: &Path) -> Result<Checkpoint> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(CheckpointError::MissingConfig {
                dir: dir.to_path_buf(),
            });
        }
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let bin = dir.join("pytorch_model.bin");
        let bin_index = dir.join("pytorch_model.bin.index.json");
        let mut ck;
        if single.is_file() {
            ck = Self::empty(CheckpointFormat::HfSafetensors, dir);
            safetensors_source::add_file(&mut ck, &single)?;
        } else if index.is_file() {
            ck = Self::empty(CheckpointFormat::HfSafetensors, dir);
            for shard in shard_files(&index)? {
                safetensors_source::add_file(&mut ck, &dir.join(shard))?;
            }
        } else if bin.is_file() {
            ck = Self::empty(CheckpointFormat::HfPytorchBin, dir);
            torch_pickle::add_file(&mut ck, &bin, None)?;
        } else if bin_index.is_file() {
            ck = Self::empty(CheckpointFormat::HfPytorchBin, dir);
            for shard in shard_files(&bin_index)? {
                torch_pickle::add_file(&mut ck, &dir.join(shard), None)?;
            }
        } else {
            return Err(CheckpointError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        ck.config_file = Some(config);
        Ok(ck)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.tensors.get(name).map(|t| t.dtype)
    }

    /// All tensor shapes (used to infer a config for `.pth` files).
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.shape.clone()))
            .collect()
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                name: name.to_string(),
                path: self.path.clone(),
            })
    }

    fn file_of(&self, e: &TensorEntry) -> PathBuf {
        self.files
            .get(e.file)
            .cloned()
            .unwrap_or_else(|| self.path.clone())
    }

    /// Checks that `name` exists with exactly `expected` shape.
    pub fn expect_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let e = self.entry(name)?;
        if e.shape != expected {
            return Err(CheckpointError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: e.shape.clone(),
                path: self.file_of(e),
            });
        }
        Ok(())
    }

    /// Whether two tensors hold identical stored bytes (detects tied weights saved twice).
    pub fn same_data(&self, a: &str, b: &str) -> bool {
        match (self.tensors.get(a), self.tensors.get(b)) {
            (Some(x), Some(y)) => {
                x.dtype == y.dtype
                    && x.shape == y.shape
                    && x.strides.is_none()
                    && y.strides.is_none()
                    && {
                        let n = x.shape.iter().product::<usize>() * x.dtype.size_of();
                        let bx = &self.buffers[x.buffer].bytes()[x.offset..x.offset + n];
                        let by = &self.buffers[y.buffer].bytes()[y.offset..y.offset + n];
                        bx == by
                    }
            }
            _ => false,
        }
    }

    /// The tensor as contiguous little-endian f32 bytes (borrowed from the map when possible).
    pub fn f32_bytes(&self, name: &str) -> Result<Cow<'_, [u8]>> {
        let e = self.entry(name)?;
        let numel: usize = e.shape.iter().product();
        let data = &self.buffers[e.buffer].bytes()[e.offset..e.offset + e.available];
        if e.dtype == DType::F32 && e.strides.is_none() && cfg!(target_endian = "little") {
            return Ok(Cow::Borrowed(&data[..numel * 4]));
        }
        let values = self.f32(name)?;
        debug_assert_eq!(values.len(), numel);
        Ok(Cow::Owned(
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ))
    }

    /// The tensor as f32 values, row-major.
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        let data = &self.buffers[e.buffer].bytes()[e.offset..e.offset + e.available];
        let size = e.dtype.size_of();
        let convert: fn(&[u8]) -> f32 = match e.dtype {
            DType::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F16 => |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::BF16 => |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::F64 => {
                |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            dtype => {
                return Err(CheckpointError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype,
                    path: self.file_of(e),
                });
            }
        };
        let numel: usize = e.shape.iter().product();
        match &e.strides {
            None => Ok(data[..numel * size]
                .chunks_exact(size)
                .map(convert)
                .collect()),
            Some(strides) => {
                // Gather a strided (e.g. transposed) torch view into row-major order.
                let mut out = Vec::with_capacity(numel);
                let mut idx = vec![0usize; e.shape.len()];
                for _ in 0..numel {
                    let off: usize =
                        idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>() * size;
                    out.push(convert(&data[off..off + size]));
                    for d in (0..idx.len()).rev() {
                        idx[d] += 1;
                        if idx[d] < e.shape[d] {
                            break;
                        }
                        idx[d] = 0;
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Reads a small JSON side file (config, shard index): a regular file (a FIFO or device would
/// block or never end) of at most 16 MiB.
pub(crate) fn read_json_text(path: &Path) -> Result<String> {
    const MAX: u64 = 16 << 20;
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() || meta.len() > MAX {
        return Err(CheckpointError::BadConfig {
            path: path.to_path_buf(),
            message: if meta.is_file() {
                format!(
                    "{} bytes, over the {MAX}-byte limit for a JSON file",
                    meta.len()
                )
            } else {
                "not a regular file".into()
            },
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

fn shard_files(index: &Path) -> Result<Vec<String>> {
    let text = read_json_text(index)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::BadConfig {
            path: index.to_path_buf(),
            message: e.to_string(),
        })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| CheckpointError::BadConfig {
            path: index.to_path_buf(),
            message: "no weight_map object".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_buffer(
        bytes: Vec<u8>,
        dtype: DType,
        shape: Vec<usize>,
        strides: Option<Vec<usize>>,
    ) -> Checkpoint {
        let mut ck = Checkpoint::empty(CheckpointFormat::OriginalPth, Path::new("mem"));
        let available = bytes.len();
        ck.buffers.push(Buffer::Owned(bytes));
        ck.tensors.insert(
            "t".into(),
            TensorEntry {
                dtype,
                shape,
                strides,
                buffer: 0,
                offset: 0,
                available,
                file: 0,
            },
        );
        ck
    }

    #[test]
    fn converts_half_precision_and_gathers_strided_views() {
        let vals = [1.5f32, -2.0, 0.25, 3.0, 65504.0, -0.125];
        let f16: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(
            with_buffer(f16, DType::F16, vec![2, 3], None)
                .f32("t")
                .unwrap(),
            vals
        );
        let bf16: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let got = with_buffer(bf16, DType::BF16, vec![6], None)
            .f32("t")
            .unwrap();
        assert_eq!(got[..4], [1.5, -2.0, 0.25, 3.0]);
        // A transposed [3, 2] view of row-major [2, 3] storage (torch stride (1, 3)).
        let f32s: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ck = with_buffer(f32s, DType::F32, vec![3, 2], Some(vec![1, 3]));
        assert_eq!(
            ck.f32("t").unwrap(),
            [1.5, 3.0, -2.0, 65504.0, 0.25, -0.125]
        );
        assert_eq!(ck.f32_bytes("t").unwrap().len(), 24);
    }

    #[test]
    fn integer_tensors_are_refused_as_weights() {
        let ck = with_buffer(vec![0; 16], DType::I64, vec![2], None);
        let err = ck.f32("t").unwrap_err();
        assert!(
            err.to_string().contains("cannot be converted to float32"),
            "{err}"
        );
    }

    #[test]
    fn infers_blip_base_sizes_from_shapes() {
        let mut s = BTreeMap::new();
        s.insert(
            "vision_model.embeddings.patch_embedding.weight".to_string(),
            vec![768, 3, 16, 16],
        );
        s.insert(
            "vision_model.embeddings.position_embedding".to_string(),
            vec![1, 577, 768],
        );
        for i in 0..12 {
            s.insert(
                format!("vision_model.encoder.layers.{i}.mlp.fc1.weight"),
                vec![3072, 768],
            );
            s.insert(
                format!("text_decoder.bert.encoder.layer.{i}.intermediate.dense.weight"),
                vec![3072, 768],
            );
        }
        s.insert(
            "text_decoder.bert.embeddings.word_embeddings.weight".to_string(),
            vec![30524, 768],
        );
        s.insert(
            "text_decoder.bert.embeddings.position_embeddings.weight".to_string(),
            vec![512, 768],
        );
        let cfg = infer_config_from_shapes(&s, Head::Caption).unwrap();
        assert_eq!(
            (
                cfg.vision.image_size,
                cfg.vision.num_hidden_layers,
                cfg.vision.num_attention_heads
            ),
            (384, 12, 12)
        );
        assert_eq!(
            (
                cfg.text.num_hidden_layers,
                cfg.text.num_attention_heads,
                cfg.text.vocab_size
            ),
            (12, 12, 30524)
        );
        assert_eq!(cfg.vision.layer_norm_eps, 1e-6);
    }
}
