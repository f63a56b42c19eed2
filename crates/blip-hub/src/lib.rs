//! Resolve a Hugging Face hub model id (`org/name[@revision]`) to a local blip-onnx model package.
//!
//! The checkpoint files the converter reads are downloaded with `hf-hub` into the usual hub cache
//! (`$HF_HOME/hub`), checked (sha256 against the hub's LFS etag, git blob sha1 for small files,
//! the safetensors header), converted (and quantized) once into a package cache keyed by the
//! resolved commit and the precision (`$HF_HOME/blip-onnx/packages/<org>--<name>/<sha>/<precision>`),
//! and reused from there with no request at all. Environment: `HF_ENDPOINT`, `HF_HOME`,
//! `HF_TOKEN` (or `$HF_HOME/token`), `HF_HUB_OFFLINE=1` (the cache only).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use blip_package::Head;
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use sha1::Sha1;
use sha2::{Digest, Sha256};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0:?} is not a hub model id: expected org/name or org/name@revision")]
    BadId(String),
    #[error(
        "{id}: no such model or revision on {endpoint} (HTTP {status}); check the id, or set HF_TOKEN for a private or gated model"
    )]
    MissingId {
        id: String,
        endpoint: String,
        status: u16,
    },
    #[error("{id}: {file} not found at commit {commit} (HTTP {status})")]
    MissingFile {
        id: String,
        file: String,
        commit: String,
        status: u16,
    },
    #[error(
        "{id}: commit {commit} has no BLIP checkpoint: {missing} (it has {})",
        files.join(", ")
    )]
    NotACheckpoint {
        id: String,
        commit: String,
        missing: &'static str,
        files: Vec<String>,
    },
    #[error("{id}: cannot reach {endpoint}: {message}")]
    Network {
        id: String,
        endpoint: String,
        message: String,
    },
    #[error("{id}: {endpoint} answered HTTP {status} for {what}")]
    Http {
        id: String,
        endpoint: String,
        status: u16,
        what: String,
    },
    #[error(
        "{id}: downloaded {file} is corrupt ({reason}); removed it from the cache, run again to download it anew"
    )]
    Corrupt {
        id: String,
        file: String,
        reason: String,
    },
    #[error(
        "{id}: HF_HUB_OFFLINE is set and {what} is not in the cache {cache}; run once without HF_HUB_OFFLINE to download it"
    )]
    Offline {
        id: String,
        what: String,
        cache: PathBuf,
    },
    #[error("{id}: converting the checkpoint: {source}")]
    Convert {
        id: String,
        #[source]
        source: Box<blip_convert::ConvertError>,
    },
    #[error("{id}: quantizing to {precision}: {source}")]
    Quantize {
        id: String,
        precision: Flavour,
        #[source]
        source: Box<blip_quantize::QuantizeError>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, HubError>;

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `org/name` with an optional revision (branch, tag or commit sha).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    pub repo: String,
    pub revision: Option<String>,
}

impl ModelId {
    /// Whether `s` has the shape of a hub id (the CLI asks this of a path that does not exist).
    pub fn looks_like(s: &str) -> bool {
        s.parse::<ModelId>().is_ok()
    }

    /// The revision asked for; `main` when none was.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The package cache's folder name of the repository (as the hub cache spells it).
    fn folder(&self) -> String {
        self.repo.replace('/', "--")
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{r}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

impl FromStr for ModelId {
    type Err = HubError;

    fn from_str(s: &str) -> Result<ModelId> {
        let bad = || HubError::BadId(s.to_string());
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() && !rev.contains(['@', ' ', '\\']) => {
                (r, Some(rev.to_string()))
            }
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let (org, name) = repo.split_once('/').ok_or_else(bad)?;
        // The hub's name rule: letters, digits, '-', '_', '.'; no leading or trailing '.'/'-'
        // and no "..", so a name can never step out of a cache folder.
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.starts_with(['.', '-'])
                && !p.ends_with(['.', '-'])
                && !p.contains("..")
        };
        if !part_ok(org) || !part_ok(name) {
            return Err(bad());
        }
        if revision.as_deref().is_some_and(|r| {
            r.split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        }) {
            return Err(bad());
        }
        Ok(ModelId {
            repo: repo.to_string(),
            revision,
        })
    }
}

/// A package flavour (a name distinct from blip_quantize::Scheme, the quantization scheme):
/// what the package cache holds per commit, the converted package or a quantized copy made as
/// `blip-onnx quantize` makes it (native target, default policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// The recommended CPU package: INT8 encoders, then INT4 decoder (INT8 only for retrieval,
    /// which has no decoder) — `quantize` then `quantize --precision int4`.
    Default,
    /// The converted package as is.
    Fp32,
    /// `blip-onnx quantize --precision int8` (the encoders).
    Int8,
    /// `blip-onnx quantize --precision int4` (the decoder).
    Int4,
    /// `blip-onnx quantize --precision fp16` (every graph).
    Fp16,
}

impl Flavour {
    pub const NAMES: [&'static str; 5] = ["default", "fp32", "int8", "int4", "fp16"];

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Default => "default",
            Flavour::Fp32 => "fp32",
            Flavour::Int8 => "int8",
            Flavour::Int4 => "int4",
            Flavour::Fp16 => "fp16",
        }
    }

    /// The quantize passes, in order, that make this precision from the FP32 package.
    fn passes(self, head: Head) -> Vec<blip_quantize::Scheme> {
        let target = blip_quantize::Target::Native;
        let int4 = target.int4(blip_quantize::DEFAULT_INT4_BLOCK_SIZE, None);
        match self {
            Flavour::Fp32 => vec![],
            Flavour::Int8 => vec![blip_quantize::Scheme::Int8],
            Flavour::Int4 => vec![int4],
            Flavour::Fp16 => vec![blip_quantize::Scheme::Fp16],
            Flavour::Default if head == Head::Retrieval => vec![blip_quantize::Scheme::Int8],
            Flavour::Default => vec![blip_quantize::Scheme::Int8, int4],
        }
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown precision {0:?}; expected one of default, fp32, int8, int4, fp16")]
pub struct UnknownFlavour(String);

impl FromStr for Flavour {
    type Err = UnknownFlavour;

    fn from_str(s: &str) -> std::result::Result<Flavour, UnknownFlavour> {
        Ok(match s {
            "default" => Flavour::Default,
            "fp32" => Flavour::Fp32,
            "int8" => Flavour::Int8,
            "int4" => Flavour::Int4,
            "fp16" => Flavour::Fp16,
            _ => return Err(UnknownFlavour(s.to_string())),
        })
    }
}

/// Where and how to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub endpoint: String,
    /// `HF_HOME`: the hub cache is `<home>/hub`, packages `<home>/blip-onnx/packages`.
    pub home: PathBuf,
    pub token: Option<String>,
    pub offline: bool,
    /// Progress bars on stderr while downloading.
    pub progress: bool,
}

impl HubOptions {
    /// `HF_ENDPOINT`, `HF_HOME` (default `~/.cache/huggingface`), `HF_TOKEN` (else the token file
    /// `$HF_HOME/token`), `HF_HUB_OFFLINE` (1/true/yes/on).
    pub fn from_env() -> HubOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let mut p = Cache::default().path().clone();
            p.pop(); // …/huggingface/hub → …/huggingface
            p
        });
        HubOptions {
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            home,
            token: var("HF_TOKEN"),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            }),
            progress: false,
        }
    }

    pub fn hub_cache(&self) -> PathBuf {
        self.home.join("hub")
    }

    pub fn package_cache(&self) -> PathBuf {
        self.home.join("blip-onnx").join("packages")
    }
}

/// A checkpoint folder in the hub cache (symlinks into its blobs), all files verified.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub commit: String,
}

/// A package resolved from an id.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub dir: PathBuf,
    pub commit: String,
    pub precision: Flavour,
    /// False when the package cache already held it (nothing was downloaded or converted).
    pub built: bool,
}

pub struct Hub {
    opts: HubOptions,
}

impl Hub {
    pub fn new(opts: HubOptions) -> Hub {
        Hub { opts }
    }

    pub fn from_env() -> Hub {
        Hub::new(HubOptions::from_env())
    }

    pub fn options(&self) -> &HubOptions {
        &self.opts
    }

    /// The package folder for `id` at `precision`: from the package cache when there (no request),
    /// else downloaded (unless offline), converted and quantized once, then moved into place.
    pub fn package(&self, id: &ModelId, precision: Flavour) -> Result<Resolved> {
        if let Some(commit) = self.cached_commit(id)
            && let Some(dir) = self.cached_package(id, &commit, precision)
        {
            return Ok(Resolved {
                dir,
                commit,
                precision,
                built: false,
            });
        }
        let snap = self.snapshot(id)?;
        if let Some(dir) = self.cached_package(id, &snap.commit, precision) {
            return Ok(Resolved {
                dir,
                commit: snap.commit,
                precision,
                built: false,
            });
        }
        let dir = self.build(id, &snap, precision)?;
        Ok(Resolved {
            dir,
            commit: snap.commit,
            precision,
            built: true,
        })
    }

    /// The checkpoint folder for `id`: the cached snapshot of the commit the revision resolved to
    /// last time when complete (no request), else the files the converter reads, downloaded.
    pub fn snapshot(&self, id: &ModelId) -> Result<Snapshot> {
        if let Some(commit) = self.cached_commit(id) {
            let dir = self.snapshot_dir(id, &commit);
            if checkpoint_files(|f| dir.join(f).is_file()).is_ok() {
                return Ok(Snapshot { dir, commit });
            }
        }
        if self.opts.offline {
            return Err(HubError::Offline {
                id: id.to_string(),
                what: format!("a complete checkpoint of revision {}", id.revision()),
                cache: self.opts.hub_cache(),
            });
        }
        self.download(id)
    }

    fn api(&self, id: &ModelId) -> Result<hf_hub::api::sync::Api> {
        ApiBuilder::from_cache(Cache::new(self.opts.hub_cache()))
            .with_endpoint(self.opts.endpoint.clone())
            .with_token(
                self.opts
                    .token
                    .clone()
                    .or_else(|| Cache::new(self.opts.hub_cache()).token()),
            )
            .with_progress(self.opts.progress)
            .build()
            .map_err(|e| self.api_error(id, e, "the client"))
    }

    fn download(&self, id: &ModelId) -> Result<Snapshot> {
        let api = self.api(id)?;
        let asked = api.repo(Repo::with_revision(
            id.repo.clone(),
            RepoType::Model,
            id.revision().to_string(),
        ));
        let info = asked
            .info()
            .map_err(|e| self.api_error(id, e, "the model info"))?;
        let commit = info.sha.clone();
        if !is_sha(&commit) {
            return Err(HubError::Http {
                id: id.to_string(),
                endpoint: self.opts.endpoint.clone(),
                status: 200,
                what: format!("the model info (commit {commit:?} is not a sha)"),
            });
        }
        let siblings: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
        let mut files =
            checkpoint_files(|f| siblings.iter().any(|s| s == f)).map_err(|missing| {
                HubError::NotACheckpoint {
                    id: id.to_string(),
                    commit: commit.clone(),
                    missing,
                    files: siblings.clone(),
                }
            })?;
        // Pinned to the commit: every file comes from the same one even if the branch moves.
        let pinned = api.repo(Repo::with_revision(
            id.repo.clone(),
            RepoType::Model,
            commit.clone(),
        ));
        let mut i = 0;
        while i < files.len() {
            let file = files[i].clone();
            let path = self.fetch(id, &pinned, &commit, &file)?;
            // config.json comes first: a model this tool cannot convert (BLIP-2, InstructBLIP,
            // another family) is refused by name before gigabytes of weights are fetched.
            if file == "config.json" {
                blip_convert::check_config(&path).map_err(|e| HubError::Convert {
                    id: id.to_string(),
                    source: Box::new(e),
                })?;
            }
            if file.ends_with(".index.json") {
                files.extend(shard_files(id, &file, &path)?);
            }
            i += 1;
        }
        // The revision resolves to this commit from now on without asking (hf-hub's own ref file).
        Cache::new(self.opts.hub_cache())
            .repo(Repo::with_revision(
                id.repo.clone(),
                RepoType::Model,
                id.revision().to_string(),
            ))
            .create_ref(&commit)
            .map_err(io_at(&self.opts.hub_cache()))?;
        Ok(Snapshot {
            dir: self.snapshot_dir(id, &commit),
            commit,
        })
    }

    /// Downloads one file (or takes it from the hub cache) and verifies it; a corrupt one is
    /// removed from the cache (blob and snapshot link) so nothing bad is ever reused.
    fn fetch(&self, id: &ModelId, repo: &ApiRepo, commit: &str, file: &str) -> Result<PathBuf> {
        tracing::info!("{id}: fetching {file} at {commit}");
        let path = repo.get(file).map_err(|e| match e {
            ApiError::RequestError(ref b) if matches!(**b, ureq::Error::StatusCode(404)) => {
                HubError::MissingFile {
                    id: id.to_string(),
                    file: file.to_string(),
                    commit: commit.to_string(),
                    status: 404,
                }
            }
            e => self.api_error(id, e, file),
        })?;
        if let Err(reason) = verify(file, &path) {
            let blob = std::fs::canonicalize(&path).ok();
            let _ = std::fs::remove_file(&path);
            if let Some(blob) = blob {
                let _ = std::fs::remove_file(blob);
            }
            return Err(HubError::Corrupt {
                id: id.to_string(),
                file: file.to_string(),
                reason,
            });
        }
        Ok(path)
    }

    fn api_error(&self, id: impl std::fmt::Display, e: ApiError, what: &str) -> HubError {
        let id = id.to_string();
        let endpoint = self.opts.endpoint.clone();
        match e {
            ApiError::RequestError(b) => match *b {
                // The hub answers 401 for a repository that does not exist (or is private)
                // when no token is sent, 404 otherwise.
                ureq::Error::StatusCode(status @ (401 | 404)) => HubError::MissingId {
                    id,
                    endpoint,
                    status,
                },
                ureq::Error::StatusCode(status) => HubError::Http {
                    id,
                    endpoint,
                    status,
                    what: what.to_string(),
                },
                other => HubError::Network {
                    id,
                    endpoint,
                    message: other.to_string(),
                },
            },
            ApiError::IoError(source) => HubError::Network {
                id,
                endpoint,
                message: format!("{what}: {source}"),
            },
            other => HubError::Network {
                id,
                endpoint,
                message: format!("{what}: {other}"),
            },
        }
    }

    fn repo_cache_dir(&self, id: &ModelId) -> PathBuf {
        self.opts
            .hub_cache()
            .join(Repo::model(id.repo.clone()).folder_name())
    }

    fn snapshot_dir(&self, id: &ModelId, commit: &str) -> PathBuf {
        self.repo_cache_dir(id).join("snapshots").join(commit)
    }

    /// The commit the revision resolved to when it was last downloaded (a commit sha names itself).
    fn cached_commit(&self, id: &ModelId) -> Option<String> {
        let rev = id.revision();
        let recorded = std::fs::read_to_string(self.repo_cache_dir(id).join("refs").join(rev))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| is_sha(s));
        recorded.or_else(|| is_sha(rev).then(|| rev.to_string()))
    }

    fn package_dir(&self, id: &ModelId, commit: &str) -> PathBuf {
        self.opts.package_cache().join(id.folder()).join(commit)
    }

    fn cached_package(&self, id: &ModelId, commit: &str, precision: Flavour) -> Option<PathBuf> {
        let dir = self.package_dir(id, commit).join(precision.name());
        dir.join("blip.json").is_file().then_some(dir)
    }

    /// Converts the snapshot and runs the quantize passes in a temporary folder next to the entry,
    /// then renames the result (and the FP32 package made on the way) into place.
    fn build(&self, id: &ModelId, snap: &Snapshot, precision: Flavour) -> Result<PathBuf> {
        let parent = self.package_dir(id, &snap.commit);
        std::fs::create_dir_all(&parent).map_err(io_at(&parent))?;
        let work = tempfile::Builder::new()
            .prefix(".building-")
            .tempdir_in(&parent)
            .map_err(io_at(&parent))?;
        let fp32 = work.path().join(Flavour::Fp32.name());
        let report =
            blip_convert::convert(&snap.dir, &fp32, &Default::default()).map_err(|source| {
                HubError::Convert {
                    id: id.to_string(),
                    source: Box::new(source),
                }
            })?;
        let mut current = fp32.clone();
        for (i, pass) in precision.passes(report.head).into_iter().enumerate() {
            let target = blip_quantize::Target::Native;
            let opts = blip_quantize::QuantizeOptions {
                policy: target.default_policy(&pass),
                scheme: pass,
                weight_type: target.default_weight_type(),
                target,
                ..Default::default()
            };
            let out = work.path().join(format!("pass{i}"));
            blip_quantize::quantize_package(&current, &out, &opts).map_err(|source| {
                HubError::Quantize {
                    id: id.to_string(),
                    precision,
                    source: Box::new(source),
                }
            })?;
            current = out;
        }
        let dir = parent.join(precision.name());
        place(&current, &dir)?;
        if precision != Flavour::Fp32 {
            // Made on the way: keep it, a later fp32 request then costs nothing.
            let _ = place(&fp32, &parent.join(Flavour::Fp32.name()));
        }
        Ok(dir)
    }
}

/// Renames a finished package into the cache; one already there (another process made it) wins.
fn place(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(_) if to.join("blip.json").is_file() => Ok(()),
        Err(e) => Err(io_at(to)(e)),
    }
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The files the converter reads from a Hugging Face folder (blip-checkpoint's `open_hf_dir` and
/// blip-convert's tokenizer lookup), in its order of preference; shards come from the index later.
/// `Err` names what is missing.
fn checkpoint_files(has: impl Fn(&str) -> bool) -> std::result::Result<Vec<String>, &'static str> {
    let mut files = Vec::new();
    if !has("config.json") {
        return Err("no config.json");
    }
    files.push("config.json".to_string());
    let weights = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ];
    let w = weights
        .into_iter()
        .find(|f| has(f))
        .ok_or("no model.safetensors, model.safetensors.index.json or pytorch_model.bin")?;
    files.push(w.to_string());
    let t = ["tokenizer.json", "vocab.txt"]
        .into_iter()
        .find(|f| has(f))
        .ok_or("no tokenizer.json or vocab.txt")?;
    files.push(t.to_string());
    Ok(files)
}

/// The shard files a `*.index.json` names (its `weight_map` values), each a plain file name.
fn shard_files(id: &ModelId, file: &str, path: &Path) -> Result<Vec<String>> {
    let corrupt = |reason: String| HubError::Corrupt {
        id: id.to_string(),
        file: file.to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(io_at(path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| corrupt("no weight_map object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for value in map.values() {
        let name = value
            .as_str()
            .filter(|n| !n.is_empty() && !n.contains(['/', '\\']) && *n != "..")
            .ok_or_else(|| corrupt(format!("weight_map value {value} is not a file name")))?;
        if !shards.iter().any(|s| s == name) {
            shards.push(name.to_string());
        }
    }
    Ok(shards)
}

/// Checks a downloaded file: its content hash against the etag the hub gave (the blob's name:
/// sha256 for LFS files, git blob sha1 for the rest; hf-hub checks neither, nor the length), then
/// that it parses as what it is (JSON, safetensors header and data length).
fn verify(file: &str, path: &Path) -> std::result::Result<(), String> {
    let blob = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    let etag = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let len = std::fs::metadata(&blob).map_err(|e| e.to_string())?.len();
    let hex = |b: &[u8]| b.iter().all(|c| c.is_ascii_hexdigit());
    if etag.len() == 64 && hex(etag.as_bytes()) {
        let got = hash_file::<Sha256>(&blob, None)?;
        if !got.eq_ignore_ascii_case(&etag) {
            return Err(format!(
                "sha256 {got} of its {len} bytes differs from the hub's {etag}"
            ));
        }
    } else if etag.len() == 40 && hex(etag.as_bytes()) {
        let got = hash_file::<Sha1>(&blob, Some(format!("blob {len}\0").as_bytes()))?;
        if !got.eq_ignore_ascii_case(&etag) {
            return Err(format!(
                "git blob sha1 {got} of its {len} bytes differs from the hub's {etag}"
            ));
        }
    }
    if file.ends_with(".json") {
        let text = std::fs::read(&blob).map_err(|e| e.to_string())?;
        serde_json::from_slice::<serde_json::Value>(&text).map_err(|e| format!("not JSON: {e}"))?;
    } else if file.ends_with(".safetensors") {
        let f = std::fs::File::open(&blob).map_err(|e| e.to_string())?;
        // SAFETY: a private cache blob, read only; nothing truncates it while mapped.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| e.to_string())?;
        safetensors::SafeTensors::deserialize(&map)
            .map_err(|e| format!("not safetensors: {e:?}"))?;
    }
    Ok(())
}

fn hash_file<D: Digest>(path: &Path, prefix: Option<&[u8]>) -> std::result::Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut d = D::new();
    if let Some(p) = prefix {
        d.update(p);
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        d.update(&buf[..n]);
    }
    Ok(hex::encode(d.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_refuse() {
        let id: ModelId = "Salesforce/blip-image-captioning-large".parse().unwrap();
        assert_eq!(id.repo, "Salesforce/blip-image-captioning-large");
        assert_eq!(id.revision(), "main");
        let id: ModelId = "org/name@v1.0".parse().unwrap();
        assert_eq!(id.revision.as_deref(), Some("v1.0"));
        for bad in [
            "name",
            "a/b/c",
            "../x/y",
            "org/..",
            "org/name@",
            "org/name@a@b",
            "org/name@../x",
            "./pkg",
            "org/na me",
            "",
        ] {
            assert!(bad.parse::<ModelId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn checkpoint_files_follow_the_converter_preference() {
        let listing: Vec<String> = [
            "config.json",
            "pytorch_model.bin",
            "model.safetensors",
            "vocab.txt",
            "tokenizer.json",
        ]
        .map(String::from)
        .to_vec();
        let files = checkpoint_files(|f| listing.iter().any(|s| s == f)).unwrap();
        assert_eq!(
            files,
            ["config.json", "model.safetensors", "tokenizer.json"]
        );
        let no_tok: Vec<String> = ["config.json", "model.safetensors"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            checkpoint_files(|f| no_tok.iter().any(|s| s == f)),
            Err("no tokenizer.json or vocab.txt")
        );
    }
}
