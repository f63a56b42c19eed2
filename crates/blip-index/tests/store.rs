//! Format 3 (SQLite + usearch): crash safety, concurrency, migration from format 2, several
//! vectors per entry and recall, each against a brute-force or stored reference.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blip_index::{
    AnnStorage, Entry, Index, NewEntry, RerankStates, Stamp, StateShape, Store, StoreOptions,
};

const DIM: usize = 16;
const SHAPE: StateShape = StateShape {
    tokens: 3,
    width: 4,
};

/// A small deterministic generator (splitmix64), so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn gauss(&mut self) -> f32 {
        let u = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
    fn unit(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| self.gauss()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }
    /// `n` unit vectors around `centres` random centres (noise of norm ~0.6).
    fn clustered(&mut self, n: usize, centres: usize, dim: usize) -> Vec<Vec<f32>> {
        let c: Vec<Vec<f32>> = (0..centres).map(|_| self.unit(dim)).collect();
        (0..n)
            .map(|_| {
                let k = (self.next() % centres as u64) as usize;
                let noise = self.unit(dim);
                let mut v: Vec<f32> = c[k].iter().zip(&noise).map(|(a, b)| a + 0.6 * b).collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= n);
                v
            })
            .collect()
    }
}

fn options(dim: usize, rerank: RerankStates) -> StoreOptions {
    StoreOptions {
        package: "pkg".into(),
        dim,
        states: Some(SHAPE),
        rerank,
        ann: AnnStorage::F16,
    }
}

fn states_of(i: usize) -> Vec<f32> {
    (0..SHAPE.values())
        .map(|j| ((i * 7 + j) % 11) as f32 * 0.25 - 1.0)
        .collect()
}

fn new_entry(id: &str, vectors: Vec<f32>, i: usize) -> NewEntry {
    NewEntry {
        id: id.into(),
        path: PathBuf::from(format!("/photos/{id}.png")),
        stamp: Stamp {
            size: i as u64,
            mtime_ns: 7,
        },
        metadata: Some(serde_json::json!({"i": i})),
        vectors,
        states: Some(states_of(i)),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The brute-force max-similarity top-k: (entry index, score), best first.
fn brute_force(entries: &[Vec<Vec<f32>>], q: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut s: Vec<(usize, f32)> = entries
        .iter()
        .enumerate()
        .map(|(i, vs)| {
            (
                i,
                vs.iter()
                    .map(|v| dot(v, q))
                    .fold(f32::NEG_INFINITY, f32::max),
            )
        })
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    s.truncate(k);
    s
}

const CHILD: &str = "BLIP_STORE_CRASH_CHILD";

/// The child half of the crash test: adds entries one at a time, printing each id once its add
/// has returned (acknowledged), until killed.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let store = Store::open(Path::new(&path)).unwrap();
    let mut rng = Rng(99);
    let out = std::io::stdout();
    for i in 0.. {
        let id = format!("burst-{i}");
        let mut batch = vec![new_entry(&id, rng.unit(DIM), i)];
        // Every fifth add is a batch of three: a transaction of several entries.
        if i % 5 == 0 {
            batch.push(new_entry(&format!("{id}-b"), rng.unit(DIM), i + 1));
            batch.push(new_entry(&format!("{id}-c"), rng.unit(DIM), i + 2));
        }
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        for r in store.add(batch).unwrap() {
            r.unwrap();
        }
        // Removing an acknowledged entry is acknowledged too.
        if i % 7 == 3 {
            store.remove(&format!("burst-{}", i - 1)).unwrap().unwrap();
            let mut l = out.lock();
            use std::io::Write;
            writeln!(l, "removed burst-{}", i - 1).unwrap();
            l.flush().unwrap();
        }
        let mut l = out.lock();
        use std::io::Write;
        for id in ids {
            writeln!(l, "added {id}").unwrap();
        }
        l.flush().unwrap();
    }
}

#[cfg(unix)]
#[test]
fn sigkill_during_a_burst_of_adds_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx.blip");
    drop(Store::create(&path, &options(DIM, RerankStates::Int8)).unwrap());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut added = std::collections::BTreeSet::new();
    let mut removed = std::collections::BTreeSet::new();
    type Ids = std::collections::BTreeSet<String>;
    // libtest may print "test crash_child ... " before the child's first line.
    let record = |line: &str, added: &mut Ids, removed: &mut Ids| {
        if let Some((_, id)) = line.split_once("added ") {
            added.insert(id.to_string());
        } else if let Some((_, id)) = line.split_once("removed ") {
            removed.insert(id.to_string());
        }
    };
    // Let it get well into the burst (and past a few removals), then SIGKILL mid-write.
    while added.len() < 60 {
        let line = lines.next().expect("the child stopped early").unwrap();
        record(&line, &mut added, &mut removed);
    }
    child.kill().unwrap();
    // What it acknowledged before it died is still in the pipe.
    for line in lines.map_while(|l| l.ok()) {
        record(&line, &mut added, &mut removed);
    }
    child.wait().unwrap();
    assert!(!removed.is_empty());

    let store = Store::open(&path).expect("the index opens after SIGKILL");
    let mut rng = Rng(99);
    let mut checked = 0;
    for i in 0.. {
        let id = format!("burst-{i}");
        let v = rng.unit(DIM);
        let extra = if i % 5 == 0 {
            vec![
                (format!("{id}-b"), rng.unit(DIM)),
                (format!("{id}-c"), rng.unit(DIM)),
            ]
        } else {
            Vec::new()
        };
        if !added.contains(&id) {
            break;
        }
        for (id, v) in std::iter::once((id.clone(), v)).chain(extra) {
            let entry = store.get(&id).unwrap();
            if removed.contains(&id) {
                assert!(
                    entry.is_none(),
                    "{id} was removed (acknowledged) but is back"
                );
                continue;
            }
            let entry = entry.unwrap_or_else(|| panic!("acknowledged {id} is lost"));
            assert_eq!(entry.path, PathBuf::from(format!("/photos/{id}.png")));
            // Found by its own vector through the rebuilt or replayed graph, with its states.
            let near = store.nearest(&v, 1, 1).unwrap();
            assert_eq!(near[0].stored.entry.id, id);
            assert!((near[0].score - 1.0).abs() < 1e-5);
            let st = near[0].states.as_ref().expect("states");
            let want = states_of(
                i + usize::from(id.ends_with("-b")) + 2 * usize::from(id.ends_with("-c")),
            );
            let err = st
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 0.01, "{id}: int8 states off by {err}");
            checked += 1;
        }
    }
    assert!(checked >= 50, "{checked}");
    assert_eq!(
        store.len().unwrap(),
        store.vectors(),
        "rows and graph agree"
    );
    // The index takes changes again.
    store
        .add(vec![new_entry("after", Rng(5).unit(DIM), 1)])
        .unwrap()[0]
        .as_ref()
        .unwrap();
}

#[test]
fn concurrent_adds_deletes_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx.blip");
    let store = Arc::new(Store::create(&path, &options(DIM, RerankStates::F16)).unwrap());
    let mut rng = Rng(3);
    let base: Vec<Vec<f32>> = (0..200).map(|_| rng.unit(DIM)).collect();
    let batch = base
        .iter()
        .enumerate()
        .map(|(i, v)| new_entry(&format!("base-{i}"), v.clone(), i))
        .collect();
    assert!(store.add(batch).unwrap().iter().all(|r| r.is_ok()));
    std::thread::scope(|s| {
        for w in 0..3 {
            let store = store.clone();
            s.spawn(move || {
                let mut rng = Rng(100 + w);
                for n in 0..40 {
                    let id = format!("churn-{w}-{n}");
                    store.add(vec![new_entry(&id, rng.unit(DIM), n)]).unwrap()[0]
                        .as_ref()
                        .unwrap();
                    if n % 2 == 0 {
                        assert!(store.remove(&id).unwrap().is_some());
                    }
                }
            });
        }
        // Many more searching threads than cores (the store's search contexts): usearch
        // fails a search beyond its reserved contexts unless the store reserves enough and
        // queues the rest.
        for r in 0..40 {
            let (store, base) = (store.clone(), &base);
            s.spawn(move || {
                for n in 0..20 {
                    // A base entry is never touched: its own vector always finds it first.
                    let i = (r * 61 + n * 7) % base.len();
                    let near = store.nearest(&base[i], 5, 5).unwrap();
                    assert_eq!(near[0].stored.entry.id, format!("base-{i}"));
                    assert!(near.iter().all(|n| n.states.is_some()));
                }
            });
        }
    });
    // The same id added twice at once: one wins.
    let twice = store
        .add(vec![
            new_entry("twin", base[0].clone(), 0),
            new_entry("twin", base[1].clone(), 1),
        ])
        .unwrap();
    assert!(twice[0].is_ok());
    assert!(matches!(
        twice[1],
        Err(blip_index::IndexError::DuplicateId(_))
    ));
    assert_eq!(store.len().unwrap(), 200 + 3 * 20 + 1);
    assert_eq!(store.state_rows().unwrap(), store.len().unwrap());
    assert_eq!(store.vectors(), store.len().unwrap());
}

#[test]
fn format_2_indexes_are_migrated_on_open_with_their_states() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.idx");
    let mut old = Index::new("pkg".into(), DIM, Some(SHAPE));
    let mut rng = Rng(11);
    let mut vectors = Vec::new();
    for i in 0..30 {
        let id = format!("img-{i}");
        let v = rng.unit(DIM);
        let state = old.write_state(&path, &id, &states_of(i)).unwrap();
        let entry = Entry {
            id,
            path: PathBuf::from(format!("/photos/{i}.png")),
            stamp: Stamp {
                size: i as u64,
                mtime_ns: 3,
            },
            metadata: (i % 2 == 0).then(|| serde_json::json!({"even": i})),
            state: Some(state),
        };
        old.push(entry, &v).unwrap();
        vectors.push(v);
    }
    old.write(&path).unwrap();
    // A read-only open refuses it, saying how to migrate.
    let e = Store::open_read_only(&path).unwrap_err().to_string();
    assert!(e.contains("format-2") && e.contains("migrate"), "{e}");

    let store = Store::open(&path).unwrap();
    assert!(blip_index::is_store(&path));
    assert!(PathBuf::from(format!("{}.format2", path.display())).exists());
    assert_eq!(store.rerank, RerankStates::F16);
    assert_eq!(store.len().unwrap(), 30);
    let mut seen = 0;
    store
        .for_each(|s| {
            let i = seen;
            let o = &old.entries()[i];
            assert_eq!(
                (&s.entry.id, &s.entry.path, &s.entry.stamp),
                (&o.id, &o.path, &o.stamp)
            );
            assert_eq!(s.entry.metadata, o.metadata);
            assert_eq!(s.vectors, vectors[i]);
            seen += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, 30);
    // States come through exactly (f16 to f16).
    let ids: Vec<String> = (0..30).map(|i| format!("img-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut expected = Vec::new();
    for i in 0..30 {
        expected.extend(
            states_of(i)
                .iter()
                .map(|v| half::f16::from_f32(*v).to_f32()),
        );
    }
    assert_eq!(store.read_states(&refs).unwrap(), expected);
    drop(store);
    // The in-memory view reads format 3 too.
    let back = Index::read(&path).unwrap();
    assert_eq!(back.len(), 30);
    assert_eq!(back.embedding(4), vectors[4].as_slice());
    assert_eq!(
        back.read_states(&path, &[2]).unwrap(),
        expected[2 * SHAPE.values()..3 * SHAPE.values()]
    );
}

#[test]
fn several_vectors_per_entry_score_their_best_as_brute_force_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("multi.blip");
    let mut store = Store::create(&path, &options(DIM, RerankStates::None)).unwrap();
    let mut rng = Rng(21);
    // 400 entries of 1 to 8 vectors (BLIP-2 keeps 32 query vectors per image; same code path).
    let entries: Vec<Vec<Vec<f32>>> = (0..400)
        .map(|i| rng.clustered(1 + i % 8, 20, DIM))
        .collect();
    let batch = entries
        .iter()
        .enumerate()
        .map(|(i, vs)| {
            let mut e = new_entry(&format!("m{i}"), vs.concat(), i);
            e.states = None;
            e
        })
        .collect();
    assert!(store.add(batch).unwrap().iter().all(|r| r.is_ok()));
    let queries = rng.clustered(40, 20, DIM);
    for (mode, exact_below) in [("exact", usize::MAX), ("graph", 0)] {
        store.exact_below = exact_below;
        let mut same = 0;
        for q in &queries {
            let want = brute_force(&entries, q, 10);
            let got = store.nearest(q, 10, 0).unwrap();
            for (g, (wi, ws)) in got.iter().zip(&want) {
                if g.stored.entry.id == format!("m{wi}") {
                    assert!((g.score - ws).abs() < 1e-5, "{mode}: {} vs {ws}", g.score);
                    same += 1;
                }
            }
            // The reported best vector is the one that gives the score.
            let top = &got[0];
            let best = &top.stored.vectors[top.best * DIM..(top.best + 1) * DIM];
            assert!((dot(best, q) - top.score).abs() < 1e-6);
        }
        let recall = same as f64 / (queries.len() * 10) as f64;
        let floor = if mode == "exact" { 1.0 } else { 0.95 };
        assert!(recall >= floor, "{mode}: {recall}");
    }
}

#[test]
fn graph_recall_at_10_on_a_generated_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recall.blip");
    let dim = 64;
    let mut opts = options(dim, RerankStates::None);
    opts.ann = match std::env::var("ANN_STORAGE").as_deref() {
        Ok("f32") => AnnStorage::F32,
        _ => AnnStorage::F16,
    };
    let mut store = Store::create(&path, &opts).unwrap();
    let mut rng = Rng(8);
    let base = rng.clustered(6000, 60, dim);
    let batch = base
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut e = new_entry(&format!("v{i}"), v.clone(), i);
            e.states = None;
            e
        })
        .collect();
    assert!(store.add(batch).unwrap().iter().all(|r| r.is_ok()));
    store.exact_below = if std::env::var("EXACT").is_ok() {
        usize::MAX
    } else {
        0
    };
    let queries = rng.clustered(200, 60, dim);
    let entries: Vec<Vec<Vec<f32>>> = base.iter().map(|v| vec![v.clone()]).collect();
    let mut hits = 0;
    for q in &queries {
        let want: Vec<String> = brute_force(&entries, q, 10)
            .iter()
            .map(|(i, _)| format!("v{i}"))
            .collect();
        let got = store.nearest(q, 10, 0).unwrap();
        hits += got
            .iter()
            .filter(|g| want.contains(&g.stored.entry.id))
            .count();
    }
    let recall = hits as f64 / (queries.len() * 10) as f64;
    assert!(recall >= 0.97, "recall@10 {recall}");
    // Reopened from the graph saved at close: the same answers.
    let first = store.nearest(&queries[0], 10, 0).unwrap();
    drop(store);
    let mut again = Store::open(&path).unwrap();
    again.exact_below = 0;
    let second = again.nearest(&queries[0], 10, 0).unwrap();
    let ids = |v: &[blip_index::Near]| {
        v.iter()
            .map(|n| n.stored.entry.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ids(&second));
}

#[test]
fn int8_states_stay_within_a_hundredth_of_a_row_maximum() {
    let shape = StateShape {
        tokens: 5,
        width: 32,
    };
    let mut rng = Rng(4);
    let v: Vec<f32> = (0..shape.values()).map(|_| rng.gauss() * 3.0).collect();
    let b = blip_index::encode_states(RerankStates::Int8, shape, &v);
    assert_eq!(b.len(), RerankStates::Int8.bytes_per_image(shape));
    let back = blip_index::decode_states(RerankStates::Int8, shape, &b).unwrap();
    for (row, brow) in v.chunks(shape.width).zip(back.chunks(shape.width)) {
        let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (a, b) in row.iter().zip(brow) {
            assert!((a - b).abs() <= max / 254.0 + 1e-6, "{a} {b}");
        }
    }
    assert!(blip_index::decode_states(RerankStates::Int8, shape, &b[1..]).is_none());
}

/// `len` is kept with each committed change (no table scan per search) and agrees with the
/// database after refusals, removals and a reopen.
#[test]
fn the_entry_count_follows_adds_refusals_and_removals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("count.idx");
    let mut rng = Rng(11);
    let store = Store::create(&path, &options(8, RerankStates::Int8)).unwrap();
    assert_eq!(store.len().unwrap(), 0);
    let out = store
        .add(vec![
            new_entry("a", rng.unit(8), 1),
            new_entry("b", rng.unit(8), 2),
            new_entry("a", rng.unit(8), 3),
        ])
        .unwrap();
    assert!(out[0].is_ok() && out[1].is_ok() && out[2].is_err());
    assert_eq!(store.len().unwrap(), 2);
    assert!(store.remove("a").unwrap().is_some());
    assert!(store.remove("a").unwrap().is_none());
    assert_eq!(store.len().unwrap(), 1);
    drop(store);
    let again = Store::open(&path).unwrap();
    assert_eq!(again.len().unwrap(), 1);
    assert!(again.contains("b").unwrap() && !again.contains("a").unwrap());
}

/// Uploaded images: stored content-addressed with their entries, a refused entry's image removed
/// again, a shared image kept until the last entry naming it goes.
#[test]
fn uploaded_images_follow_their_entries() {
    use blip_index::Upload;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uploads.idx");
    let mut rng = Rng(5);
    let store = Store::create(&path, &options(8, RerankStates::F16)).unwrap();
    let upload = |id: &str, bytes: &[u8], i: usize, rng: &mut Rng| Upload {
        entry: new_entry(id, rng.unit(8), i),
        bytes: bytes.to_vec(),
        extension: "png".into(),
    };
    let out = store
        .add_uploads(vec![
            upload("a", b"image x", 1, &mut rng),
            upload("a", b"image y", 2, &mut rng),
            upload("b", b"image x", 3, &mut rng),
        ])
        .unwrap();
    assert!(
        out[0].is_ok() && out[1].is_err() && out[2].is_ok(),
        "{out:?}"
    );
    let images = blip_index::Index::sidecar(&path).join("images");
    let files = || {
        let mut f: Vec<String> = std::fs::read_dir(&images)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        f.sort();
        f
    };
    assert_eq!(
        files().len(),
        1,
        "the refused entry's image is gone: {:?}",
        files()
    );
    let a = store.get("a").unwrap().unwrap();
    assert_eq!(std::fs::read(&a.path).unwrap(), b"image x");
    assert_eq!(store.get("b").unwrap().unwrap().path, a.path);
    store.remove("a").unwrap().unwrap();
    assert_eq!(files().len(), 1, "b still names it");
    store.remove("b").unwrap().unwrap();
    assert!(files().is_empty(), "{:?}", files());
}
