//! Format 3: the index as an embedded database plus an ANN graph.
//!
//! The index file is a SQLite database (WAL journal, `synchronous=FULL`): one row per entry (id,
//! path, stamp, metadata, its ITC vectors as f32) and, per entry, its rerank states (f16, int8
//! with a scale per token row, or none). An add or a delete is one transaction — O(log N), and
//! once it returns it survives a SIGKILL or a power cut; readers see consistent snapshots while
//! a writer works.
//!
//! The database is the truth. The ANN graph (usearch HNSW, inner product over unit vectors) is a
//! cache of its vectors kept in memory, saved now and then under `<index>.d/ann-<uid>-<seq>.usearch`
//! where `seq` is the last change of the `log` table it holds; opening loads the newest such file
//! and replays the later changes, or rebuilds the graph from the rows when there is none. Below
//! [`EXACT_BELOW`] vectors a search is exact (brute force over the graph's vectors). Candidates
//! are always re-scored with the stored f32 vectors, so quantised graph storage changes which
//! entries are found, never their scores.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{Entry, IndexError, Result, Stamp, StateShape};

/// Searches over fewer vectors than this are exact.
pub const EXACT_BELOW: usize = 20_000;
/// HNSW links per node (usearch's connectivity; 2× on the base layer) and build breadth: the
/// setting `scripts/bench-ann.sh` measured (recall@10 ≥ 0.97 on clustered 256-d vectors).
const CONNECTIVITY: usize = 16;
const EXPANSION_ADD: usize = 64;
const EXPANSION_SEARCH: usize = 128;
/// Searches in the graph at once: one per core. usearch keeps one search context per reserved
/// thread and fails a search beyond them ("Reserve capacity ahead of searches!", seen with three
/// searching threads on 2 cores); every graph reserves this many and [`SearchSlots`] holds
/// further searches until one ends. More contexts would not search faster, and they changed the
/// graph adds build (each context has its own level generator): with 32, the store's recall
/// test measured recall@10 0.968, under its 0.97 bound; with one per core it passes.
fn search_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A counting gate of [`search_threads`] places for graph searches.
struct SearchSlots {
    places: usize,
    busy: Mutex<usize>,
    freed: std::sync::Condvar,
}

struct SearchSlot<'a>(&'a SearchSlots);

impl SearchSlots {
    fn new() -> SearchSlots {
        SearchSlots {
            places: search_threads(),
            busy: Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    fn take(&self) -> SearchSlot<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy >= self.places {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy += 1;
        SearchSlot(self)
    }
}

impl Drop for SearchSlot<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

/// How an index keeps what ITM rerank needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RerankStates {
    /// Vision hidden states as f16: 2 bytes per value.
    #[default]
    F16,
    /// int8 with one f32 scale per token row: 1 byte per value.
    Int8,
    /// Nothing: rerank encodes the candidates' stored image files at query time.
    None,
}

impl RerankStates {
    pub fn name(self) -> &'static str {
        match self {
            RerankStates::F16 => "f16",
            RerankStates::Int8 => "int8",
            RerankStates::None => "none",
        }
    }

    /// Bytes per image for states of `shape`.
    pub fn bytes_per_image(self, shape: StateShape) -> usize {
        match self {
            RerankStates::F16 => shape.values() * 2,
            RerankStates::Int8 => shape.values() + shape.tokens * 4,
            RerankStates::None => 0,
        }
    }
}

impl std::str::FromStr for RerankStates {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f16" => Ok(RerankStates::F16),
            "int8" => Ok(RerankStates::Int8),
            "none" => Ok(RerankStates::None),
            other => Err(format!("{other:?} is not one of f16, int8, none")),
        }
    }
}

/// Storage of the ANN graph's vectors (the stored f32 rows stay exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnnStorage {
    F32,
    #[default]
    F16,
    I8,
}

impl AnnStorage {
    fn scalar(self) -> usearch::ScalarKind {
        match self {
            AnnStorage::F32 => usearch::ScalarKind::F32,
            AnnStorage::F16 => usearch::ScalarKind::F16,
            AnnStorage::I8 => usearch::ScalarKind::I8,
        }
    }
}

/// What a new index is made with.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// [`crate::Index::fingerprint`] of the package.
    pub package: String,
    pub dim: usize,
    /// Shape of one image's vision states (needed unless `rerank` is `None`).
    pub states: Option<StateShape>,
    pub rerank: RerankStates,
    pub ann: AnnStorage,
}

/// One entry to add: its vectors (`n × dim`, n ≥ 1; the score is the best of them) and states.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub id: String,
    pub path: PathBuf,
    pub stamp: Stamp,
    pub metadata: Option<serde_json::Value>,
    pub vectors: Vec<f32>,
    /// `tokens × width` f32, kept as the index's [`RerankStates`] says (ignored for `none`).
    pub states: Option<Vec<f32>>,
}

/// A search candidate: the entry, its max-similarity, which vector gave it, its states.
#[derive(Debug, Clone)]
pub struct Near {
    pub stored: Stored,
    pub score: f32,
    pub best: usize,
    pub states: Option<Vec<f32>>,
}

/// An entry as stored, with its vectors.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: u64,
    pub entry: Entry,
    pub vectors: Vec<f32>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries(
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns TEXT NOT NULL,
    metadata TEXT,
    vectors BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS entries_path ON entries(path);
CREATE TABLE IF NOT EXISTS states(key INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log(seq INTEGER PRIMARY KEY AUTOINCREMENT, key INTEGER NOT NULL, op INTEGER NOT NULL);
";

/// The first bytes of every SQLite database.
pub(crate) const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> IndexError + '_ {
    move |e| IndexError::Database {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn ann_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> IndexError + '_ {
    move |e| IndexError::Database {
        path: path.to_path_buf(),
        message: format!("ANN graph: {e}"),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// States as stored: f16, or per token row an f32 scale then the row as int8. Measured on the
/// shapes test queries (`crates/blip-server/tests/rerank_states.rs`), the largest ITM logit change
/// against f16 was 0.07 with row scales, 0.09 with one scale per channel, 0.09 with both and 0.09
/// with a scale per 32 values of a row, and 0.24 with each channel's mean taken out first (stored
/// per entry): the row scale is kept, the simplest and best.
pub fn encode_states(kind: RerankStates, shape: StateShape, v: &[f32]) -> Vec<u8> {
    match kind {
        RerankStates::F16 => crate::f16_bytes(v),
        RerankStates::None => Vec::new(),
        RerankStates::Int8 => {
            let mut out = Vec::with_capacity(v.len() + shape.tokens * 4);
            for row in v.chunks(shape.width.max(1)) {
                let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                out.extend_from_slice(&scale.to_le_bytes());
                out.extend(
                    row.iter()
                        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
            out
        }
    }
}

pub fn decode_states(kind: RerankStates, shape: StateShape, b: &[u8]) -> Option<Vec<f32>> {
    match kind {
        RerankStates::F16 => (b.len() == shape.values() * 2).then(|| {
            b.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()
        }),
        RerankStates::Int8 => {
            let row = 4 + shape.width;
            (b.len() == shape.tokens * row).then(|| {
                b.chunks_exact(row)
                    .flat_map(|r| {
                        let scale = f32::from_le_bytes([r[0], r[1], r[2], r[3]]);
                        r[4..].iter().map(move |&q| q as i8 as f32 * scale)
                    })
                    .collect()
            })
        }
        RerankStates::None => None,
    }
}

/// An entry with its uploaded image file, for [`Store::add_uploads`] (the entry's path and
/// stamp are those of the stored file).
pub struct Upload {
    pub entry: NewEntry,
    pub bytes: Vec<u8>,
    pub extension: String,
}

/// Reader connections kept open between reads.
const IDLE_READERS: usize = 4;

/// Removes a database file and its WAL and shared-memory files.
fn remove_database(path: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Names this index's graph files, so a rebuilt index at the same path never loads the graph
/// of the one it replaced.
fn random_uid() -> String {
    use sha2::Digest;
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = format!(
        "{}\0{:?}\0{}",
        std::process::id(),
        std::time::SystemTime::now(),
        MADE.fetch_add(1, Ordering::Relaxed)
    );
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..8])
}

/// The open index: a SQLite database and the ANN graph over its vectors.
pub struct Store {
    path: PathBuf,
    pub package: String,
    pub dim: usize,
    pub states: Option<StateShape>,
    pub rerank: RerankStates,
    ann_storage: AnnStorage,
    uid: String,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    ann: RwLock<usearch::Index>,
    search_slots: SearchSlots,
    /// Last `log.seq` the graph holds, and the one its newest saved file holds.
    applied: AtomicI64,
    saved: AtomicI64,
    /// Most vectors one entry has (how many graph hits to ask for per wanted entry).
    max_vectors: AtomicI64,
    /// Entries, counted once at open and kept with each committed change: `SELECT COUNT(*)`
    /// scans the table (30 ms a search at 10^6 entries, measured). Like the in-memory graph, it
    /// is this process's view.
    entries: AtomicI64,
    /// Searches below this many vectors are exact.
    pub exact_below: usize,
    read_only: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("dim", &self.dim)
            .field("rerank", &self.rerank)
            .finish()
    }
}

fn new_ann(path: &Path, dim: usize, storage: AnnStorage) -> Result<usearch::Index> {
    let ix = usearch::Index::new(&usearch::IndexOptions {
        dimensions: dim,
        metric: usearch::MetricKind::IP,
        quantization: storage.scalar(),
        connectivity: CONNECTIVITY,
        expansion_add: EXPANSION_ADD,
        expansion_search: EXPANSION_SEARCH,
        multi: true,
    })
    .map_err(ann_err(path))?;
    reserve_search_threads(&ix, path)?;
    Ok(ix)
}

/// Reserves [`search_threads`] search contexts (thread limits only grow: a later `reserve` of
/// capacity keeps them).
fn reserve_search_threads(ix: &usearch::Index, path: &Path) -> Result<()> {
    ix.reserve_capacity_and_threads(ix.capacity().max(ix.size()), search_threads())
        .map_err(ann_err(path))
}

fn configure(conn: &Connection, path: &Path) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(db_err(path))?;
    // WAL: readers never block the writer; FULL: a commit is on disk when it returns.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err(path))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db_err(path))?;
    conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)
        .map_err(db_err(path))?;
    Ok(())
}

/// Page cache per connection, in KiB (SQLite's `cache_size` takes a negative count as KiB).
/// Rows are fetched by key and the vectors live in the ANN graph, so a small cache loses
/// little, and the server's memory stays flat: with SQLite's default of 2 MiB for the writer and
/// each pooled reader, the soak's RSS grew 7 % while the caches filled.
const PAGE_CACHE_KIB: i64 = -512;

/// Whether the file at `path` is a format-3 index (a SQLite database).
pub fn is_store(path: &Path) -> bool {
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && &head == SQLITE_MAGIC
}

impl Store {
    /// Makes a new, empty index at `path` (refused when a file is there).
    pub fn create(path: &Path, opts: &StoreOptions) -> Result<Store> {
        if path.exists() {
            return Err(IndexError::Exists { path: path.into() });
        }
        if opts.rerank != RerankStates::None && opts.states.is_none() {
            return Err(IndexError::Header {
                path: path.into(),
                message: format!(
                    "--rerank-states {} needs the state shape",
                    opts.rerank.name()
                ),
            });
        }
        let conn = Connection::open(path).map_err(db_err(path))?;
        configure(&conn, path)?;
        conn.execute_batch(SCHEMA).map_err(db_err(path))?;
        let meta = [
            ("format", "3".to_string()),
            ("package", opts.package.clone()),
            ("dim", opts.dim.to_string()),
            (
                "states",
                serde_json::to_string(&opts.states).unwrap_or_default(),
            ),
            ("rerank", opts.rerank.name().to_string()),
            ("ann", serde_json::to_string(&opts.ann).unwrap_or_default()),
            ("uid", random_uid()),
        ];
        for (k, v) in meta {
            conn.execute("INSERT INTO meta VALUES (?1, ?2)", params![k, v])
                .map_err(db_err(path))?;
        }
        drop(conn);
        Self::open(path)
    }

    /// Opens an index for reading and writing. A format-1/2 file is migrated first (the old file
    /// is kept as `<index>.format2`).
    pub fn open(path: &Path) -> Result<Store> {
        Self::open_with(path, false)
    }

    /// Opens an index for searching only: nothing is written (a format-2 file is refused with
    /// how to migrate it), and the saved graph is memory-mapped when no later change is pending.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        Self::open_with(path, true)
    }

    /// Opens the database only, read-only and without the graph (reading entries and states).
    pub fn open_entries(path: &Path) -> Result<Store> {
        if !is_store(path) {
            return Err(IndexError::NotAnIndex { path: path.into() });
        }
        Self::open_with_graph(path, true, false)
    }

    fn open_with(path: &Path, read_only: bool) -> Result<Store> {
        Self::open_with_graph(path, read_only, true)
    }

    fn open_with_graph(path: &Path, read_only: bool, graph: bool) -> Result<Store> {
        let meta = std::fs::metadata(path).map_err(crate::io("reading index", path))?;
        if !meta.is_file() {
            return Err(IndexError::NotAnIndex { path: path.into() });
        }
        if !is_store(path) {
            if read_only {
                let old = crate::Index::read(path)?;
                drop(old);
                return Err(IndexError::OldFormat { path: path.into() });
            }
            crate::migrate(path)?;
        }
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let writer = Connection::open_with_flags(path, flags).map_err(db_err(path))?;
        if read_only {
            writer
                .busy_timeout(std::time::Duration::from_secs(30))
                .map_err(db_err(path))?;
        } else {
            configure(&writer, path)?;
        }
        let get = |k: &str| -> Result<String> {
            writer
                .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .map_err(|e| IndexError::Header {
                    path: path.into(),
                    message: format!("meta {k}: {e}"),
                })
        };
        let bad = |m: String| IndexError::Header {
            path: path.into(),
            message: m,
        };
        if get("format")? != "3" {
            return Err(bad("unknown format".into()));
        }
        let package = get("package")?;
        let dim: usize = get("dim")?.parse().map_err(|e| bad(format!("dim: {e}")))?;
        let states: Option<StateShape> =
            serde_json::from_str(&get("states")?).map_err(|e| bad(format!("states: {e}")))?;
        if let Some(s) = states
            && s.tokens.checked_mul(s.width).is_none_or(|n| n == 0)
        {
            return Err(bad(format!(
                "rerank state shape {}x{} is not usable",
                s.tokens, s.width
            )));
        }
        let rerank: RerankStates = get("rerank")?.parse().map_err(bad)?;
        let ann_storage: AnnStorage =
            serde_json::from_str(&get("ann")?).map_err(|e| bad(format!("ann: {e}")))?;
        let uid = get("uid")?;
        if dim == 0 || dim > 65_536 {
            return Err(bad(format!("embedding width {dim}")));
        }
        let store = Store {
            path: path.to_path_buf(),
            package,
            dim,
            states,
            rerank,
            ann_storage,
            uid,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            ann: RwLock::new(new_ann(path, dim, ann_storage)?),
            search_slots: SearchSlots::new(),
            applied: AtomicI64::new(0),
            saved: AtomicI64::new(0),
            max_vectors: AtomicI64::new(1),
            entries: AtomicI64::new(0),
            exact_below: EXACT_BELOW,
            read_only,
        };
        let entries = store.with_reader(|c| {
            c.query_row("SELECT COUNT(*) FROM entries", [], |r| r.get::<_, i64>(0))
                .map_err(db_err(&store.path))
        })?;
        store.entries.store(entries, Ordering::SeqCst);
        if graph {
            store.load_ann()?;
        }
        Ok(store)
    }

    /// Refuses an index made by another package or whose embeddings have another width.
    pub fn check_package(&self, pkg: &blip_package::Package) -> Result<()> {
        let expected = crate::image_embedding_width(pkg)?;
        if self.dim != expected && !self.is_empty()? {
            return Err(IndexError::WidthMismatch {
                path: self.path.clone(),
                package: pkg.dir.clone(),
                index: self.dim,
                expected,
            });
        }
        if self.package != crate::Index::fingerprint(pkg) {
            return Err(IndexError::OtherPackage {
                path: self.path.clone(),
                package: pkg.dir.clone(),
            });
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ann_read(&self) -> std::sync::RwLockReadGuard<'_, usearch::Index> {
        self.ann.read().unwrap_or_else(|p| p.into_inner())
    }

    fn ann_write(&self) -> std::sync::RwLockWriteGuard<'_, usearch::Index> {
        self.ann.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection for reading (pooled; WAL readers see the last committed state).
    fn with_reader<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(db_err(&self.path))?;
                c.busy_timeout(std::time::Duration::from_secs(30))
                    .map_err(db_err(&self.path))?;
                c.pragma_update(None, "cache_size", PAGE_CACHE_KIB)
                    .map_err(db_err(&self.path))?;
                c
            }
        };
        let out = f(&mut conn);
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        // A burst of concurrent readers must not leave as many connections (each with its own
        // page cache) behind: the server's soak grew 10 % with the pool unbounded.
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    fn sidecar(&self) -> PathBuf {
        crate::Index::sidecar(&self.path)
    }

    fn ann_files(&self) -> Vec<(i64, PathBuf)> {
        let prefix = format!("ann-{}-", self.uid);
        let mut out: Vec<(i64, PathBuf)> = std::fs::read_dir(self.sidecar())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let seq = name
                    .strip_prefix(&prefix)?
                    .strip_suffix(".usearch")?
                    .parse()
                    .ok()?;
                Some((seq, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// The graph: the newest saved file plus the changes logged after it, or built from the rows.
    fn load_ann(&self) -> Result<()> {
        // The log's last number survives its trimming (AUTOINCREMENT keeps it in sqlite_sequence).
        let last_seq: i64 = self
            .lock_writer()
            .query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(db_err(&self.path))?;
        let max_vectors: i64 = self
            .lock_writer()
            .query_row(
                "SELECT COALESCE(MAX(length(vectors)), 0) FROM entries",
                [],
                |r| r.get(0),
            )
            .map_err(db_err(&self.path))?;
        self.max_vectors.store(
            (max_vectors / (self.dim as i64 * 4)).max(1),
            Ordering::SeqCst,
        );
        let mut loaded = None;
        for (seq, file) in self.ann_files().into_iter().rev() {
            if seq > last_seq {
                continue;
            }
            let Some(name) = file.to_str() else { continue };
            let ix = new_ann(&self.path, self.dim, self.ann_storage)?;
            // A read-only opener with nothing to replay maps the file instead of reading it.
            let ok = if self.read_only && seq == last_seq {
                ix.view(name).is_ok()
            } else {
                ix.load(name).is_ok()
            };
            if ok && ix.dimensions() == self.dim {
                // Loading replaced the graph's limits with the file's.
                reserve_search_threads(&ix, &self.path)?;
                loaded = Some((seq, ix));
                break;
            }
        }
        let (from, ix) = match loaded {
            Some((seq, ix)) => (seq, ix),
            None => {
                let ix = new_ann(&self.path, self.dim, self.ann_storage)?;
                self.rebuild_into(&ix)?;
                (last_seq, ix)
            }
        };
        *self.ann_write() = ix;
        self.saved.store(from, Ordering::SeqCst);
        self.applied.store(from, Ordering::SeqCst);
        if from < last_seq {
            self.replay(from)?;
        }
        Ok(())
    }

    /// Adds every stored vector to `ix` (two threads).
    fn rebuild_into(&self, ix: &usearch::Index) -> Result<()> {
        let rows: Vec<(u64, Vec<f32>)> = self.with_reader(|c| {
            let mut st = c
                .prepare("SELECT key, vectors FROM entries")
                .map_err(db_err(&self.path))?;
            let rows = st
                .query_map([], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(db_err(&self.path))?;
            rows.map(|r| r.map(|(k, b)| (k, bytes_f32(&b))))
                .collect::<std::result::Result<_, _>>()
                .map_err(db_err(&self.path))
        })?;
        let total: usize = rows.iter().map(|(_, v)| v.len() / self.dim).sum();
        let threads = 2;
        ix.reserve_capacity_and_threads(total.max(16), threads)
            .map_err(ann_err(&self.path))?;
        let failed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (rows, failed) = (&rows, &failed);
                s.spawn(move || {
                    for (key, vectors) in rows.iter().skip(t).step_by(threads) {
                        for v in vectors.chunks_exact(self.dim) {
                            if ix.add(*key, v).is_err() {
                                failed.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                });
            }
        });
        if failed.load(Ordering::SeqCst) {
            return Err(IndexError::Database {
                path: self.path.clone(),
                message: "ANN graph: an add failed while rebuilding".into(),
            });
        }
        Ok(())
    }

    /// Applies the logged changes after `from` to the graph.
    fn replay(&self, from: i64) -> Result<()> {
        let changes: Vec<(i64, u64, i64, Option<Vec<u8>>)> = self.with_reader(|c| {
            let mut st = c
                .prepare(
                    "SELECT log.seq, log.key, log.op, entries.vectors FROM log
                     LEFT JOIN entries ON entries.key = log.key WHERE log.seq > ?1 ORDER BY log.seq",
                )
                .map_err(db_err(&self.path))?;
            let rows = st
                .query_map([from], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                    ))
                })
                .map_err(db_err(&self.path))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(db_err(&self.path))
        })?;
        let ix = self.ann_write();
        for (seq, key, op, vectors) in changes {
            if op == 0 {
                if ix.contains(key) {
                    ix.remove(key).map_err(ann_err(&self.path))?;
                }
            } else if let Some(b) = vectors
                && !ix.contains(key)
            {
                let v = bytes_f32(&b);
                Self::grow(&ix, v.len() / self.dim, &self.path)?;
                for row in v.chunks_exact(self.dim) {
                    ix.add(key, row).map_err(ann_err(&self.path))?;
                }
            }
            self.applied.store(seq, Ordering::SeqCst);
        }
        Ok(())
    }

    fn grow(ix: &usearch::Index, more: usize, path: &Path) -> Result<()> {
        if ix.size() + more > ix.capacity() {
            let want = (ix.capacity() * 2).max(ix.size() + more).max(1024);
            ix.reserve(want).map_err(ann_err(path))?;
        }
        Ok(())
    }

    fn check_new(&self, e: &NewEntry) -> Result<()> {
        if e.id.is_empty() || e.id.len() > 256 {
            return Err(IndexError::BadId(e.id.clone()));
        }
        if e.vectors.is_empty() || !e.vectors.len().is_multiple_of(self.dim) {
            return Err(IndexError::EmbeddingWidth {
                id: e.id.clone(),
                got: e.vectors.len(),
                expected: self.dim,
            });
        }
        if !e.vectors.iter().all(|v| v.is_finite()) {
            return Err(IndexError::BadEntry {
                path: self.path.clone(),
                id: e.id.clone(),
                problem: "the embedding holds a non-finite value".into(),
            });
        }
        if self.rerank != RerankStates::None {
            let shape = self
                .states
                .ok_or_else(|| IndexError::NoStates { id: e.id.clone() })?;
            match &e.states {
                None => return Err(IndexError::NoStates { id: e.id.clone() }),
                Some(s) if s.len() != shape.values() => {
                    return Err(IndexError::StateShape {
                        id: e.id.clone(),
                        got: s.len(),
                        tokens: shape.tokens,
                        width: shape.width,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Adds entries, each in the one transaction (all of them or none); per entry the outcome
    /// (a repeated id or a bad entry is refused alone). Returns when every added entry is on disk.
    pub fn add(&self, entries: Vec<NewEntry>) -> Result<Vec<Result<()>>> {
        if self.read_only {
            return Err(IndexError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let mut conn = self.lock_writer();
        let outcomes = self.add_locked(&mut conn, entries)?;
        drop(conn);
        self.maybe_checkpoint()?;
        Ok(outcomes)
    }

    /// Adds entries with their uploaded image files: each image is stored under the sidecar
    /// (content-addressed, see [`crate::Index::store_image`]) and becomes its entry's path and
    /// stamp, all while changes are held off — so a concurrent [`Store::remove`] of another
    /// entry with the same image cannot unlink the file between its write and this commit. An
    /// image whose entry is refused is removed again unless another entry names it.
    pub fn add_uploads(&self, uploads: Vec<Upload>) -> Result<Vec<Result<()>>> {
        if self.read_only {
            return Err(IndexError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let mut conn = self.lock_writer();
        let mut entries = Vec::with_capacity(uploads.len());
        let mut stored = Vec::with_capacity(uploads.len());
        // Images of entries that end up not added are removed again unless another entry names
        // them: a refused id, or every one of them when a write or the transaction fails.
        let unreferenced = |conn: &Connection, files: &[PathBuf]| -> Result<()> {
            for file in files {
                if !Self::names_path(conn, &self.path, file)? {
                    let _ = std::fs::remove_file(file);
                }
            }
            Ok(())
        };
        for u in uploads {
            let written = crate::Index::store_image(&self.path, &u.bytes, &u.extension)
                .and_then(|file| Ok((Stamp::of(&file)?, file)));
            let (stamp, file) = match written {
                Ok(w) => w,
                Err(e) => {
                    unreferenced(&conn, &stored)?;
                    return Err(e);
                }
            };
            stored.push(file.clone());
            entries.push(NewEntry {
                path: file,
                stamp,
                ..u.entry
            });
        }
        let outcomes = match self.add_locked(&mut conn, entries) {
            Ok(o) => o,
            Err(e) => {
                unreferenced(&conn, &stored)?;
                return Err(e);
            }
        };
        let refused: Vec<PathBuf> = stored
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_err())
            .map(|(f, _)| f.clone())
            .collect();
        unreferenced(&conn, &refused)?;
        drop(conn);
        self.maybe_checkpoint()?;
        Ok(outcomes)
    }

    fn names_path(conn: &Connection, db: &Path, file: &Path) -> Result<bool> {
        conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM entries WHERE path = ?1)",
            [file.to_string_lossy()],
            |r| r.get(0),
        )
        .map_err(db_err(db))
    }

    fn add_locked(&self, conn: &mut Connection, entries: Vec<NewEntry>) -> Result<Vec<Result<()>>> {
        let tx = conn.transaction().map_err(db_err(&self.path))?;
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut added: Vec<(u64, i64, Vec<f32>)> = Vec::new();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO entries(id, path, size, mtime_ns, metadata, vectors)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(db_err(&self.path))?;
            let mut state = tx
                .prepare_cached("INSERT INTO states(key, data) VALUES (?1, ?2)")
                .map_err(db_err(&self.path))?;
            let mut log = tx
                .prepare_cached("INSERT INTO log(key, op) VALUES (?1, 1)")
                .map_err(db_err(&self.path))?;
            for e in entries {
                if let Err(err) = self.check_new(&e) {
                    outcomes.push(Err(err));
                    continue;
                }
                let meta = e
                    .metadata
                    .as_ref()
                    .map(|m| serde_json::to_string(m).unwrap_or_default());
                let inserted = insert.execute(params![
                    e.id,
                    e.path.to_string_lossy(),
                    e.stamp.size as i64,
                    e.stamp.mtime_ns.to_string(),
                    meta,
                    f32_bytes(&e.vectors)
                ]);
                match inserted {
                    Err(rusqlite::Error::SqliteFailure(f, _))
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        outcomes.push(Err(IndexError::DuplicateId(e.id)));
                        continue;
                    }
                    Err(err) => return Err(db_err(&self.path)(err)),
                    Ok(_) => {}
                }
                let key = tx.last_insert_rowid();
                if let (Some(shape), Some(s)) = (self.states, &e.states)
                    && self.rerank != RerankStates::None
                {
                    state
                        .execute(params![key, encode_states(self.rerank, shape, s)])
                        .map_err(db_err(&self.path))?;
                }
                log.execute([key]).map_err(db_err(&self.path))?;
                let seq = tx.last_insert_rowid();
                added.push((key as u64, seq, e.vectors));
                outcomes.push(Ok(()));
            }
        }
        tx.commit().map_err(db_err(&self.path))?;
        self.entries.fetch_add(added.len() as i64, Ordering::SeqCst);
        // Committed: the graph follows (a crash from here on is repaired by the replay).
        let ix = self.ann_write();
        for (key, seq, vectors) in added {
            let n = vectors.len() / self.dim;
            Self::grow(&ix, n, &self.path)?;
            for row in vectors.chunks_exact(self.dim) {
                ix.add(key, row).map_err(ann_err(&self.path))?;
            }
            self.max_vectors.fetch_max(n as i64, Ordering::SeqCst);
            self.applied.store(seq, Ordering::SeqCst);
        }
        drop(ix);
        Ok(outcomes)
    }

    /// Removes the entry `id` (its states with it); its uploaded image file under the sidecar
    /// goes too when no other entry names it. `None` when there is no such entry.
    pub fn remove(&self, id: &str) -> Result<Option<Entry>> {
        if self.read_only {
            return Err(IndexError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let mut conn = self.lock_writer();
        let tx = conn.transaction().map_err(db_err(&self.path))?;
        let Some((key, entry)) = Self::entry_where(&tx, &self.path, "id = ?1", id)? else {
            return Ok(None);
        };
        tx.execute("DELETE FROM entries WHERE key = ?1", [key as i64])
            .map_err(db_err(&self.path))?;
        tx.execute("DELETE FROM states WHERE key = ?1", [key as i64])
            .map_err(db_err(&self.path))?;
        tx.execute("INSERT INTO log(key, op) VALUES (?1, 0)", [key as i64])
            .map_err(db_err(&self.path))?;
        let seq = tx.last_insert_rowid();
        let shared: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM entries WHERE path = ?1)",
                [entry.path.to_string_lossy()],
                |r| r.get(0),
            )
            .map_err(db_err(&self.path))?;
        tx.commit().map_err(db_err(&self.path))?;
        self.entries.fetch_sub(1, Ordering::SeqCst);
        {
            let ix = self.ann_write();
            if ix.contains(key) {
                ix.remove(key).map_err(ann_err(&self.path))?;
            }
            self.applied.store(seq, Ordering::SeqCst);
        }
        // Under the writer lock: an upload of the same image (`add_uploads`) either committed
        // before this (then `shared`) or writes the file anew after.
        if !shared && entry.path.starts_with(self.sidecar().join("images")) {
            let _ = std::fs::remove_file(&entry.path);
        }
        drop(conn);
        self.maybe_checkpoint()?;
        Ok(Some(entry))
    }

    fn entry_where(
        c: &Connection,
        path: &Path,
        cond: &str,
        arg: impl rusqlite::ToSql,
    ) -> Result<Option<(u64, Entry)>> {
        let sql = format!(
            "SELECT key, id, path, size, mtime_ns, metadata, EXISTS(SELECT 1 FROM states WHERE states.key = entries.key) FROM entries WHERE {cond}"
        );
        c.query_row(&sql, [arg], |r| Ok(Self::row_entry(r)))
            .optional()
            .map_err(db_err(path))?
            .transpose()
            .map_err(db_err(path))
    }

    fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, Entry)> {
        let key: i64 = r.get(0)?;
        let meta: Option<String> = r.get(5)?;
        let has_state: bool = r.get(6)?;
        Ok((
            key as u64,
            Entry {
                id: r.get(1)?,
                path: PathBuf::from(r.get::<_, String>(2)?),
                stamp: Stamp {
                    size: r.get::<_, i64>(3)? as u64,
                    mtime_ns: r.get::<_, String>(4)?.parse().unwrap_or(0),
                },
                metadata: meta.and_then(|m| serde_json::from_str(&m).ok()),
                state: has_state.then(|| format!("key:{key}")),
            },
        ))
    }

    /// The entry with `id`.
    pub fn get(&self, id: &str) -> Result<Option<Entry>> {
        self.with_reader(|c| Ok(Self::entry_where(c, &self.path, "id = ?1", id)?.map(|(_, e)| e)))
    }

    pub fn contains(&self, id: &str) -> Result<bool> {
        Ok(self.get(id)?.is_some())
    }

    pub fn len(&self) -> Result<usize> {
        Ok(self.entries.load(Ordering::SeqCst).max(0) as usize)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Vectors in the ANN graph.
    pub fn vectors(&self) -> usize {
        self.ann_read().size()
    }

    /// Rows of the states table (tests: nothing is left behind by removals).
    pub fn state_rows(&self) -> Result<usize> {
        self.with_reader(|c| {
            c.query_row("SELECT COUNT(*) FROM states", [], |r| r.get::<_, i64>(0))
                .map(|n| n as usize)
                .map_err(db_err(&self.path))
        })
    }

    /// Every entry with its vectors, in insertion order, `page` rows at a time (export, the
    /// format-2 view).
    pub fn for_each(&self, mut f: impl FnMut(Stored) -> Result<()>) -> Result<()> {
        let mut after = 0i64;
        loop {
            let page: Vec<Stored> = self.with_reader(|c| {
                let mut st = c
                    .prepare_cached(
                        "SELECT key, id, path, size, mtime_ns, metadata,
                         EXISTS(SELECT 1 FROM states WHERE states.key = entries.key), vectors
                         FROM entries WHERE key > ?1 ORDER BY key LIMIT 4096",
                    )
                    .map_err(db_err(&self.path))?;
                let rows = st
                    .query_map([after], |r| {
                        let (key, entry) = Self::row_entry(r)?;
                        Ok(Stored {
                            key,
                            entry,
                            vectors: bytes_f32(&r.get::<_, Vec<u8>>(7)?),
                        })
                    })
                    .map_err(db_err(&self.path))?;
                rows.collect::<std::result::Result<_, _>>()
                    .map_err(db_err(&self.path))
            })?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.key as i64;
            for s in page {
                f(s)?;
            }
        }
    }

    /// Rerank states of the entries `keys`, as f32 `keys.len() × tokens × width`.
    pub fn read_states(&self, ids: &[&str]) -> Result<Vec<f32>> {
        let shape = self.states;
        self.with_reader(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT states.data FROM entries JOIN states ON states.key = entries.key WHERE entries.id = ?1",
                )
                .map_err(db_err(&self.path))?;
            let mut out = Vec::new();
            for id in ids {
                let data: Option<Vec<u8>> = st
                    .query_row([id], |r| r.get(0))
                    .optional()
                    .map_err(db_err(&self.path))?;
                let v = shape
                    .zip(data)
                    .and_then(|(s, d)| decode_states(self.rerank, s, &d))
                    .ok_or_else(|| IndexError::NoStates {
                        id: id.to_string(),
                    })?;
                out.extend(v);
            }
            Ok(out)
        })
    }

    /// The best `want` entries for the unit query `q` by max-similarity over their vectors,
    /// best first: candidates from the graph (exact below [`Store::exact_below`] vectors),
    /// re-scored with the stored f32 vectors; each with its score, the index of its best vector
    /// and, for the first `with_states`, its rerank states — all read in one snapshot, so an
    /// entry removed meanwhile is either wholly there or left out.
    pub fn nearest(&self, q: &[f32], want: usize, with_states: usize) -> Result<Vec<Near>> {
        if q.len() != self.dim {
            return Err(IndexError::EmbeddingWidth {
                id: "query".into(),
                got: q.len(),
                expected: self.dim,
            });
        }
        let per = self.max_vectors.load(Ordering::SeqCst).max(1) as usize;
        // Twice the wanted entries: the graph's quantised scores may swap near ties.
        let count = (want * 2 + 8).saturating_mul(per);
        let keys: Vec<u64> = {
            let _slot = self.search_slots.take();
            let ix = self.ann_read();
            let size = ix.size();
            if size == 0 {
                return Ok(Vec::new());
            }
            let count = count.min(size);
            let m = if size < self.exact_below {
                ix.exact_search(q, count)
            } else {
                // Breadth: twice the hits asked for, at least the measured default.
                let ef = (4 * count).max(EXPANSION_SEARCH);
                if ix.expansion_search() != ef {
                    ix.change_expansion_search(ef);
                }
                ix.search(q, count)
            }
            .map_err(ann_err(&self.path))?;
            let mut seen = std::collections::HashSet::new();
            m.keys.into_iter().filter(|k| seen.insert(*k)).collect()
        };
        let dim = self.dim;
        self.with_reader(|c| {
            let tx = c.transaction().map_err(db_err(&self.path))?;
            let mut scored: Vec<Near> = Vec::with_capacity(keys.len());
            {
                let mut st = tx
                    .prepare_cached(
                        "SELECT key, id, path, size, mtime_ns, metadata,
                         EXISTS(SELECT 1 FROM states WHERE states.key = entries.key), vectors
                         FROM entries WHERE key = ?1",
                    )
                    .map_err(db_err(&self.path))?;
                for k in &keys {
                    // A key whose entry was removed since the graph answered is left out.
                    let row = st
                        .query_row([*k as i64], |r| {
                            let (key, entry) = Self::row_entry(r)?;
                            Ok(Stored {
                                key,
                                entry,
                                vectors: bytes_f32(&r.get::<_, Vec<u8>>(7)?),
                            })
                        })
                        .optional()
                        .map_err(db_err(&self.path))?;
                    if let Some(s) = row {
                        let (best, score) = s
                            .vectors
                            .chunks_exact(dim)
                            .map(|v| v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
                            .enumerate()
                            .fold(
                                (0, f32::NEG_INFINITY),
                                |acc, (i, x)| {
                                    if x > acc.1 { (i, x) } else { acc }
                                },
                            );
                        scored.push(Near {
                            stored: s,
                            score,
                            best,
                            states: None,
                        });
                    }
                }
            }
            scored.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then(a.stored.key.cmp(&b.stored.key))
            });
            scored.truncate(want);
            if let Some(shape) = self.states
                && self.rerank != RerankStates::None
            {
                let mut st = tx
                    .prepare_cached("SELECT data FROM states WHERE key = ?1")
                    .map_err(db_err(&self.path))?;
                for n in scored.iter_mut().take(with_states) {
                    let data: Option<Vec<u8>> = st
                        .query_row([n.stored.key as i64], |r| r.get(0))
                        .optional()
                        .map_err(db_err(&self.path))?;
                    n.states = data.and_then(|d| decode_states(self.rerank, shape, &d));
                }
            }
            Ok(scored)
        })
    }

    /// Puts an index built at a temporary path in place of `dest` (its graph file moved to
    /// `dest`'s sidecar, then the database renamed over `dest`): a rebuild is all or nothing.
    pub fn install(self, dest: &Path) -> Result<()> {
        self.install_with(dest, true)
    }

    /// A new store at a hidden temporary path beside `dest` (`.NAME.SUFFIX`, anything left there
    /// by an earlier run removed), to fill and then [`Store::install`] over `dest`, or
    /// [`Store::discard`]: readers of `dest` never see it half built.
    pub fn create_staged(dest: &Path, suffix: &str, opts: &StoreOptions) -> Result<Store> {
        let tmp = dest.with_file_name(format!(
            ".{}.{suffix}",
            dest.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        remove_database(&tmp);
        Store::create(&tmp, opts)
    }

    /// Removes a store that is not to be installed: its database, journal and sidecar.
    pub fn discard(self) {
        let path = self.path.clone();
        drop(self);
        remove_database(&path);
        let _ = std::fs::remove_dir_all(crate::Index::sidecar(&path));
    }

    /// As [`Store::install`], leaving the sidecar's format-2 state files (a migration keeps
    /// them for the `.format2` backup).
    pub fn install_keeping_states(self, dest: &Path) -> Result<()> {
        self.install_with(dest, false)
    }

    fn install_with(self, dest: &Path, drop_states: bool) -> Result<()> {
        self.checkpoint()?;
        let graphs = self.ann_files();
        let from = self.path.clone();
        // One self-contained file: the readers closed, the WAL folded in and the journal mode
        // back to DELETE (a `-wal` file left beside the temporary name would not follow it).
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.lock_writer()
            .pragma_update(None, "journal_mode", "DELETE")
            .map_err(db_err(&from))?;
        drop(self);
        let side = crate::Index::sidecar(dest);
        std::fs::create_dir_all(&side).map_err(crate::io("creating", &side))?;
        for (_, g) in graphs {
            if let Some(name) = g.file_name() {
                let to = side.join(name);
                std::fs::rename(&g, &to).map_err(crate::io("writing", &to))?;
            }
        }
        // A journal left by the database this replaces must not be replayed into the new one.
        for ext in ["-wal", "-shm"] {
            let mut p = dest.as_os_str().to_owned();
            p.push(ext);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        std::fs::rename(&from, dest).map_err(crate::io("writing", dest))?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        let _ = std::fs::remove_dir_all(crate::Index::sidecar(&from));
        if drop_states {
            // Format-2 state files of what was there before.
            let _ = std::fs::remove_dir_all(side.join("states"));
        }
        Ok(())
    }

    /// Saves the graph when enough changes piled up since the last save (a replay on open
    /// stays short).
    fn maybe_checkpoint(&self) -> Result<()> {
        let pending = self.applied.load(Ordering::SeqCst) - self.saved.load(Ordering::SeqCst);
        let size = self.vectors() as i64;
        if pending >= (size / 8).max(1024) {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Saves the graph (temp file, then rename) and trims the log it holds. Changes wait
    /// meanwhile; searches go on.
    pub fn checkpoint(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let conn = self.lock_writer();
        let seq = self.applied.load(Ordering::SeqCst);
        if seq == self.saved.load(Ordering::SeqCst) && !self.ann_files().is_empty() {
            return Ok(());
        }
        let side = self.sidecar();
        std::fs::create_dir_all(&side).map_err(crate::io("creating", &side))?;
        let file = side.join(format!("ann-{}-{seq}.usearch", self.uid));
        let tmp = crate::partial_path(&file);
        let tmp_name = tmp.to_str().ok_or_else(|| IndexError::Database {
            path: self.path.clone(),
            message: "the sidecar path is not UTF-8".into(),
        })?;
        self.ann_read()
            .save(tmp_name)
            .map_err(ann_err(&self.path))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(crate::io("writing", &tmp))?;
        std::fs::rename(&tmp, &file).map_err(crate::io("writing", &file))?;
        if let Ok(d) = std::fs::File::open(&side) {
            let _ = d.sync_all();
        }
        self.saved.store(seq, Ordering::SeqCst);
        conn.execute("DELETE FROM log WHERE seq <= ?1", [seq])
            .map_err(db_err(&self.path))?;
        // Older graphs, and those of an index this path held before (another uid), go.
        for e in std::fs::read_dir(&side).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("ann-") && name.ends_with(".usearch") && e.path() != file {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort: a graph saved at close makes the next open fast.
        let _ = self.checkpoint();
        // Readers first: the writer, closing last, folds the WAL into the database.
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
