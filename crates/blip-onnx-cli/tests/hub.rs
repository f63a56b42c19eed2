//! `convert ORG/NAME` and `serve --model ORG/NAME` against a loopback hub (HF_ENDPOINT), each
//! test with its own HF_HOME.

#[path = "../../blip-hub/tests/common/fakehub.rs"]
mod fakehub;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fakehub::{FakeHub, folder_files};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

fn cmd(endpoint: &str, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blip-onnx"));
    c.env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    c
}

fn run(c: &mut Command, args: &[&str]) -> (bool, String, String) {
    let out = c.args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn captions(pkg: &Path) -> String {
    let images = fixture("shapes/test/images");
    let (ok, stdout, stderr) = run(
        &mut Command::new(env!("CARGO_BIN_EXE_blip-onnx")),
        &[
            "caption",
            "--package",
            pkg.to_str().unwrap(),
            "--threads",
            "1",
            "--quiet",
            images.join("test_00000.png").to_str().unwrap(),
            images.join("test_00001.png").to_str().unwrap(),
            images.join("test_00002.png").to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    stdout
}

#[test]
fn convert_an_id_gives_the_local_folders_package_and_reuses_it() {
    let fake = FakeHub::start();
    let sha = fake.add_commit(
        "acme/shapes",
        "main",
        folder_files(&fixture("shapes/models/shapes-caption")),
    );
    let v1 = fake.add_commit(
        "acme/shapes",
        "v1",
        folder_files(&fixture("shapes/models/shapes-retrieval")),
    );
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let p = |n: &str| out.path().join(n);

    let (ok, stdout, stderr) = run(
        &mut cmd(&fake.url, home.path()),
        &[
            "convert",
            "acme/shapes",
            "-o",
            p("hub").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["head"], "caption");
    assert_eq!(report["commit"], sha.as_str());
    assert_eq!(report["converted"], true);
    let local = fixture("shapes/models/shapes-caption");
    let (ok, _, stderr) = run(
        &mut Command::new(env!("CARGO_BIN_EXE_blip-onnx")),
        &[
            "convert",
            local.to_str().unwrap(),
            "-o",
            p("local").to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let want = captions(&p("local"));
    assert_eq!(captions(&p("hub")), want);

    // Second run: the package cache, not one request.
    fake.clear_requests();
    let (ok, stdout, stderr) = run(
        &mut cmd(&fake.url, home.path()),
        &[
            "convert",
            "acme/shapes",
            "-o",
            p("again").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(fake.requests(), Vec::<String>::new());
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["converted"], false);
    assert_eq!(captions(&p("again")), want);
    // The output is not overwritten without --force.
    let (ok, _, stderr) = run(
        &mut cmd(&fake.url, home.path()),
        &["convert", "acme/shapes", "-o", p("again").to_str().unwrap()],
    );
    assert!(!ok && stderr.contains("--force"), "{stderr}");

    // A pinned revision fetches that revision.
    let (ok, stdout, stderr) = run(
        &mut cmd(&fake.url, home.path()),
        &[
            "convert",
            "acme/shapes@v1",
            "-o",
            p("v1").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (report["head"].as_str(), report["commit"].as_str()),
        (Some("retrieval"), Some(v1.as_str()))
    );
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.contains(&format!("/resolve/{v1}/")))
    );

    // Offline: from the cache; a model never fetched is refused clearly.
    let (ok, _, stderr) = run(
        cmd(&fake.url, home.path()).env("HF_HUB_OFFLINE", "1"),
        &[
            "convert",
            "acme/shapes",
            "-o",
            p("offline").to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(
        cmd(&fake.url, home.path()).env("HF_HUB_OFFLINE", "1"),
        &["convert", "acme/other", "-o", p("x").to_str().unwrap()],
    );
    assert!(
        !ok && stderr.contains("acme/other") && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
    assert!(!p("x").exists());
}

#[test]
fn convert_an_id_fails_clearly_and_writes_nothing() {
    let fake = FakeHub::start();
    fake.add_commit(
        "acme/shapes",
        "main",
        folder_files(&fixture("shapes/models/shapes-caption")),
    );
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("pkg");
    let o = o.to_str().unwrap();

    let (ok, _, stderr) = run(
        &mut cmd(&fake.url, home.path()),
        &["convert", "acme/nope", "-o", o],
    );
    assert!(
        !ok && stderr.contains("acme/nope") && stderr.contains("404"),
        "{stderr}"
    );

    fake.corrupt("model.safetensors");
    let (ok, _, stderr) = run(
        &mut cmd(&fake.url, home.path()),
        &["convert", "acme/shapes", "-o", o],
    );
    assert!(
        !ok && stderr.contains("model.safetensors") && stderr.contains("corrupt"),
        "{stderr}"
    );
    assert!(
        !home
            .path()
            .join("blip-onnx/packages/acme--shapes")
            .read_dir()
            .is_ok_and(|mut d| d.any(|e| e.unwrap().path().join("fp32").exists()))
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("http://127.0.0.1:{port}");
    let (ok, _, stderr) = run(
        &mut cmd(&down, home.path()),
        &["convert", "acme/shapes", "-o", o],
    );
    assert!(
        !ok && stderr.contains("cannot reach") && stderr.contains(&down),
        "{stderr}"
    );
    assert!(!Path::new(o).exists());
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn serve_a_model_id_resolves_it_to_the_cached_package() {
    let fake = FakeHub::start();
    let sha = fake.add_commit(
        "acme/shapes",
        "main",
        folder_files(&fixture("shapes/models/shapes-caption")),
    );
    let home = tempfile::tempdir().unwrap();
    let mut child = cmd(&fake.url, home.path())
        .args([
            "serve",
            "--model",
            "acme/shapes",
            "--precision",
            "int8",
            "--port",
            "0",
            "--threads",
            "1",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("serve ended: {seen:?}");
        };
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().to_string();
        }
        seen.push(line);
    };
    let info = http_get(&addr, "/info");
    // The OpenAI-compatible routes name the package by its hub id.
    let models = http_get(&addr, "/v1/models");
    let _ = child.kill();
    let _ = child.wait();
    let pkg = home
        .path()
        .join("blip-onnx/packages/acme--shapes")
        .join(&sha)
        .join("int8");
    assert!(pkg.join("blip.json").is_file());
    assert!(
        info.contains("200 OK") && info.contains("caption"),
        "{info}"
    );
    assert!(models.contains("\"id\":\"acme/shapes\""), "{models}");
    // The int8 package is what `blip-onnx quantize` makes of the converted folder.
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("fp32");
    let q = out.path().join("int8");
    let ck = fixture("shapes/models/shapes-caption");
    let bin = env!("CARGO_BIN_EXE_blip-onnx");
    assert!(
        run(
            &mut Command::new(bin),
            &[
                "convert",
                ck.to_str().unwrap(),
                "-o",
                local.to_str().unwrap()
            ]
        )
        .0
    );
    assert!(
        run(
            &mut Command::new(bin),
            &[
                "quantize",
                local.to_str().unwrap(),
                "-o",
                q.to_str().unwrap()
            ]
        )
        .0
    );
    let graphs = |p: &Path| -> serde_json::Value {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.join("blip.json")).unwrap()).unwrap();
        m["graphs"].clone()
    };
    assert_eq!(graphs(&pkg), graphs(&q));
    assert_eq!(captions(&pkg), captions(&q));
}
