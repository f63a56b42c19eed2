//! The served index under concurrent changes and a crash: several clients add, delete and search
//! at random (seeded) against a server in a child process, which is killed with SIGKILL in the
//! middle of a burst of adds and started again on the same index. Every acknowledged add must be
//! there with its own image and rerank states, every acknowledged delete gone, and the index
//! readable.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blip_runtime::{BlipModel, SessionOptions};
use blip_server::ServeArgs;
use common::*;
use serde_json::json;

/// Set in the child process: the index, the package, and where to write the address.
const CHILD_ENV: &str = "BLIP_CRASH_TEST_CHILD";

/// The server of the crash test, run as a child process (the parent starts it with
/// `--ignored --exact`); a plain `cargo test` skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of index_changes_survive_sigkill"]
async fn crash_test_child_server() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let mut a = ServeArgs::new(vec![PathBuf::from(spec["package"].as_str().unwrap())]).unwrap();
    a.port = 0;
    a.host = "127.0.0.1".into();
    a.threads = 1;
    a.index = Some(PathBuf::from(spec["index"].as_str().unwrap()));
    let running = blip_server::start(a).await.unwrap();
    let addr_file = PathBuf::from(spec["addr_file"].as_str().unwrap());
    let tmp = addr_file.with_extension("partial");
    std::fs::write(&tmp, running.addr.to_string()).unwrap();
    std::fs::rename(&tmp, &addr_file).unwrap();
    // Served until the parent kills this process.
    tokio::time::sleep(Duration::from_secs(600)).await;
}

struct ChildServer {
    child: Child,
    base: String,
}

fn spawn_server(package: &Path, index: &Path, dir: &Path) -> ChildServer {
    let addr_file = dir.join(format!(
        "addr-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let spec = json!({"package": package, "index": index, "addr_file": addr_file});
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_test_child_server",
            "--nocapture",
        ])
        .env(CHILD_ENV, spec.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(120);
    while !addr_file.exists() {
        assert!(Instant::now() < end, "the child server never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = std::fs::read_to_string(&addr_file).unwrap();
    ChildServer {
        child,
        base: format!("http://{addr}"),
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..1200 {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the child server never became ready");
}

/// A small seeded generator (xorshift64*): the interleaving is random but replayable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Added(usize),
    Deleted,
}

async fn add(client: &reqwest::Client, base: &str, id: &str, image: usize) -> Option<bool> {
    let body = json!({"images": [{"id": id, "image": b64(&test_image(image))}]});
    let r = client
        .post(format!("{base}/v1/index"))
        .json(&body)
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    Some(v["results"][0]["added"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn index_changes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("crash.idx");
    let package = package("retrieval");
    let client = reqwest::Client::new();
    let mut server = spawn_server(&package, &index, dir.path());
    wait_ready(&client, &server.base).await;

    let seed = 0x5EED_u64;
    let fates: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Fate>>> = Default::default();
    // Four clients, 15 operations each: add a new id, delete one of this client's acknowledged
    // ids, or search with rerank (which must never fail).
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let client = client.clone();
            let base = server.base.clone();
            let fates = fates.clone();
            tokio::spawn(async move {
                let mut rng = Rng(seed + c * 7919);
                let mut mine: Vec<String> = Vec::new();
                for n in 0..15 {
                    match rng.below(3) {
                        0 | 1 if mine.is_empty() || rng.below(2) == 0 => {
                            let id = format!("c{c}-{n}");
                            let image = rng.below(8);
                            if add(&client, &base, &id, image).await == Some(true) {
                                fates.lock().unwrap().insert(id.clone(), Fate::Added(image));
                                mine.push(id);
                            }
                        }
                        0 | 1 => {
                            let id = mine.swap_remove(rng.below(mine.len()));
                            let r = client
                                .delete(format!("{base}/v1/index/{id}"))
                                .send()
                                .await
                                .unwrap();
                            assert_eq!(r.status(), 200, "deleting {id}");
                            fates.lock().unwrap().insert(id, Fate::Deleted);
                        }
                        _ => {
                            let r = client
                                .post(format!("{base}/v1/search"))
                                .json(&json!({"text": "a purple triangle", "rerank": 16}))
                                .send()
                                .await
                                .unwrap();
                            let status = r.status();
                            let body = r.text().await.unwrap();
                            assert_eq!(status, 200, "a search during changes failed: {body}");
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }

    // A burst of adds, and SIGKILL while it is in flight.
    let burst: Vec<_> = (0..12)
        .map(|i| {
            let client = client.clone();
            let base = server.base.clone();
            tokio::spawn(async move {
                let id = format!("burst-{i}");
                let image = i % 8;
                (id.clone(), image, add(&client, &base, &id, image).await)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut unacknowledged = Vec::new();
    for b in burst {
        let (id, image, acked) = b.await.unwrap();
        match acked {
            Some(true) => {
                fates.lock().unwrap().insert(id, Fate::Added(image));
            }
            _ => unacknowledged.push(id),
        }
    }

    // The index as the killed server left it: readable, every acknowledged change in it.
    let idx = blip_index::Index::read(&index).expect("the index is readable after SIGKILL");
    let mut model = BlipModel::open(
        &package,
        &SessionOptions {
            intra_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let states: Vec<Vec<f32>> = (0..8).map(|i| library_states(&mut model, i)).collect();
    let fates = fates.lock().unwrap().clone();
    let added = fates
        .values()
        .filter(|f| matches!(f, Fate::Added(_)))
        .count();
    let deleted = fates.len() - added;
    assert!(
        added >= 5 && deleted >= 2,
        "{added} adds, {deleted} deletes"
    );
    for (id, fate) in &fates {
        match (fate, idx.position(id)) {
            (Fate::Deleted, None) => {}
            (Fate::Deleted, Some(_)) => {
                panic!("{id} was deleted (acknowledged) but is in the index")
            }
            (Fate::Added(_), None) => {
                panic!("{id} was added (acknowledged) but is not in the index")
            }
            (Fate::Added(image), Some(row)) => {
                let stored = idx.read_states(&index, &[row]).unwrap();
                let own = max_abs_diff(&stored, &states[*image]);
                assert!(own < 0.05, "{id}: stored states are {own} from its image's");
                let bytes = std::fs::read(&idx.entries()[row].path).unwrap();
                assert_eq!(bytes, std::fs::read(test_image(*image)).unwrap(), "{id}");
            }
        }
    }

    // Started again on the same index, the server serves it: the acknowledged ids search.
    let server = spawn_server(&package, &index, dir.path());
    wait_ready(&client, &server.base).await;
    let info: serde_json::Value = client
        .get(format!("{}/info", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["index"]["images"], idx.len(), "{info}");
    let r = client
        .post(format!("{}/v1/search", server.base))
        .json(&json!({"text": "a purple triangle", "rerank": 16, "k": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hits: serde_json::Value = r.json().await.unwrap();
    assert_eq!(hits["hits"].as_array().unwrap().len(), idx.len());
    let mut restarted = server;
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
    eprintln!(
        "{added} acknowledged adds, {deleted} acknowledged deletes, {} burst adds unacknowledged at the kill",
        unacknowledged.len()
    );
}
