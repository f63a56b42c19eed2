//! A loopback stand-in for the Hugging Face hub, in the URL layout and with the headers hf-hub
//! 0.5's sync client reads: `GET /api/models/{repo}/revision/{rev}` (sha + siblings),
//! `GET /{repo}/resolve/{rev}/{file}` (ranged; `X-Repo-Commit`, `ETag` = git blob sha1 for small
//! files; LFS files answer 302 to `/cdn/{sha256}` with `X-Linked-Etag` = sha256, as the hub does)
//! and `GET /cdn/{sha256}` (ranged, `Content-Range`). Every request is counted.
//! Shared by blip-hub's and the CLI's tests (`#[path]`).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// One commit of one repository: file name → bytes.
pub struct Commit {
    pub sha: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
struct State {
    /// repo id → commits
    repos: BTreeMap<String, Vec<Commit>>,
    /// (repo id, branch or tag) → sha
    refs: BTreeMap<(String, String), String>,
    requests: Vec<String>,
    /// Files served damaged (the etag still the good content's).
    corrupt: HashSet<String>,
}

pub struct FakeHub {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

/// The files of a checkpoint folder (a fixture).
pub fn folder_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            files.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    files
}

fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".bin")
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The name hf-hub gives the file's blob: the hub's etag (sha256 for LFS, git blob sha1 else).
pub fn etag_of(file: &str, b: &[u8]) -> String {
    if is_lfs(file) {
        sha256_hex(b)
    } else {
        git_sha1(b)
    }
}

fn git_sha1(b: &[u8]) -> String {
    let mut d = Sha1::new();
    d.update(format!("blob {}\0", b.len()).as_bytes());
    d.update(b);
    hex::encode(d.finalize())
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve_conn(conn, &s, port);
                });
            }
        });
        FakeHub {
            url: format!("http://127.0.0.1:{port}"),
            state,
            stop,
            port,
        }
    }

    /// Adds a commit to `repo` and points `branch` (e.g. "main", a tag) at it.
    pub fn add_commit(&self, repo: &str, branch: &str, files: BTreeMap<String, Vec<u8>>) -> String {
        let mut st = self.state.lock().unwrap();
        let n = st.repos.values().map(|c| c.len()).sum::<usize>();
        let sha = hex::encode(Sha1::digest(format!("{repo}{branch}{n}").as_bytes()));
        st.repos.entry(repo.to_string()).or_default().push(Commit {
            sha: sha.clone(),
            files,
        });
        st.refs
            .insert((repo.to_string(), branch.to_string()), sha.clone());
        sha
    }

    pub fn corrupt(&self, file: &str) {
        self.state.lock().unwrap().corrupt.insert(file.to_string());
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().corrupt.clear();
    }

    /// Request lines seen so far ("GET /path").
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn json(status: u16, v: serde_json::Value) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: v.to_string().into_bytes(),
    }
}

fn not_found(what: &str) -> Response {
    let mut r = json(
        404,
        serde_json::json!({ "error": format!("{what} not found") }),
    );
    r.headers
        .push(("X-Error-Code".into(), "RepoNotFound".into()));
    r
}

/// 206 with Content-Range for `Range: bytes=a-[b]`, 200 without a Range header. `advertised` is
/// the full length Content-Range reports (the real length unless the body is being damaged).
fn ranged(range: Option<&str>, body: &[u8], advertised: usize) -> Response {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Response {
            status: 200,
            headers: vec![],
            body: body.to_vec(),
        };
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let start: usize = a.parse().unwrap_or(0);
    let end: usize = b
        .parse::<usize>()
        .map(|e| e + 1)
        .unwrap_or(body.len())
        .min(body.len());
    let start = start.min(end);
    Response {
        status: 206,
        headers: vec![(
            "Content-Range".into(),
            format!("bytes {start}-{}/{advertised}", end.saturating_sub(1)),
        )],
        body: body[start..end].to_vec(),
    }
}

/// The damaged copy: the second half dropped and a byte of the header flipped.
fn damage(body: &[u8]) -> Vec<u8> {
    let mut b = body[..body.len() / 2].to_vec();
    if b.len() > 20 {
        b[12] ^= 0x5a;
    }
    b
}

fn route(st: &mut State, path: &str, range: Option<&str>, port: u16) -> Response {
    let path = path.replace("%2F", "/");
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, rev)) = rest.split_once("/revision/") else {
            return not_found("route");
        };
        let Some(sha) = resolve(st, repo, rev) else {
            return not_found(&format!("{repo}@{rev}"));
        };
        let commit = find(st, repo, &sha).unwrap();
        let siblings: Vec<_> = commit
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        return json(
            200,
            serde_json::json!({ "id": repo, "modelId": repo, "sha": sha, "siblings": siblings }),
        );
    }
    if let Some(hash) = path.strip_prefix("/cdn/") {
        for commits in st.repos.values() {
            for c in commits {
                for (name, bytes) in &c.files {
                    if sha256_hex(bytes) == hash {
                        let body = if st.corrupt.contains(name) {
                            damage(bytes)
                        } else {
                            bytes.clone()
                        };
                        return ranged(range, &body, bytes.len());
                    }
                }
            }
        }
        return not_found("blob");
    }
    // /{org}/{name}/resolve/{rev}/{file}
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return not_found("route");
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return not_found("route");
    };
    let Some(sha) = resolve(st, repo, rev) else {
        return not_found(&format!("{repo}@{rev}"));
    };
    let commit = find(st, repo, &sha).unwrap();
    let Some(bytes) = commit.files.get(file) else {
        let mut r = not_found(file);
        r.headers = vec![("X-Error-Code".into(), "EntryNotFound".into())];
        return r;
    };
    let mut headers = vec![("X-Repo-Commit".to_string(), sha.clone())];
    if is_lfs(file) {
        let h = sha256_hex(bytes);
        headers.push(("ETag".into(), format!("\"{}\"", git_sha1(b"pointer"))));
        headers.push(("X-Linked-Etag".into(), format!("\"{h}\"")));
        headers.push(("X-Linked-Size".into(), bytes.len().to_string()));
        headers.push((
            "Location".into(),
            format!("http://127.0.0.1:{port}/cdn/{h}"),
        ));
        return Response {
            status: 302,
            headers,
            body: vec![],
        };
    }
    headers.push(("ETag".into(), format!("\"{}\"", git_sha1(bytes))));
    let body = if st.corrupt.contains(file) {
        damage(bytes)
    } else {
        bytes.clone()
    };
    let mut r = ranged(range, &body, bytes.len());
    r.headers.extend(headers);
    r
}

fn resolve(st: &State, repo: &str, rev: &str) -> Option<String> {
    if let Some(sha) = st.refs.get(&(repo.to_string(), rev.to_string())) {
        return Some(sha.clone());
    }
    find(st, repo, rev).map(|c| c.sha.clone())
}

fn find<'a>(st: &'a State, repo: &str, sha: &str) -> Option<&'a Commit> {
    st.repos.get(repo)?.iter().find(|c| c.sha == sha)
}

fn serve_conn(conn: TcpStream, state: &Mutex<State>, port: u16) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let resp = {
        let mut st = state.lock().unwrap();
        st.requests.push(format!("{method} {path}"));
        route(&mut st, path, range.as_deref(), port)
    };
    let mut out = conn;
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(&resp.body)?;
    out.flush()?;
    out.shutdown(std::net::Shutdown::Write)
}
