//! The image index of `blip-onnx index` / `search`: one file holding a JSON header (package fingerprint,
//! paths with size and modification time) followed by the f32 ITC embeddings. Written to a temporary
//! file and renamed, so an interrupted run never leaves a broken index.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use blip_package::Package;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"BLIPIDX1";

/// What identifies an unchanged file: size and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: u128,
}

#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub path: PathBuf,
    pub stamp: Stamp,
    pub embedding: Vec<f32>,
}

impl IndexEntry {
    pub fn stamp(path: &Path) -> Result<Stamp> {
        let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
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

#[derive(Serialize, Deserialize)]
struct Header {
    package: String,
    dim: usize,
    entries: Vec<(PathBuf, Stamp)>,
}

pub struct Index {
    /// Which package (source checkpoint + vision graph) produced the embeddings.
    pub package: String,
    pub entries: Vec<IndexEntry>,
}

impl Index {
    pub fn fingerprint(pkg: &Package) -> String {
        let vision = pkg
            .manifest
            .graphs
            .get(blip_package::VISION_ENCODER)
            .map(|g| g.sha256.as_str())
            .unwrap_or("");
        format!("{}:{}", pkg.manifest.source.sha256, vision)
    }

    pub fn find(&self, path: &Path, stamp: &Stamp) -> Option<IndexEntry> {
        self.entries
            .iter()
            .find(|e| e.path == path && &e.stamp == stamp)
            .cloned()
    }

    pub fn read(path: &Path) -> Result<Index> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading index {}", path.display()))?;
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            bail!("{} is not a blip-onnx index", path.display());
        }
        let hlen = u64::from_le_bytes(bytes[8..16].try_into()?) as usize;
        let header: Header =
            serde_json::from_slice(bytes.get(16..16 + hlen).context("index header truncated")?)
                .with_context(|| format!("{}: bad index header", path.display()))?;
        let data = &bytes[16 + hlen..];
        if data.len() != header.entries.len() * header.dim * 4 {
            bail!("{}: embedding data truncated", path.display());
        }
        let floats: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let entries = header
            .entries
            .into_iter()
            .enumerate()
            .map(|(i, (p, stamp))| IndexEntry {
                path: p,
                stamp,
                embedding: floats[i * header.dim..(i + 1) * header.dim].to_vec(),
            })
            .collect();
        Ok(Index {
            package: header.package,
            entries,
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let dim = self.entries.first().map(|e| e.embedding.len()).unwrap_or(0);
        let header = Header {
            package: self.package.clone(),
            dim,
            entries: self
                .entries
                .iter()
                .map(|e| (e.path.clone(), e.stamp.clone()))
                .collect(),
        };
        let h = serde_json::to_vec(&header)?;
        let tmp = path.with_file_name(format!(
            ".{}.partial",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let result = (|| -> Result<()> {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?,
            );
            f.write_all(MAGIC)?;
            f.write_all(&(h.len() as u64).to_le_bytes())?;
            f.write_all(&h)?;
            for e in &self.entries {
                for v in &e.embedding {
                    f.write_all(&v.to_le_bytes())?;
                }
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}
