//! The blip-onnx model package: a folder with `blip.json` (this manifest), `tokenizer.json` and one
//! ONNX graph per role. Written by the converter, read by the runtime and the checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod contract;
mod integrity;
mod runtime;
mod staging;
mod validation;

pub use contract::{DecoderShape, Family, Graph, Head, Precision, UnknownGraph, UnknownHead, io};
pub use integrity::{FileStamp, VERIFIED_STAMP};
pub use runtime::{Runtime, UnknownRuntime};
pub use staging::{
    OutputLock, STAGING_PREFIX, StagedError, output_paths_in, staging_path, sweep_leftovers,
    write_file_atomic, write_staged,
};

pub const MANIFEST_FILE: &str = "blip.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const FORMAT: &str = "blip-onnx-package";
/// 2: the decoder takes cross K/V once per image, with the rows that share them
/// ([`CROSS_GROUPS`], [`CROSS_SLOTS`]); version 1 took them once per decoder row.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format whose decoder this tool runs (packages without a decoder run from version 1).
pub const OLDEST_DECODER_FORMAT_VERSION: u32 = 2;

/// Graph roles (manifest keys), in the order a package lists them: [`Graph::name`] as constants.
pub const VISION_ENCODER: &str = Graph::VisionEncoder.name();
pub const TEXT_ENCODER: &str = Graph::TextEncoder.name();
pub const ITM: &str = Graph::Itm.name();
pub const VQA_QUESTION_ENCODER: &str = Graph::VqaQuestionEncoder.name();
pub const CROSS_KV: &str = Graph::CrossKv.name();
pub const DECODER: &str = Graph::Decoder.name();

/// The decoder's cross K/V sharing inputs ([`io::CROSS_GROUPS`], [`io::CROSS_SLOTS`]).
pub use contract::io::{CROSS_GROUPS, CROSS_SLOTS};

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: not a blip-onnx package (no {MANIFEST_FILE})")]
    NoManifest { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid manifest: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("{path}: graph {graph} is listed in the manifest but its file {file} is missing")]
    MissingGraphFile {
        path: PathBuf,
        graph: String,
        file: String,
    },
    #[error("{path}: invalid manifest: {field} {message}")]
    InvalidField {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: invalid manifest: {field} = {value:?} is refused: {reason}")]
    PathOutside {
        path: PathBuf,
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "{path}: graph {graph} fails its checksum: sha256 of {files} is {actual}, the manifest says {expected} (the file was changed, truncated or replaced; restore it or convert again)"
    )]
    ChecksumMismatch {
        path: PathBuf,
        graph: String,
        files: String,
        expected: String,
        actual: String,
    },
    #[error("package {path} has no {graph} graph (head {head})")]
    NoSuchGraph {
        path: PathBuf,
        graph: String,
        head: Head,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub producer: Producer,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Family::is_blip")]
    pub family: Family,
    /// caption | retrieval | vqa
    pub head: Head,
    pub model: ModelDims,
    pub preprocess: Preprocess,
    pub tokens: Tokens,
    pub opset: i64,
    pub precision: Precision,
    pub tokenizer: String,
    /// The runtimes the package was made for (convert: every runtime the standard-ops graphs run
    /// on; quantize and optimize narrow it to their target's). Empty in packages written before
    /// the field existed: see [`Runtime::claimed`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<Runtime>,
    pub graphs: BTreeMap<String, GraphEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Producer {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// File or folder name the package was converted from (no absolute paths: packages move).
    pub name: String,
    /// hf-safetensors | hf-pytorch-bin | salesforce-pth
    pub format: String,
    /// sha256 over the weight files, in order (one file: that file's sha256).
    pub sha256: String,
    pub files: Vec<String>,
    /// Set when position embeddings were interpolated from the checkpoint's grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolated_from_image_size: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelDims {
    pub vision_hidden_size: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub patch_size: usize,
    pub image_size: usize,
    /// Image tokens: patches + [CLS].
    pub image_tokens: usize,
    pub text_hidden_size: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_dim: Option<usize>,
    /// BLIP-2: the Q-Former's learned queries; a retrieval image embedding is one vector per query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_tokens: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Preprocess {
    pub image_size: usize,
    /// Pillow-compatible resample filter name.
    pub resample: String,
    pub crop: bool,
    pub rescale: f64,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Preprocess {
    /// BLIP's eval transform: square bicubic resize, no crop, CLIP mean/std.
    pub fn blip(image_size: usize) -> Self {
        Preprocess {
            image_size,
            resample: "bicubic".into(),
            crop: false,
            rescale: 1.0 / 255.0,
            mean: [0.48145466, 0.4578275, 0.40821073],
            std: [0.26862954, 0.26130258, 0.27577711],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tokens {
    pub bos: i64,
    pub enc: i64,
    pub cls: i64,
    pub sep: i64,
    pub eos: i64,
    pub pad: i64,
    /// Text truncation the reference applies to retrieval texts and VQA questions.
    pub max_text_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// Fixed sizes as numbers, symbolic ones as names.
    pub dims: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GraphEntry {
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_file: Option<String>,
    pub sha256: String,
    pub bytes: u64,
    pub precision: Precision,
    /// How `blip-onnx quantize` rewrote the graph (INT8/INT4: method, weight type, block size,
    /// accuracy level, embeddings; FP16: the ops kept FP32); absent for FP32 graphs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// How the graph was rewritten for a runtime after conversion (e.g. `ort-extended`: ONNX
    /// Runtime's fused graph, `com.microsoft` ops); absent for the portable standard-ops graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimization: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Manifest {
    /// Parses and checks a `blip.json` (format and version); `path` names it in errors (a file
    /// or, in the browser, a URL).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, PackageError> {
        let bad = |message: String| PackageError::BadManifest {
            path: path.to_path_buf(),
            message,
        };
        let manifest: Manifest =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(|e| match e.path().to_string().as_str() {
                    "." => bad(e.inner().to_string()),
                    field => bad(format!("{field}: {}", e.inner())),
                })?;
        if manifest.format != FORMAT {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT:?}",
                manifest.format
            )));
        }
        if manifest.format_version > FORMAT_VERSION {
            return Err(bad(format!(
                "format_version {} is newer than this tool understands ({FORMAT_VERSION})",
                manifest.format_version
            )));
        }
        if manifest.format_version < OLDEST_DECODER_FORMAT_VERSION
            && manifest.graphs.contains_key(DECODER)
        {
            return Err(bad(format!(
                "format_version {} is older than this tool runs for a decoder \
                 ({OLDEST_DECODER_FORMAT_VERSION}: beams share their image's cross K/V); convert \
                 the checkpoint again",
                manifest.format_version
            )));
        }
        manifest.validate_values(path)?;
        Ok(manifest)
    }

    /// Writes the manifest as `blip.json` in the package folder `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PackageError> {
        let path = dir.join(MANIFEST_FILE);
        let io = |source| PackageError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| io(e.into()))?;
        write_file_atomic(&path, (text + "\n").as_bytes()).map_err(io)
    }
}

/// An opened package folder.
#[derive(Debug, Clone)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Package {
    /// Opens a package: reads and validates the manifest (values and paths) and verifies every
    /// graph's checksum (see [`Package::verify_checksums`]; a stamp keeps re-opening fast).
    pub fn open(dir: &Path) -> Result<Package, PackageError> {
        let pkg = Package::open_unverified(dir)?;
        pkg.verify_checksums()?;
        Ok(pkg)
    }

    /// Opens a package with its manifest validated but without hashing the graphs (for `check`,
    /// which reports each checksum as an item of its own).
    pub fn open_unverified(dir: &Path) -> Result<Package, PackageError> {
        let path = dir.join(MANIFEST_FILE);
        if !path.is_file() {
            return Err(PackageError::NoManifest {
                path: dir.to_path_buf(),
            });
        }
        // A manifest is a few KB; a huge file is not read into memory to find that out.
        const MAX_MANIFEST_BYTES: u64 = 16 << 20;
        let len = std::fs::metadata(&path)
            .map_err(|source| PackageError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        if len > MAX_MANIFEST_BYTES {
            return Err(PackageError::BadManifest {
                path,
                message: format!("{len} bytes, over the {MAX_MANIFEST_BYTES}-byte limit"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| PackageError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &path)?;
        manifest.validate_paths(dir, &path)?;
        for (name, g) in &manifest.graphs {
            for file in g.files() {
                if !dir.join(file).is_file() {
                    return Err(PackageError::MissingGraphFile {
                        path: dir.to_path_buf(),
                        graph: name.clone(),
                        file: file.to_string(),
                    });
                }
            }
        }
        Ok(Package {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn graph(&self, role: &str) -> Result<&GraphEntry, PackageError> {
        self.manifest
            .graphs
            .get(role)
            .ok_or_else(|| PackageError::NoSuchGraph {
                path: self.dir.clone(),
                graph: role.to_string(),
                head: self.manifest.head,
            })
    }

    pub fn graph_path(&self, role: &str) -> Result<PathBuf, PackageError> {
        Ok(self.dir.join(&self.graph(role)?.file))
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.tokenizer)
    }
}

/// sha256 over files read in order (one file: that file's sha256), streamed so hashing a large
/// checkpoint neither maps nor holds it in memory.
pub fn sha256_files(files: &[PathBuf]) -> Result<String, PackageError> {
    use sha2::Digest;
    use std::io::Read;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let io = |source| PackageError::Io {
            path: f.clone(),
            source,
        };
        let mut file = std::fs::File::open(f).map_err(io)?;
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}
