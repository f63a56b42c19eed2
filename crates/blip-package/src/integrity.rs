//! Graph checksums verified when a package is opened, so a changed, truncated or swapped graph
//! file is refused with its name instead of being run.
//!
//! Hashing a base package (~900 MB) on every open would cost seconds, so a successful verification
//! is recorded in a stamp file (`.blip-verified`) keyed by each file's size, mtime, ctime and inode
//! together with the sha256 the manifest expects: any write to a file (which moves its ctime), a
//! replaced file (new inode) or a changed manifest checksum invalidates the stamp and the file is
//! hashed again. A package folder that cannot be written is simply verified on every open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{GraphEntry, Package, PackageError};

/// The stamp file in a package folder (hidden; not part of the manifest, never copied).
pub const VERIFIED_STAMP: &str = ".blip-verified";

/// What identifies a file's bytes without reading them: size, mtime, ctime and inode, with the
/// sha256 they were verified against. Any write to the file moves its ctime and a replaced file has
/// another inode, so an equal stamp means the verified bytes are still there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    sha256: String,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl FileStamp {
    /// The stamp of `path` as it is now, for bytes whose sha256 is (or derive from) `sha256`.
    pub fn of(path: &Path, sha256: &str) -> std::io::Result<FileStamp> {
        key_of(path, sha256)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stamp {
    files: BTreeMap<String, FileStamp>,
}

impl GraphEntry {
    /// The files a graph's `sha256` covers, in hashing order: the graph, then its external data.
    pub fn files(&self) -> Vec<&str> {
        std::iter::once(self.file.as_str())
            .chain(self.data_file.as_deref())
            .collect()
    }
}

fn key_of(path: &Path, sha256: &str) -> std::io::Result<FileStamp> {
    let m = std::fs::metadata(path)?;
    let ns = |t: std::io::Result<std::time::SystemTime>| -> i128 {
        t.ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(-1)
    };
    #[cfg(unix)]
    let (ctime_ns, ino) = {
        use std::os::unix::fs::MetadataExt;
        (
            m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            m.ino(),
        )
    };
    #[cfg(not(unix))]
    let (ctime_ns, ino) = (-1, 0);
    Ok(FileStamp {
        sha256: sha256.to_string(),
        len: m.len(),
        mtime_ns: ns(m.modified()),
        ctime_ns,
        ino,
    })
}

impl Package {
    /// Hashes every graph (graph file + external data) and compares with the manifest, skipping
    /// graphs whose files are unchanged since a stamped verification. A mismatch names the file.
    pub fn verify_checksums(&self) -> Result<(), PackageError> {
        self.verify(true)
    }

    /// As [`Package::verify_checksums`], but hashes everything, ignoring and not writing the stamp.
    pub fn verify_checksums_fully(&self) -> Result<(), PackageError> {
        self.verify(false)
    }

    fn verify(&self, use_stamp: bool) -> Result<(), PackageError> {
        let stamp_path = self.dir.join(VERIFIED_STAMP);
        let old: Stamp = if use_stamp {
            std::fs::read(&stamp_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        } else {
            Stamp::default()
        };
        let mut new = Stamp::default();
        let mut hashed = false;
        for (role, g) in &self.manifest.graphs {
            let paths: Vec<PathBuf> = g.files().iter().map(|f| self.dir.join(f)).collect();
            let keys = paths
                .iter()
                .map(|p| {
                    key_of(p, &g.sha256).map_err(|source| PackageError::Io {
                        path: p.clone(),
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let fresh = g
                .files()
                .iter()
                .zip(&keys)
                .all(|(f, k)| old.files.get(*f) == Some(k));
            if !fresh {
                hashed = true;
                let actual = crate::sha256_files(&paths)?;
                if actual != g.sha256 {
                    return Err(PackageError::ChecksumMismatch {
                        path: paths[0].clone(),
                        graph: role.clone(),
                        files: g.files().join(" + "),
                        expected: g.sha256.clone(),
                        actual,
                    });
                }
            }
            for (f, k) in g.files().iter().zip(keys) {
                new.files.insert(f.to_string(), k);
            }
        }
        if use_stamp && hashed {
            // Best effort: a read-only package is verified again next time.
            if let Ok(text) = serde_json::to_vec_pretty(&new) {
                let _ = crate::write_file_atomic(&stamp_path, &text);
            }
        }
        Ok(())
    }
}
