//! The Rust side of `scripts/bench-ann.sh`.
//!
//! `bench-ann gen DIR N QUERIES DIM CENTRES SIGMA SEED` writes the synthetic data set: `CENTRES`
//! centres drawn uniformly on the unit sphere (normalised Gaussians), each vector a centre picked
//! uniformly plus isotropic Gaussian noise of total norm ≈ `SIGMA`, normalised again; base vectors,
//! held-out queries (same distribution, never indexed) and 1000 extra vectors for the add
//! throughput, as little-endian f32 rows (`base.f32`, `queries.f32`, `extra.f32`).
//!
//! `bench-ann run DIR ENGINE THREADS` measures one engine (`exact`, `usearch-f32`, `usearch-f16`,
//! `usearch-i8`, `hnsw_rs`) against `DIR/gt.i32` (the exact top-10 that the Python side computed
//! with faiss's IndexFlatIP) and prints one JSON object.
//!
//! `bench-ann store INDEX N PACKAGE CENTRES SEED` builds a blip-index store for a retrieval
//! PACKAGE with N synthetic entries (clustered unit vectors of the package's embedding width, as
//! above, and Gaussian vision states stored as int8), in transactions of 4096, and prints its
//! build time and size: the index `scripts/bench-ann-serve.sh` searches through `serve`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

const K: usize = 10;
const EXTRA: usize = 1000;
/// Search breadths tried in order; the first that reaches TARGET recall is reported.
const EFS: [usize; 9] = [16, 24, 32, 48, 64, 96, 128, 192, 256];
const TARGET: f64 = 0.97;
/// Links per node on the upper layers (2M on the base layer) and efConstruction, the same for
/// every engine: usearch's connectivity, hnsw_rs's max_nb_connection, faiss's M.
const M: usize = 16;
const EF_CONSTRUCTION: usize = 64;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

fn write_f32(path: &Path, data: &[f32]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for v in data {
        f.write_all(&v.to_le_bytes()).expect("write");
    }
}

fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn generate(dir: &Path, n: usize, q: usize, dim: usize, centres: usize, sigma: f32, seed: u64) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut rng = Rng(seed);
    let mut c = vec![0f32; centres * dim];
    for row in c.chunks_mut(dim) {
        row.iter_mut().for_each(|x| *x = rng.gauss());
        normalize(row);
    }
    let scale = sigma / (dim as f32).sqrt();
    let mut draw = |count: usize| {
        let mut out = vec![0f32; count * dim];
        for row in out.chunks_mut(dim) {
            let k = (rng.next() % centres as u64) as usize;
            for (j, x) in row.iter_mut().enumerate() {
                *x = c[k * dim + j] + scale * rng.gauss();
            }
            normalize(row);
        }
        out
    };
    let base = draw(n);
    let queries = draw(q);
    let extra = draw(EXTRA);
    write_f32(&dir.join("base.f32"), &base);
    write_f32(&dir.join("queries.f32"), &queries);
    write_f32(&dir.join("extra.f32"), &extra);
    let meta = serde_json::json!({"n": n, "queries": q, "dim": dim, "centres": centres,
        "sigma": sigma, "seed": seed, "extra": EXTRA});
    std::fs::write(dir.join("meta.json"), meta.to_string()).expect("meta");
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn dir_size(p: &Path) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|l| l.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight accumulators so the compiler vectorises.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

fn exact_top(base: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<u64> {
    let mut best: Vec<(f32, u64)> = Vec::with_capacity(k + 1);
    for (i, row) in base.chunks_exact(dim).enumerate() {
        let s = dot(row, q);
        if best.len() < k || s > best[best.len() - 1].0 {
            let at = best.partition_point(|b| b.0 >= s);
            best.insert(at, (s, i as u64));
            best.truncate(k);
        }
    }
    best.into_iter().map(|b| b.1).collect()
}

enum Engine {
    Exact(Vec<f32>, usize),
    Usearch(usearch::Index),
    Hnsw(hnsw_rs::hnsw::Hnsw<'static, f32, hnsw_rs::prelude::DistDot>),
}

impl Engine {
    fn search(&self, q: &[f32], ef: usize) -> Vec<u64> {
        match self {
            Engine::Exact(base, dim) => exact_top(base, *dim, q, K),
            Engine::Usearch(ix) => ix.search(q, K).expect("search").keys,
            Engine::Hnsw(h) => h.search(q, K, ef).iter().map(|n| n.d_id as u64).collect(),
        }
    }
    fn set_ef(&self, ef: usize) {
        if let Engine::Usearch(ix) = self {
            ix.change_expansion_search(ef);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(dir: &Path, engine: &str, threads: usize) {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).expect("meta"))
            .expect("meta json");
    let dim = meta["dim"].as_u64().expect("dim") as usize;
    let base = read_f32(&dir.join("base.f32"));
    let mut queries = read_f32(&dir.join("queries.f32"));
    let extra = read_f32(&dir.join("extra.f32"));
    let gt: Vec<u64> = std::fs::read(dir.join("gt.i32"))
        .expect("gt.i32 (run the Python side first)")
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64)
        .collect();
    let n = base.len() / dim;
    // Exact search at 10^6 costs ~0.1 s a query: it answers a sample.
    if engine == "exact" {
        let keep = (queries.len() / dim).min(if n > 200_000 { 200 } else { 1000 });
        queries.truncate(keep * dim);
    }
    let nq = queries.len() / dim;
    let rss0 = rss_bytes();
    let t = Instant::now();
    let eng = match engine {
        "exact" => Engine::Exact(base.clone(), dim),
        e if e.starts_with("usearch-") => {
            let quantization = match e {
                "usearch-f32" => usearch::ScalarKind::F32,
                "usearch-f16" => usearch::ScalarKind::F16,
                "usearch-i8" => usearch::ScalarKind::I8,
                _ => panic!("unknown engine {e}"),
            };
            let ix = usearch::Index::new(&usearch::IndexOptions {
                dimensions: dim,
                metric: usearch::MetricKind::IP,
                quantization,
                connectivity: M,
                expansion_add: EF_CONSTRUCTION,
                expansion_search: 64,
                multi: false,
            })
            .expect("usearch index");
            ix.reserve_capacity_and_threads(n + EXTRA, threads)
                .expect("reserve");
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (ix, base) = (&ix, &base);
                    s.spawn(move || {
                        for i in (t..n).step_by(threads) {
                            ix.add(i as u64, &base[i * dim..(i + 1) * dim])
                                .expect("add");
                        }
                    });
                }
            });
            Engine::Usearch(ix)
        }
        "hnsw_rs" => {
            let h = hnsw_rs::hnsw::Hnsw::<f32, hnsw_rs::prelude::DistDot>::new(
                M,
                n + EXTRA,
                16,
                EF_CONSTRUCTION,
                hnsw_rs::prelude::DistDot {},
            );
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (h, base) = (&h, &base);
                    s.spawn(move || {
                        for i in (t..n).step_by(threads) {
                            h.insert_slice((&base[i * dim..(i + 1) * dim], i));
                        }
                    });
                }
            });
            Engine::Hnsw(h)
        }
        e => panic!("unknown engine {e}"),
    };
    let build_s = t.elapsed().as_secs_f64();
    let ram = rss_bytes().saturating_sub(rss0);
    let disk = {
        let p = dir.join(format!("saved-{engine}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        match &eng {
            Engine::Exact(b, _) => write_f32(&p.join("base.f32"), b),
            Engine::Usearch(ix) => ix
                .save(p.join("index.usearch").to_str().expect("utf-8"))
                .expect("save"),
            Engine::Hnsw(h) => {
                use hnsw_rs::api::AnnT;
                h.file_dump(&p, "index").expect("dump");
            }
        }
        let size = dir_size(&p);
        let _ = std::fs::remove_dir_all(&p);
        size
    };
    let recall_of = |found: &[Vec<u64>]| {
        let hit: usize = found
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.iter()
                    .filter(|k| gt[i * K..(i + 1) * K].contains(k))
                    .count()
            })
            .sum();
        hit as f64 / (found.len() * K) as f64
    };
    let mut sweep = Vec::new();
    let efs: &[usize] = if engine == "exact" { &[0] } else { &EFS };
    let mut chosen = None;
    for &ef in efs {
        eng.set_ef(ef);
        let mut lat = Vec::with_capacity(nq);
        let mut found = Vec::with_capacity(nq);
        let t = Instant::now();
        for q in queries.chunks_exact(dim) {
            let t = Instant::now();
            found.push(eng.search(q, ef));
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total = t.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let recall = recall_of(&found);
        let row = serde_json::json!({"ef_search": ef, "recall_at_10": recall,
            "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
            "qps_1": nq as f64 / total});
        sweep.push(row.clone());
        if recall >= TARGET || ef == *efs.last().expect("efs") {
            chosen = Some((ef, row));
            break;
        }
    }
    let (ef, mut row) = chosen.expect("a breadth");
    eng.set_ef(ef);
    let t = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (eng, queries) = (&eng, &queries);
            s.spawn(move || {
                for q in queries.chunks_exact(dim).skip(t).step_by(threads) {
                    std::hint::black_box(eng.search(q, ef));
                }
            });
        }
    });
    row[format!("qps_{threads}")] = (nq as f64 / t.elapsed().as_secs_f64()).into();
    // Throughput after the build, one thread: EXTRA adds, then EXTRA deletes.
    let (adds, deletes) = match &eng {
        Engine::Usearch(ix) => {
            let t = Instant::now();
            for (i, v) in extra.chunks_exact(dim).enumerate() {
                ix.add((n + i) as u64, v).expect("add");
            }
            let adds = EXTRA as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            for i in 0..EXTRA {
                ix.remove((i * (n / EXTRA)) as u64).expect("remove");
            }
            (Some(adds), Some(EXTRA as f64 / t.elapsed().as_secs_f64()))
        }
        Engine::Hnsw(h) => {
            let t = Instant::now();
            for (i, v) in extra.chunks_exact(dim).enumerate() {
                h.insert_slice((v, n + i));
            }
            // hnsw_rs has no removal: a deleted entry can only be filtered out at query time.
            (Some(EXTRA as f64 / t.elapsed().as_secs_f64()), None)
        }
        Engine::Exact(..) => (None, None),
    };
    let out = serde_json::json!({
        "engine": engine, "n": n, "dim": dim, "queries": nq, "threads": threads,
        "m": M, "ef_construction": EF_CONSTRUCTION,
        "build_s": build_s, "ram_bytes": ram, "disk_bytes": disk,
        "at_target": row, "sweep": sweep,
        "adds_per_s": adds, "deletes_per_s": deletes,
    });
    println!("{out}");
}

fn store(index: &Path, n: usize, package: &Path, centres: usize, seed: u64) {
    use blip_index::{AnnStorage, Index, NewEntry, RerankStates, Stamp, StateShape, Store};
    let pkg = blip_package::Package::open(package).expect("a retrieval package");
    let dim = blip_index::image_embedding_width(&pkg).expect("a retrieval package");
    let m = &pkg.manifest.model;
    let shape = StateShape {
        tokens: m.image_tokens,
        width: m.vision_hidden_size,
    };
    let store = Store::create(
        index,
        &blip_index::StoreOptions {
            package: Index::fingerprint(&pkg),
            dim,
            states: Some(shape),
            rerank: RerankStates::Int8,
            ann: AnnStorage::F16,
        },
    )
    .expect("a new index");
    let mut rng = Rng(seed);
    let centre: Vec<Vec<f32>> = (0..centres)
        .map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| rng.gauss()).collect();
            normalize(&mut c);
            c
        })
        .collect();
    let sigma = 0.75 / (dim as f32).sqrt();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<NewEntry> = (i..n.min(i + 4096))
            .map(|j| {
                let c = &centre[(rng.next() % centres as u64) as usize];
                let mut v: Vec<f32> = c.iter().map(|x| x + sigma * rng.gauss()).collect();
                normalize(&mut v);
                NewEntry {
                    id: format!("img{j:08}"),
                    path: format!("/synthetic/img{j:08}.png").into(),
                    stamp: Stamp {
                        size: 0,
                        mtime_ns: 0,
                    },
                    metadata: None,
                    vectors: v,
                    states: Some((0..shape.values()).map(|_| rng.gauss()).collect()),
                }
            })
            .collect();
        i += batch.len();
        for r in store.add(batch).expect("add") {
            r.expect("a new id");
        }
    }
    store.checkpoint().expect("saving the graph");
    let build_s = start.elapsed().as_secs_f64();
    drop(store);
    let side = Index::sidecar(index);
    let disk = dir_size(index) + dir_size(&side);
    println!(
        "{}",
        serde_json::json!({"entries": n, "dim": dim, "build_s": build_s, "disk_bytes": disk,
            "states": "int8", "state_shape": [shape.tokens, shape.width]})
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> &str {
        a.get(i)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("usage: see the header of tools/bench-ann/src/main.rs"))
    };
    let num = |i: usize| -> f64 { arg(i).parse().expect("a number") };
    match arg(1) {
        "gen" => generate(
            Path::new(arg(2)),
            num(3) as usize,
            num(4) as usize,
            num(5) as usize,
            num(6) as usize,
            num(7) as f32,
            num(8) as u64,
        ),
        "run" => run(Path::new(arg(2)), arg(3), num(4) as usize),
        "store" => store(
            Path::new(arg(2)),
            num(3) as usize,
            Path::new(arg(4)),
            num(5) as usize,
            num(6) as u64,
        ),
        other => panic!("unknown command {other}"),
    }
}
