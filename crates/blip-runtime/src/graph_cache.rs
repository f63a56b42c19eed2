//! Graphs ONNX Runtime has already optimized, kept between processes: the first open of a graph
//! saves what the optimizer made of it, and later opens load that with the optimizer off, so a
//! restart skips the optimizer's share of session creation (`scripts/bench-open.sh`).
//!
//! An optimized graph can hold layouts and fused kernels for the CPU it was made on and the ONNX
//! Runtime build that made it (minor version and commit, [`OrtLibrary::build`]), so the cache is
//! keyed by both, and by the source graph's sha256 (verified by
//! [`blip_package::Package::open`]). A cached file is used only while its stamp matches
//! ([`FileStamp`]: size, mtime, ctime, inode): one changed, truncated or replaced since it was
//! written is optimized again from the verified source instead. `BLIP_ONNX_GRAPH_CACHE=0` turns
//! the cache off.

use std::path::{Path, PathBuf};

use blip_package::{FileStamp, GraphEntry};
use ort::session::Session;

use crate::{Device, OptLevel, OrtLibrary, Result, RuntimeError, SessionOptions, cache_root};

/// `0` turns the optimized-graph cache off.
pub const GRAPH_CACHE_ENV: &str = "BLIP_ONNX_GRAPH_CACHE";

/// Where one source graph's optimized form lives in the cache.
pub(crate) struct OptimizedGraph {
    file: PathBuf,
    stamp: PathBuf,
    source_sha256: String,
}

/// The CPU features an optimized graph's kernels and layouts may depend on.
fn cpu_key() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let features = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
            (
                "avx512vnni",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
        ];
        let mut key = String::from("x86_64");
        for (name, on) in features {
            if on {
                key.push('-');
                key.push_str(name);
            }
        }
        key
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

impl OptimizedGraph {
    /// The cache entry for `entry` when its session can use one: CPU, full optimization, a graph
    /// without external data (those are over 2 GB and opened as they are), the cache not turned off.
    pub(crate) fn for_graph(
        library: &OrtLibrary,
        entry: &GraphEntry,
        opts: &SessionOptions,
    ) -> Option<OptimizedGraph> {
        if std::env::var(GRAPH_CACHE_ENV).is_ok_and(|v| v == "0")
            || opts.device != Device::Cpu
            || opts.opt_level != OptLevel::All
            || entry.data_file.is_some()
        {
            return None;
        }
        let dir = cache_root()?
            .join("optimized-graphs")
            .join(format!("onnxruntime-{}", library.build))
            .join(cpu_key());
        Some(OptimizedGraph {
            file: dir.join(format!("{}.onnx", entry.sha256)),
            stamp: dir.join(format!("{}.stamp", entry.sha256)),
            source_sha256: entry.sha256.clone(),
        })
    }

    /// Whether the cached file is there and unchanged since it was written.
    pub(crate) fn is_intact(&self) -> bool {
        let Ok(bytes) = std::fs::read(&self.stamp) else {
            return false;
        };
        let Ok(saved) = serde_json::from_slice::<FileStamp>(&bytes) else {
            return false;
        };
        FileStamp::of(&self.file, &self.source_sha256).is_ok_and(|now| now == saved)
    }

    /// A session of the graph at `source`: from the intact cached form with the optimizer off,
    /// or else optimized from `source`, saving the result for the next open (best effort: a cache
    /// that cannot be written costs nothing but the saving).
    pub(crate) fn session(
        &self,
        library: &OrtLibrary,
        source: &Path,
        opts: &SessionOptions,
    ) -> Result<Session> {
        if self.is_intact() {
            match library
                .builder(&self.file, opts, OptLevel::Disable)?
                .commit_from_file(&self.file)
            {
                Ok(session) => return Ok(session),
                Err(e) => tracing::warn!(
                    file = %self.file.display(),
                    error = %e,
                    "the cached optimized graph does not open; optimizing the package's graph again"
                ),
            }
        }
        let _ = std::fs::remove_file(&self.stamp);
        let Some(dir) = self.file.parent() else {
            return library.session(source, opts);
        };
        if std::fs::create_dir_all(dir).is_err() {
            return library.session(source, opts);
        }
        // Unique per process and thread: opens racing on one graph each write their own file and
        // the last rename wins (both are the same graph).
        let partial = dir.join(format!(
            ".{}.{}.{:?}.partial",
            self.source_sha256,
            std::process::id(),
            std::thread::current().id()
        ));
        let session_error = |message: String| RuntimeError::Session {
            path: source.to_path_buf(),
            message,
        };
        let session = library
            .builder(source, opts, OptLevel::All)?
            .with_optimized_model_path(&partial)
            .map_err(|e| session_error(e.to_string()))?
            .commit_from_file(source)
            .map_err(|e| session_error(e.to_string()));
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        if std::fs::rename(&partial, &self.file).is_ok() {
            // Stamped after the rename (which moves the ctime).
            if let Ok(stamp) = FileStamp::of(&self.file, &self.source_sha256)
                && let Ok(text) = serde_json::to_vec(&stamp)
            {
                let _ = blip_package::write_file_atomic(&self.stamp, &text);
            }
        } else {
            let _ = std::fs::remove_file(&partial);
        }
        Ok(session)
    }
}
