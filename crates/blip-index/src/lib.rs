//! The image index that `blip-onnx index` writes and `search` / `blip-onnx serve` read.
//!
//! Format 3 ([`Store`]) is what is written now: a SQLite database of entries with an ANN graph
//! over their ITC vectors (see `store.rs`). Formats 1 and 2, below, are read to be migrated
//! ([`migrate`]) and to keep [`Index`] — the whole index in memory — for small tools and tests.
//!
//! Format 2: one file holds a JSON header (package fingerprint, embedding width, per image: id, path, size and
//! modification time, optional metadata) followed by the f32 ITC embeddings. Next to it, the folder
//! `<index>.d/` holds what ITM rerank needs — each image's vision hidden states as f16
//! (`states/<name>.f16`) — so a reranked search never runs the vision encoder on its candidates,
//! and images added through the server (`images/<sha256>.<ext>`). Every file is written to a
//! temporary name and renamed into place, the index file last, so an interrupted write never leaves a
//! broken index.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use blip_package::Package;
use blip_tasks::{Blip, CandidateStates, Graphs, Hit, ImageInput, TaskError};
use ndarray::{Array3, ArrayView3};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod store;
pub use store::{
    AnnStorage, EXACT_BELOW, Near, NewEntry, RerankStates, Store, StoreOptions, Stored, Upload,
    decode_states, encode_states, is_store,
};

/// Format 2: entries with ids, metadata and f16 rerank states.
const MAGIC: &[u8; 8] = b"BLIPIDX2";
/// Format 1 (read only): paths and embeddings.
const MAGIC_V1: &[u8; 8] = b"BLIPIDX1";

/// Image file extensions an index takes.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "gif", "bmp"];

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a blip-onnx index")]
    NotAnIndex { path: PathBuf },
    #[error("{path}: {what} truncated")]
    Truncated { path: PathBuf, what: &'static str },
    #[error("{path}: bad index header: {message}")]
    Header { path: PathBuf, message: String },
    #[error(
        "{path} holds {index}-wide embeddings but package {package} makes {expected}-wide ones; re-run `blip-onnx index` with this package"
    )]
    WidthMismatch {
        path: PathBuf,
        package: PathBuf,
        index: usize,
        expected: usize,
    },
    #[error("{path} was built with another package than {package}; re-run `blip-onnx index`")]
    OtherPackage { path: PathBuf, package: PathBuf },
    #[error(
        "package {package} (head {head}) has no image embeddings; indexing needs a retrieval package"
    )]
    NoImageEmbeddings {
        package: PathBuf,
        head: blip_package::Head,
    },
    #[error("embedding of {id} has {got} values, the index holds {expected}-wide ones")]
    EmbeddingWidth {
        id: String,
        got: usize,
        expected: usize,
    },
    #[error("states of {id} have {got} values, the index holds {tokens}x{width}")]
    StateShape {
        id: String,
        got: usize,
        tokens: usize,
        width: usize,
    },
    #[error("the index already holds an image with id {0:?}")]
    DuplicateId(String),
    #[error("image id {0:?} is empty or longer than 256 bytes")]
    BadId(String),
    #[error("{id} has no stored rerank states")]
    NoStates { id: String },
    #[error("{path}: entry {id:?}: {problem}")]
    BadEntry {
        path: PathBuf,
        id: String,
        problem: String,
    },
    #[error("{path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("{path} already exists")]
    Exists { path: PathBuf },
    #[error("{path} is opened read-only")]
    ReadOnly { path: PathBuf },
    #[error(
        "{path} is a format-2 index (one file rewritten per change); open it once with `blip-onnx serve --index` or re-run `blip-onnx index` to migrate it to format 3 (the old file is kept as <index>.format2)"
    )]
    OldFormat { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// Which sidecar files a written index still refers to.
type Keep<'a> = dyn Fn(&Path) -> bool + 'a;

fn io<'a>(action: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> IndexError + 'a {
    move |source| IndexError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What identifies an unchanged file: size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: u128,
}

impl Stamp {
    pub fn of(path: &Path) -> Result<Stamp> {
        let m = std::fs::metadata(path).map_err(io("reading", path))?;
        let mtime_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Stamp {
            size: m.len(),
            mtime_ns,
        })
    }
}

/// Shape of one image's stored vision hidden states (`tokens × width`, f16 on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateShape {
    pub tokens: usize,
    pub width: usize,
}

impl StateShape {
    /// `tokens × width`; [`Index::read`] refuses a shape whose product overflows.
    pub fn values(&self) -> usize {
        self.tokens.saturating_mul(self.width)
    }
}

/// One indexed image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub path: PathBuf,
    pub stamp: Stamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// File name of its rerank states under `<index>.d/states/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    package: String,
    dim: usize,
    #[serde(default)]
    states: Option<StateShape>,
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct HeaderV1 {
    package: String,
    dim: usize,
    entries: Vec<(PathBuf, Stamp)>,
}

/// An index in memory: entries and their embeddings (row `i` belongs to entry `i`).
#[derive(Debug, Clone)]
pub struct Index {
    /// Which package (source checkpoint + vision graph) produced the embeddings.
    pub package: String,
    pub dim: usize,
    pub states: Option<StateShape>,
    entries: Vec<Entry>,
    embeddings: Vec<f32>,
    /// Read from a format-3 database: states are read from it, by id.
    from_store: bool,
}

/// What [`scan_images`] found under a folder.
#[derive(Debug, Default)]
pub struct Scan {
    /// Regular image files, sorted.
    pub images: Vec<PathBuf>,
    /// Entries left out, with the reason (FIFOs, sockets, devices, unreadable folders, loops).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Lists the image files under `dir` (recursively). Only regular files are taken: opening a FIFO
/// would block for ever, so FIFOs, sockets and devices are skipped with a reason, as are symlinked
/// folders (which can loop).
pub fn scan_images(dir: &Path) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut stack = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(d) = stack.pop() {
        let listing = match std::fs::read_dir(&d) {
            Ok(l) => l,
            Err(e) if first => return Err(io("reading", &d)(e)),
            Err(e) => {
                scan.skipped.push((d, format!("cannot read folder: {e}")));
                continue;
            }
        };
        first = false;
        for e in listing {
            let e = e.map_err(io("reading", &d))?;
            let p = e.path();
            let ty = match e.file_type() {
                Ok(t) => t,
                Err(err) => {
                    scan.skipped.push((p, err.to_string()));
                    continue;
                }
            };
            let (is_dir, is_file) = if ty.is_symlink() {
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_dir() => {
                        scan.skipped
                            .push((p, "symlinked folder, not followed".into()));
                        continue;
                    }
                    Ok(m) => (false, m.is_file()),
                    Err(err) => {
                        scan.skipped.push((p, format!("broken symlink: {err}")));
                        continue;
                    }
                }
            } else {
                (ty.is_dir(), ty.is_file())
            };
            if is_dir {
                stack.push(p);
                continue;
            }
            let image_name = p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()));
            if !image_name {
                continue;
            }
            if is_file {
                scan.images.push(p);
            } else {
                scan.skipped.push((
                    p,
                    "not a regular file (FIFO, socket or device); skipped".into(),
                ));
            }
        }
    }
    scan.images.sort();
    Ok(scan)
}

/// Width of the package's ITC image embeddings, or an error when it makes none (only retrieval
/// packages do): checked before anything is written.
pub fn image_embedding_width(pkg: &Package) -> Result<usize> {
    let none = || IndexError::NoImageEmbeddings {
        package: pkg.dir.clone(),
        head: pkg.manifest.head,
    };
    let vision = pkg
        .manifest
        .graphs
        .get(blip_package::VISION_ENCODER)
        .ok_or_else(none)?;
    let spec = vision
        .outputs
        .iter()
        .find(|o| o.name == blip_package::io::IMAGE_EMBEDS)
        .ok_or_else(none)?;
    pkg.manifest
        .model
        .embed_dim
        .or_else(|| {
            spec.dims
                .last()
                .and_then(|d| d.as_u64())
                .map(|d| d as usize)
        })
        .ok_or_else(none)
}

/// SHA-256 of an image file's bytes: images with equal digests are embedded once.
pub fn content_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Writes `bytes` to `path` through a temporary file in the same folder (fsync, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // Unique per call: two writers of one content-addressed file must not share a temporary.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = partial_path(path).with_extension(format!("{}-{n}.partial", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("writing", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is a state file name this format makes (32 hex digits, `.f16`): an entry can
/// name no other file, so a crafted index cannot point outside its `states/` folder.
fn is_state_name(name: &str) -> bool {
    name.strip_suffix(".f16").is_some_and(|stem| {
        stem.len() == 32
            && stem
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn partial_path(path: &Path) -> PathBuf {
    path.with_file_name(format!(
        ".{}.partial",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ))
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

impl Index {
    pub fn new(package: String, dim: usize, states: Option<StateShape>) -> Index {
        Index {
            package,
            dim,
            states,
            entries: Vec::new(),
            embeddings: Vec::new(),
            from_store: false,
        }
    }

    /// What identifies the package that made an index: its source checkpoint and vision graph.
    pub fn fingerprint(pkg: &Package) -> String {
        let vision = pkg
            .manifest
            .graphs
            .get(blip_package::VISION_ENCODER)
            .map(|g| g.sha256.as_str())
            .unwrap_or("");
        format!("{}:{}", pkg.manifest.source.sha256, vision)
    }

    /// The folder next to an index file that holds its states and uploaded images.
    pub fn sidecar(index_path: &Path) -> PathBuf {
        let mut name = index_path.as_os_str().to_owned();
        name.push(".d");
        PathBuf::from(name)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All embeddings, row-major `len × dim`.
    pub fn embeddings(&self) -> &[f32] {
        &self.embeddings
    }

    pub fn embedding(&self, i: usize) -> &[f32] {
        &self.embeddings[i * self.dim..(i + 1) * self.dim]
    }

    pub fn position(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id)
    }

    /// The entry and embedding of an unchanged file (same path, size and modification time).
    pub fn find_unchanged(&self, path: &Path, stamp: &Stamp) -> Option<(Entry, Vec<f32>)> {
        let i = self
            .entries
            .iter()
            .position(|e| e.path == path && &e.stamp == stamp)?;
        Some((self.entries[i].clone(), self.embedding(i).to_vec()))
    }

    /// Adds an entry with its embedding (of width `dim`); ids are unique.
    pub fn push(&mut self, entry: Entry, embedding: &[f32]) -> Result<()> {
        if embedding.len() != self.dim {
            return Err(IndexError::EmbeddingWidth {
                id: entry.id,
                got: embedding.len(),
                expected: self.dim,
            });
        }
        if entry.id.is_empty() || entry.id.len() > 256 {
            return Err(IndexError::BadId(entry.id));
        }
        if self.position(&entry.id).is_some() {
            return Err(IndexError::DuplicateId(entry.id));
        }
        self.entries.push(entry);
        self.embeddings.extend_from_slice(embedding);
        Ok(())
    }

    /// Removes the entry `id`; its files are swept by the next [`Index::write`].
    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let i = self.position(id)?;
        self.embeddings.drain(i * self.dim..(i + 1) * self.dim);
        Some(self.entries.remove(i))
    }

    /// Refuses an index made by another package or whose embeddings have another width (the
    /// similarity product would not be defined).
    pub fn check_package(&self, index_path: &Path, pkg: &Package) -> Result<()> {
        let expected = image_embedding_width(pkg)?;
        if self.dim != expected && !self.is_empty() {
            return Err(IndexError::WidthMismatch {
                path: index_path.to_path_buf(),
                package: pkg.dir.clone(),
                index: self.dim,
                expected,
            });
        }
        if self.package != Self::fingerprint(pkg) {
            return Err(IndexError::OtherPackage {
                path: index_path.to_path_buf(),
                package: pkg.dir.clone(),
            });
        }
        Ok(())
    }

    /// Name of the state file of an image id (stable, so unchanged images keep theirs).
    pub fn state_name(id: &str) -> String {
        let digest = Sha256::digest(id.as_bytes());
        format!("{}.f16", &hex::encode(digest)[..32])
    }

    /// Stores the rerank states (`tokens × width` floats, kept as f16) of image `id` next to the
    /// index; returns the file name to put in its entry.
    pub fn write_state(&self, index_path: &Path, id: &str, hidden: &[f32]) -> Result<String> {
        self.write_state_named(index_path, id, &Self::state_name(id), hidden)
    }

    fn write_state_named(
        &self,
        index_path: &Path,
        id: &str,
        name: &str,
        hidden: &[f32],
    ) -> Result<String> {
        let shape = self
            .states
            .ok_or_else(|| IndexError::NoStates { id: id.into() })?;
        if hidden.len() != shape.values() {
            return Err(IndexError::StateShape {
                id: id.into(),
                got: hidden.len(),
                tokens: shape.tokens,
                width: shape.width,
            });
        }
        let dir = Self::sidecar(index_path).join("states");
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        write_atomic(&dir.join(name), &f16_bytes(hidden))?;
        Ok(name.to_string())
    }

    /// As [`Index::write_state`], under a file name no earlier write used: an image removed and
    /// added again gets a new file, so a reader of the index from before the removal never reads
    /// the new image's states as the old one's.
    pub fn write_fresh_state(&self, index_path: &Path, id: &str, hidden: &[f32]) -> Result<String> {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nonce = format!(
            "{id}\0{}\0{}\0{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.write_state_named(index_path, id, &Self::state_name(&nonce), hidden)
    }

    /// Stores, for image `id`, a copy of the states already written under `from` (the file
    /// name [`Index::write_state`] returned for an image with the same content); returns the
    /// file name to put in its entry. Each entry keeps a file of its own, so removing one
    /// never touches another's.
    pub fn copy_state(&self, index_path: &Path, from: &str, id: &str) -> Result<String> {
        let dir = Self::sidecar(index_path).join("states");
        let source = dir.join(from);
        let bytes = std::fs::read(&source).map_err(io("reading", &source))?;
        let name = Self::state_name(id);
        write_atomic(&dir.join(&name), &bytes)?;
        Ok(name)
    }

    /// Rerank states of the entries at `rows`, as f32 `rows.len() × tokens × width`.
    pub fn read_states(&self, index_path: &Path, rows: &[usize]) -> Result<Vec<f32>> {
        if self.from_store {
            let ids: Vec<&str> = rows.iter().map(|&r| self.entries[r].id.as_str()).collect();
            return Store::open_entries(index_path)?.read_states(&ids);
        }
        let dir = Self::sidecar(index_path).join("states");
        let mut out = Vec::new();
        for &r in rows {
            let e = &self.entries[r];
            let (Some(shape), Some(name)) = (self.states, e.state.as_ref()) else {
                return Err(IndexError::NoStates { id: e.id.clone() });
            };
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
            if bytes.len() != shape.values() * 2 {
                return Err(IndexError::Truncated {
                    path,
                    what: "rerank states",
                });
            }
            out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            );
        }
        Ok(out)
    }

    /// Whether every entry has stored rerank states.
    pub fn has_states(&self) -> bool {
        self.states.is_some() && self.entries.iter().all(|e| e.state.is_some())
    }

    /// Stores an uploaded image's bytes next to the index (content-addressed); returns its path.
    pub fn store_image(index_path: &Path, bytes: &[u8], extension: &str) -> Result<PathBuf> {
        let dir = Self::sidecar(index_path).join("images");
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let path = dir.join(format!(
            "{}.{extension}",
            hex::encode(Sha256::digest(bytes))
        ));
        if !path.is_file() {
            write_atomic(&path, bytes)?;
        }
        Ok(path)
    }

    /// The whole index in memory: format 1 and 2 files as they are, a format-3 database
    /// materialised (each entry with its first vector).
    pub fn read(path: &Path) -> Result<Index> {
        if is_store(path) {
            let store = Store::open_entries(path)?;
            let mut idx = Index::new(store.package.clone(), store.dim, store.states);
            idx.from_store = true;
            store.for_each(|s| {
                idx.entries.push(s.entry);
                idx.embeddings.extend_from_slice(&s.vectors[..store.dim]);
                Ok(())
            })?;
            return Ok(idx);
        }
        let mut f = std::fs::File::open(path).map_err(io("reading index", path))?;
        let meta = f.metadata().map_err(io("reading index", path))?;
        if !meta.is_file() {
            return Err(IndexError::NotAnIndex { path: path.into() });
        }
        let mut head = [0u8; 16];
        f.read_exact(&mut head)
            .map_err(|_| IndexError::NotAnIndex { path: path.into() })?;
        let v1 = &head[..8] == MAGIC_V1;
        if &head[..8] != MAGIC && !v1 {
            return Err(IndexError::NotAnIndex { path: path.into() });
        }
        let hlen = u64::from_le_bytes([
            head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15],
        ]);
        if hlen > meta.len().saturating_sub(16) {
            return Err(IndexError::Truncated {
                path: path.into(),
                what: "header",
            });
        }
        let mut header = vec![0u8; hlen as usize];
        f.read_exact(&mut header)
            .map_err(|_| IndexError::Truncated {
                path: path.into(),
                what: "header",
            })?;
        let bad = |e: serde_json::Error| IndexError::Header {
            path: path.into(),
            message: e.to_string(),
        };
        let header: Header = if v1 {
            let h: HeaderV1 = serde_json::from_slice(&header).map_err(bad)?;
            Header {
                package: h.package,
                dim: h.dim,
                states: None,
                entries: h
                    .entries
                    .into_iter()
                    .map(|(p, stamp)| Entry {
                        id: p.display().to_string(),
                        path: p,
                        stamp,
                        metadata: None,
                        state: None,
                    })
                    .collect(),
            }
        } else {
            serde_json::from_slice(&header).map_err(bad)?
        };
        let want = (header.entries.len() as u64)
            .checked_mul(header.dim as u64)
            .and_then(|n| n.checked_mul(4));
        let data_len = meta.len() - 16 - hlen;
        if want != Some(data_len) {
            return Err(IndexError::Truncated {
                path: path.into(),
                what: "embedding data",
            });
        }
        f.seek(std::io::SeekFrom::Start(16 + hlen))
            .map_err(io("reading index", path))?;
        let mut data = Vec::with_capacity(data_len as usize);
        f.read_to_end(&mut data)
            .map_err(io("reading index", path))?;
        let embeddings: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let index = Index {
            package: header.package,
            dim: header.dim,
            states: header.states,
            entries: header.entries,
            embeddings,
            from_store: false,
        };
        index.check_entries(path)?;
        Ok(index)
    }

    /// What a file from outside must satisfy before anything ranks with it or follows its names:
    /// the rules [`Index::push`] keeps for ids, finite embeddings (a NaN would make every score
    /// NaN), and state file names that are the ones [`Index::write_state`] gives (a name is joined
    /// to the sidecar folder, so `../x` would read outside it).
    fn check_entries(&self, path: &Path) -> Result<()> {
        let bad = |id: &str, problem: String| IndexError::BadEntry {
            path: path.into(),
            id: id.into(),
            problem,
        };
        if let Some(s) = self.states
            && s.tokens.checked_mul(s.width).is_none_or(|n| n == 0)
        {
            return Err(IndexError::Header {
                path: path.into(),
                message: format!("rerank state shape {}x{} is not usable", s.tokens, s.width),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.id.is_empty() || e.id.len() > 256 {
                return Err(bad(
                    &e.id,
                    "the id is empty or longer than 256 bytes".into(),
                ));
            }
            if !seen.insert(e.id.as_str()) {
                return Err(bad(&e.id, "the id appears twice".into()));
            }
            if !self.embedding(i).iter().all(|v| v.is_finite()) {
                return Err(bad(&e.id, "the embedding holds a non-finite value".into()));
            }
            if let Some(name) = &e.state {
                if self.states.is_none() {
                    return Err(bad(
                        &e.id,
                        "it names a state file but the index has no state shape".into(),
                    ));
                }
                if !is_state_name(name) {
                    return Err(bad(
                        &e.id,
                        format!("state file {name:?} is not a name this index format makes"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the index atomically, then removes state and image files no entry refers to.
    pub fn write(&self, path: &Path) -> Result<()> {
        self.write_keeping_files(path)?;
        self.sweep(path);
        Ok(())
    }

    /// Writes the index atomically and leaves the sidecar's files alone: a reader of an earlier
    /// version (a search in flight on the server) may still need the files that version names.
    /// [`Index::sweep`] removes them once no such reader is left.
    pub fn write_keeping_files(&self, path: &Path) -> Result<()> {
        let header = Header {
            package: self.package.clone(),
            dim: self.dim,
            states: self.states,
            entries: self.entries.clone(),
        };
        let h = serde_json::to_vec(&header).map_err(|e| IndexError::Header {
            path: path.into(),
            message: e.to_string(),
        })?;
        let mut bytes = Vec::with_capacity(16 + h.len() + self.embeddings.len() * 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&h);
        for v in &self.embeddings {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        write_atomic(path, &bytes)?;
        // The rename is durable only once the folder is synced.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Best effort: files under the sidecar that no entry names (left by removed or re-indexed
    /// images, or by a run that was killed) are deleted.
    pub fn sweep(&self, path: &Path) {
        self.sweep_keeping(path, &[]);
    }

    /// As [`Index::sweep`], keeping too the files that the entries of `also` name (earlier
    /// versions of this index that readers still hold).
    pub fn sweep_keeping(&self, path: &Path, also: &[&Index]) {
        let side = Self::sidecar(path);
        let versions = || std::iter::once(self).chain(also.iter().copied());
        let states: std::collections::HashSet<&str> = versions()
            .flat_map(|v| v.entries.iter().filter_map(|e| e.state.as_deref()))
            .collect();
        let images: std::collections::HashSet<&Path> = versions()
            .flat_map(|v| v.entries.iter().map(|e| e.path.as_path()))
            .collect();
        let keep_state = |p: &Path| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| states.contains(n))
        };
        let keep_image = |p: &Path| images.contains(p);
        let subs: [(&str, &Keep); 2] = [("states", &keep_state), ("images", &keep_image)];
        for (sub, keep) in subs {
            let Ok(listing) = std::fs::read_dir(side.join(sub)) else {
                continue;
            };
            for e in listing.flatten() {
                let p = e.path();
                if !keep(&p) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
}

/// Converts a format-1/2 index at `path` to format 3 in place: the entries, embeddings and f16
/// states go into a new database (built beside it, then renamed over it); the old file stays as
/// `<index>.format2`, its state files in the sidecar with it. An index with no states for some
/// entry is migrated with `--rerank-states none` (rerank encodes the candidates' images, as
/// before).
pub fn migrate(path: &Path) -> Result<()> {
    let old = Index::read(path)?;
    let rerank = if old.has_states() {
        RerankStates::F16
    } else {
        RerankStates::None
    };
    let store = Store::create_staged(
        path,
        "migrating",
        &StoreOptions {
            package: old.package.clone(),
            dim: old.dim,
            states: old.states,
            rerank,
            ann: AnnStorage::default(),
        },
    )?;
    for chunk in (0..old.len()).collect::<Vec<_>>().chunks(1024) {
        let mut batch = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let e = &old.entries[i];
            batch.push(NewEntry {
                id: e.id.clone(),
                path: e.path.clone(),
                stamp: e.stamp.clone(),
                metadata: e.metadata.clone(),
                vectors: old.embedding(i).to_vec(),
                states: match rerank {
                    RerankStates::None => None,
                    _ => Some(old.read_states(path, &[i])?),
                },
            });
        }
        for outcome in store.add(batch)? {
            outcome?;
        }
    }
    let mut backup = path.as_os_str().to_owned();
    backup.push(".format2");
    let backup = PathBuf::from(backup);
    let _ = std::fs::remove_file(&backup);
    std::fs::hard_link(path, &backup)
        .or_else(|_| std::fs::copy(path, &backup).map(|_| ()))
        .map_err(io("writing", &backup))?;
    store.install_keeping_states(path)
}

/// Hits over a [`Store`]: `hits[i].index` is an index into `entries`.
#[derive(Debug, Clone, Default)]
pub struct Ranked {
    pub entries: Vec<Entry>,
    pub hits: Vec<Hit>,
}

/// Ranks a format-3 index's entries for a text with the library's rule: the text's ITC
/// embedding finds `max(k, rerank)` candidates (ANN graph, or exact below its threshold; an
/// entry with several vectors scores its best), then [`Blip::rank_images`] ranks those —
/// ITM rerank of the first `rerank` with states stored in the index, or, for an index made with
/// `--rerank-states none`, by encoding the candidates' image files.
pub async fn rank_store<G: Graphs>(
    blip: &mut Blip<G>,
    store: &Store,
    query: &str,
    k: usize,
    rerank: usize,
) -> std::result::Result<Ranked, TaskError> {
    let input = |e: IndexError| TaskError::Input(e.to_string());
    let width = image_embedding_width(&blip.package).map_err(input)?;
    if store.dim != width {
        return Err(input(IndexError::WidthMismatch {
            path: store.path().to_path_buf(),
            package: blip.package.dir.clone(),
            index: store.dim,
            expected: width,
        }));
    }
    let t = blip.embed_texts(&[query]).await?;
    let q: Vec<f32> = t.row(0).to_vec();
    let dims = &blip.package.manifest.model;
    let stored_shape = store
        .states
        .filter(|s| s.tokens == dims.image_tokens && s.width == dims.vision_hidden_size)
        .filter(|_| store.rerank != RerankStates::None);
    let near = store
        .nearest(
            &q,
            k.max(rerank).max(1),
            if stored_shape.is_some() { rerank } else { 0 },
        )
        .map_err(input)?;
    if near.is_empty() {
        return Ok(Ranked::default());
    }
    let dim = store.dim;
    let mut flat = Vec::with_capacity(near.len() * dim);
    for n in &near {
        flat.extend_from_slice(&n.stored.vectors[n.best * dim..(n.best + 1) * dim]);
    }
    // Each candidate's vector that scored best for this text: its ITC similarity, whatever
    // the number of vectors it holds.
    let embeds = ArrayView3::from_shape((near.len(), 1, dim), &flat)
        .map_err(|e| TaskError::Input(e.to_string()))?;
    let with_states = stored_shape.filter(|_| near.iter().take(rerank).all(|n| n.states.is_some()));
    let hits = match with_states {
        Some(shape) => {
            let mut states_of = |cand: &[usize]| {
                let mut v = Vec::with_capacity(cand.len() * shape.values());
                for &c in cand {
                    let s = near.get(c).and_then(|n| n.states.as_ref()).ok_or_else(|| {
                        TaskError::Input(format!("candidate {c} has no stored states"))
                    })?;
                    v.extend_from_slice(s);
                }
                Array3::from_shape_vec((cand.len(), shape.tokens, shape.width), v)
                    .map_err(|e| TaskError::Input(e.to_string()))
            };
            blip.rank_images(
                query,
                embeds,
                rerank,
                CandidateStates::Stored(&mut states_of),
            )
            .await?
        }
        None => {
            let images: Vec<ImageInput> = near
                .iter()
                .map(|n| ImageInput::Path(n.stored.entry.path.clone()))
                .collect();
            blip.rank_images(query, embeds, rerank, CandidateStates::Encode(&images))
                .await?
        }
    };
    Ok(Ranked {
        entries: near.into_iter().map(|n| n.stored.entry).collect(),
        hits,
    })
}

/// Ranks an index's images for a text with the library's rule ([`Blip::rank_images`]: ITC top-k,
/// ITM rerank of `rerank` candidates), over any engine. The candidates' vision states come from
/// the index when it stores them (no vision run); an index without them (format 1) re-encodes
/// the candidates' files. `blip-onnx search` and the server's /v1/search both call this.
pub async fn rank<G: Graphs>(
    blip: &mut Blip<G>,
    idx: &Index,
    index_path: &Path,
    query: &str,
    rerank: usize,
) -> std::result::Result<Vec<Hit>, TaskError> {
    let input = |e: IndexError| TaskError::Input(e.to_string());
    let width = image_embedding_width(&blip.package).map_err(input)?;
    if idx.dim != width && !idx.is_empty() {
        return Err(input(IndexError::WidthMismatch {
            path: index_path.to_path_buf(),
            package: blip.package.dir.clone(),
            index: idx.dim,
            expected: width,
        }));
    }
    // A format-1/2 index holds one vector per image.
    let embeds = ArrayView3::from_shape((idx.len(), 1, idx.dim), idx.embeddings())
        .map_err(|e| TaskError::Input(format!("{}: {e}", index_path.display())))?;
    let dims = &blip.package.manifest.model;
    let stored = idx
        .has_states()
        .then_some(idx.states)
        .flatten()
        .filter(|s| s.tokens == dims.image_tokens && s.width == dims.vision_hidden_size);
    match stored {
        Some(shape) => {
            let mut states_of = |cand: &[usize]| {
                let flat = idx
                    .read_states(index_path, cand)
                    .map_err(|e| TaskError::Input(e.to_string()))?;
                Array3::from_shape_vec((cand.len(), shape.tokens, shape.width), flat)
                    .map_err(|e| TaskError::Input(e.to_string()))
            };
            blip.rank_images(
                query,
                embeds,
                rerank,
                CandidateStates::Stored(&mut states_of),
            )
            .await
        }
        None => {
            let images: Vec<ImageInput> = idx
                .entries()
                .iter()
                .map(|e| ImageInput::Path(e.path.clone()))
                .collect();
            blip.rank_images(query, embeds, rerank, CandidateStates::Encode(&images))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            id: id.into(),
            path: PathBuf::from(format!("/x/{id}.png")),
            stamp: Stamp {
                size: 1,
                mtime_ns: 2,
            },
            metadata: Some(serde_json::json!({"k": id})),
            state: None,
        }
    }

    #[test]
    fn round_trips_entries_embeddings_and_f16_states() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idx.bin");
        let mut idx = Index::new(
            "pkg".into(),
            2,
            Some(StateShape {
                tokens: 2,
                width: 2,
            }),
        );
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let mut e = entry(id);
            let hidden = [i as f32, 0.5, -1.25, 1000.0];
            e.state = Some(idx.write_state(&path, id, &hidden).unwrap());
            idx.push(e, &[i as f32, 1.0 + i as f32]).unwrap();
        }
        assert!(matches!(
            idx.push(entry("a"), &[0.0, 0.0]),
            Err(IndexError::DuplicateId(_))
        ));
        assert!(matches!(
            idx.push(entry("d"), &[0.0]),
            Err(IndexError::EmbeddingWidth { got: 1, .. })
        ));
        idx.remove("b").unwrap();
        idx.write(&path).unwrap();
        let back = Index::read(&path).unwrap();
        assert_eq!(back.entries(), idx.entries());
        assert_eq!(back.embeddings(), &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(
            back.read_states(&path, &[1]).unwrap(),
            vec![2.0, 0.5, -1.25, 1000.0]
        );
        // b's state file was swept, a's and c's stay.
        let states = std::fs::read_dir(Index::sidecar(&path).join("states"))
            .unwrap()
            .count();
        assert_eq!(states, 2);
        assert!(!dir.path().join(".idx.bin.partial").exists());

        // A version a reader still holds keeps its files through a sweep; the rest go.
        let held = idx.clone();
        let mut next = idx.clone();
        next.remove("a").unwrap();
        next.write_keeping_files(&path).unwrap();
        next.sweep_keeping(&path, &[&held]);
        let count = || {
            std::fs::read_dir(Index::sidecar(&path).join("states"))
                .unwrap()
                .count()
        };
        assert_eq!(count(), 2, "a's file went while a reader held it");
        assert!(held.read_states(&path, &[0]).is_ok());
        next.sweep_keeping(&path, &[]);
        assert_eq!(count(), 1, "a's file stayed once no reader held it");
    }

    /// An index file whose header is `header` (JSON) followed by `embeddings`.
    fn write_raw(path: &Path, header: serde_json::Value, embeddings: &[f32]) {
        let h = serde_json::to_vec(&header).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&h);
        for v in embeddings {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn hostile_entries_are_refused_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idx.bin");
        let e = |id: &str, state: Option<&str>| {
            serde_json::json!({"id": id, "path": "/x.png", "stamp": {"size": 1, "mtime_ns": 2},
                               "state": state})
        };
        let shape = serde_json::json!({"tokens": 1, "width": 2});
        let cases: [(serde_json::Value, &[f32], &str); 6] = [
            // A state name is joined to the sidecar folder: it must not lead out of it.
            (
                serde_json::json!({"package": "p", "dim": 1, "states": shape,
                                   "entries": [e("a", Some("../../../etc/hostname"))]}),
                &[1.0],
                "entry \"a\": state file \"../../../etc/hostname\"",
            ),
            (
                serde_json::json!({"package": "p", "dim": 1, "states": null,
                                   "entries": [e("a", Some(&Index::state_name("a")))]}),
                &[1.0],
                "no state shape",
            ),
            (
                serde_json::json!({"package": "p", "dim": 1,
                                   "entries": [e("a", None), e("a", None)]}),
                &[1.0, 2.0],
                "entry \"a\": the id appears twice",
            ),
            (
                serde_json::json!({"package": "p", "dim": 2, "entries": [e("b", None)]}),
                &[1.0, f32::NAN],
                "entry \"b\": the embedding holds a non-finite value",
            ),
            (
                serde_json::json!({"package": "p", "dim": 1, "entries": [e("", None)]}),
                &[1.0],
                "the id is empty",
            ),
            (
                serde_json::json!({"package": "p", "dim": 1,
                                   "states": {"tokens": usize::MAX, "width": 2},
                                   "entries": [e("a", None)]}),
                &[1.0],
                "rerank state shape",
            ),
        ];
        for (header, embeddings, want) in cases {
            write_raw(&path, header, embeddings);
            let err = Index::read(&path).unwrap_err().to_string();
            assert!(
                err.contains("idx.bin") && err.contains(want),
                "{want}: {err}"
            );
        }
        // The same file with the name the index writes reads.
        write_raw(
            &path,
            serde_json::json!({"package": "p", "dim": 1, "states": shape,
                               "entries": [e("a", Some(&Index::state_name("a")))]}),
            &[1.0],
        );
        assert_eq!(Index::read(&path).unwrap().len(), 1);
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idx.bin");
        let mut idx = Index::new("pkg".into(), 3, None);
        idx.push(entry("a"), &[1.0, 2.0, 3.0]).unwrap();
        idx.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let e = Index::read(&path).unwrap_err().to_string();
        assert!(
            e.contains("idx.bin") && e.contains("embedding data truncated"),
            "{e}"
        );
        std::fs::write(&path, b"hello world, not an index").unwrap();
        assert!(matches!(
            Index::read(&path),
            Err(IndexError::NotAnIndex { .. })
        ));
        let mut huge = b"BLIPIDX2".to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(matches!(
            Index::read(&path),
            Err(IndexError::Truncated { what: "header", .. })
        ));
    }

    #[test]
    fn format_1_indexes_still_read_with_paths_as_ids_and_no_states() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.idx");
        let header = serde_json::json!({
            "package": "pkg",
            "dim": 2,
            "entries": [["/img/a.png", {"size": 3, "mtime_ns": 4}]],
        });
        let h = serde_json::to_vec(&header).unwrap();
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&h);
        for v in [0.5f32, -0.25] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        let idx = Index::read(&path).unwrap();
        assert_eq!(idx.entries()[0].id, "/img/a.png");
        assert_eq!(
            idx.entries()[0].stamp,
            Stamp {
                size: 3,
                mtime_ns: 4
            }
        );
        assert_eq!(idx.embedding(0), &[0.5, -0.25]);
        assert!(!idx.has_states());
    }

    #[cfg(unix)]
    #[test]
    fn scan_skips_a_fifo_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let fifo = dir.path().join("pipe.png");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let scan = scan_images(dir.path()).unwrap();
        assert_eq!(scan.images, vec![dir.path().join("a.png")]);
        assert_eq!(scan.skipped.len(), 1);
        assert_eq!(scan.skipped[0].0, fifo);
        assert!(scan.skipped[0].1.contains("not a regular file"));
    }
}
