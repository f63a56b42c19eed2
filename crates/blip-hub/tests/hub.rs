//! blip-hub against a loopback hub: download, convert once, reuse with no request, revision
//! pinning, offline mode, and the failures (missing id, server down, corrupt download).

mod common;

use std::path::{Path, PathBuf};

use blip_hub::{Flavour, Hub, HubError, HubOptions, ModelId};
use common::fakehub::{FakeHub, folder_files};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/shapes/models")
        .join(name)
}

fn hub(endpoint: &str, home: &Path, offline: bool) -> Hub {
    Hub::new(HubOptions {
        endpoint: endpoint.to_string(),
        home: home.to_path_buf(),
        token: None,
        offline,
        progress: false,
    })
}

/// role → graph sha256, from a package's manifest.
fn graph_hashes(pkg: &Path) -> Vec<(String, String)> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pkg.join("blip.json")).unwrap()).unwrap();
    let graphs = m["graphs"].as_object().unwrap();
    graphs
        .iter()
        .map(|(k, v)| (k.clone(), v["sha256"].as_str().unwrap().to_string()))
        .collect()
}

fn head(pkg: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pkg.join("blip.json")).unwrap()).unwrap();
    m["head"].as_str().unwrap().to_string()
}

fn id(s: &str) -> ModelId {
    s.parse().unwrap()
}

/// Whatever is under the package cache besides finished packages (temporary build folders).
fn leftovers(home: &Path) -> Vec<PathBuf> {
    let root = home.join("blip-onnx/packages");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with('.') {
                out.push(p);
            } else if p.is_dir() && !p.join("blip.json").is_file() {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn downloads_converts_once_then_reuses_with_no_request() {
    let fake = FakeHub::start();
    let sha = fake.add_commit(
        "acme/shapes",
        "main",
        folder_files(&fixture("shapes-caption")),
    );
    let home = tempfile::tempdir().unwrap();
    let h = hub(&fake.url, home.path(), false);

    let got = h.package(&id("acme/shapes"), Flavour::Fp32).unwrap();
    assert!(got.built);
    assert_eq!(got.commit, sha);
    assert_eq!(
        got.dir,
        home.path()
            .join("blip-onnx/packages/acme--shapes")
            .join(&sha)
            .join("fp32")
    );
    // The same graphs as converting the fixture folder directly.
    let local = tempfile::tempdir().unwrap();
    let local_pkg = local.path().join("pkg");
    blip_convert::convert(&fixture("shapes-caption"), &local_pkg, &Default::default()).unwrap();
    assert_eq!(graph_hashes(&got.dir), graph_hashes(&local_pkg));
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r == "GET /api/models/acme/shapes/revision/main"),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r.starts_with(&format!("GET /acme/shapes/resolve/{sha}/model.safetensors"))),
        "{reqs:?}"
    );
    assert!(
        leftovers(home.path()).is_empty(),
        "{:?}",
        leftovers(home.path())
    );

    // Second time: from the package cache, not one request.
    fake.clear_requests();
    let again = h.package(&id("acme/shapes"), Flavour::Fp32).unwrap();
    assert!(!again.built);
    assert_eq!(again.dir, got.dir);
    assert_eq!(fake.requests(), Vec::<String>::new());

    // Another precision of the same commit: no download, quantized from the cached snapshot, and
    // the same graphs `blip-onnx quantize --precision int8` writes.
    let int8 = h.package(&id("acme/shapes"), Flavour::Int8).unwrap();
    assert!(int8.built);
    assert_eq!(fake.requests(), Vec::<String>::new());
    let q = local.path().join("int8");
    let target = blip_quantize::Target::Native;
    let p = blip_quantize::Scheme::Int8;
    blip_quantize::quantize_package(
        &local_pkg,
        &q,
        &blip_quantize::QuantizeOptions {
            policy: target.default_policy(&p),
            scheme: p,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(graph_hashes(&int8.dir), graph_hashes(&q));
    assert_ne!(graph_hashes(&int8.dir), graph_hashes(&got.dir));
}

#[test]
fn revision_pins_the_commit_it_names() {
    let fake = FakeHub::start();
    let main = fake.add_commit(
        "acme/shapes",
        "main",
        folder_files(&fixture("shapes-caption")),
    );
    let v1 = fake.add_commit(
        "acme/shapes",
        "v1",
        folder_files(&fixture("shapes-retrieval")),
    );
    let home = tempfile::tempdir().unwrap();
    let h = hub(&fake.url, home.path(), false);

    let got = h.package(&id("acme/shapes@v1"), Flavour::Fp32).unwrap();
    assert_eq!(got.commit, v1);
    assert_eq!(head(&got.dir), "retrieval");
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r == "GET /api/models/acme/shapes/revision/v1"),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.contains(&format!("/resolve/{v1}/"))),
        "{reqs:?}"
    );
    assert!(!reqs.iter().any(|r| r.contains(&main)), "{reqs:?}");

    // A full commit sha is its own key: the cached package, no request.
    fake.clear_requests();
    let by_sha = h
        .package(&id(&format!("acme/shapes@{v1}")), Flavour::Fp32)
        .unwrap();
    assert_eq!(by_sha.dir, got.dir);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());

    let main_pkg = h.package(&id("acme/shapes"), Flavour::Fp32).unwrap();
    assert_eq!(main_pkg.commit, main);
    assert_eq!(head(&main_pkg.dir), "caption");
}

#[test]
fn offline_uses_the_cache_and_says_when_it_cannot() {
    let fake = FakeHub::start();
    fake.add_commit(
        "acme/shapes",
        "main",
        folder_files(&fixture("shapes-caption")),
    );
    let home = tempfile::tempdir().unwrap();

    // Nothing cached: a clear refusal, no request.
    let offline = hub(&fake.url, home.path(), true);
    let err = offline
        .package(&id("acme/shapes"), Flavour::Fp32)
        .unwrap_err();
    assert!(matches!(err, HubError::Offline { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("acme/shapes") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    assert!(fake.requests().is_empty());

    // Downloaded once (snapshot only), then offline: converted from the hub cache, no request.
    let snap = hub(&fake.url, home.path(), false)
        .snapshot(&id("acme/shapes"))
        .unwrap();
    fake.clear_requests();
    let got = offline.package(&id("acme/shapes"), Flavour::Fp32).unwrap();
    assert!(got.built);
    assert_eq!(got.commit, snap.commit);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    // A revision never downloaded is still refused offline.
    let err = offline
        .package(&id("acme/shapes@v2"), Flavour::Fp32)
        .unwrap_err();
    assert!(matches!(err, HubError::Offline { .. }), "{err:?}");
}

#[test]
fn missing_id_and_server_down_are_clear_errors() {
    let fake = FakeHub::start();
    let home = tempfile::tempdir().unwrap();
    let err = hub(&fake.url, home.path(), false)
        .package(&id("acme/no-such-model"), Flavour::Fp32)
        .unwrap_err();
    assert!(
        matches!(err, HubError::MissingId { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("acme/no-such-model"), "{err}");

    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = hub(&endpoint, home.path(), false)
        .package(&id("acme/shapes"), Flavour::Fp32)
        .unwrap_err();
    assert!(matches!(err, HubError::Network { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("acme/shapes") && msg.contains(&endpoint),
        "{msg}"
    );
    assert!(!home.path().join("blip-onnx").exists());
}

#[test]
fn corrupt_download_is_refused_and_leaves_nothing_cached() {
    let fake = FakeHub::start();
    let sha = fake.add_commit(
        "acme/shapes",
        "main",
        folder_files(&fixture("shapes-caption")),
    );
    let home = tempfile::tempdir().unwrap();
    let h = hub(&fake.url, home.path(), false);
    // config.json first: once fetched good it is reused from the hub cache.
    for bad in ["config.json", "model.safetensors"] {
        fake.corrupt(bad);
        let err = h.package(&id("acme/shapes"), Flavour::Fp32).unwrap_err();
        assert!(
            matches!(&err, HubError::Corrupt { file, .. } if file == bad),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(bad) && msg.contains("acme/shapes"), "{msg}");
        // No package, no snapshot link to the bad file, no blob of it.
        assert!(
            !home
                .path()
                .join("blip-onnx/packages/acme--shapes")
                .join(&sha)
                .join("fp32")
                .exists()
        );
        let repo = home.path().join("hub/models--acme--shapes");
        assert!(!repo.join("snapshots").join(&sha).join(bad).exists());
        let good = common::fakehub::etag_of(bad, &folder_files(&fixture("shapes-caption"))[bad]);
        let blobs: Vec<_> = std::fs::read_dir(repo.join("blobs"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!blobs.iter().any(|b| b == &good), "{blobs:?}");
        assert!(!repo.join("refs/main").exists());
        fake.heal();
    }
    // Served right again: downloaded anew and converted.
    let got = h.package(&id("acme/shapes"), Flavour::Fp32).unwrap();
    assert!(got.built);
}

/// A BLIP-2 repository is refused by name from its config.json, before any weight is fetched.
#[test]
fn blip_2_is_refused_by_name_before_the_weights_download() {
    let fake = FakeHub::start();
    let mut files = folder_files(&fixture("shapes-caption"));
    files.insert(
        "config.json".into(),
        br#"{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "opt"}}"#.to_vec(),
    );
    fake.add_commit("Salesforce/blip2-opt-2.7b", "main", files);
    let home = tempfile::tempdir().unwrap();
    fake.clear_requests();
    let err = hub(&fake.url, home.path(), false)
        .package(&id("Salesforce/blip2-opt-2.7b"), Flavour::Fp32)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("Salesforce/blip2-opt-2.7b")
            && msg.contains(
                "BLIP-2 (Blip2ForConditionalGeneration, opt language model) is not supported"
            ),
        "{msg}"
    );
    let asked = fake.requests();
    assert!(
        asked.iter().any(|r| r.contains("config.json"))
            && !asked.iter().any(|r| r.contains("model.safetensors")),
        "{asked:?}"
    );
}
