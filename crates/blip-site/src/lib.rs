//! The in-browser site: [`export`] writes a static folder (the demo page, blip-onnx's wasm + JS
//! package, onnxruntime-web's files, the model packages and a small gallery) and [`serve_static`]
//! serves it on loopback with the cross-origin isolation headers that wasm threads need.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use blip_package::{MANIFEST_FILE, Package, PackageError, Runtime};
use serde::Serialize;

/// Files of the npm package (web/) the site carries, besides dist/.
const PACKAGE_FILES: &[&str] = &["index.js", "index.d.ts", "package.json"];
/// What scripts/build-web.sh writes into web/dist/pkg (it also copies both onnxruntime-web
/// builds below into web/dist/ort), and export needs.
const BUILT_FILES: &[&str] = &["dist/pkg/blip_web.js", "dist/pkg/blip_web_bg.wasm"];
/// onnxruntime-web's wasm-only build (its module, then its runtime): what a site gets when no
/// package is made for WebGPU.
const ORT_WASM_BUILD: [&str; 3] = [
    "ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
];
/// Its WebGPU build (wasm too; the native WebGPU EP, asyncify), added for sites with a WebGPU
/// package; the page (boot.js) loads it only where the browser offers an adapter, since its wasm
/// kernels are slower. Not the default build's JSEP kernels: on Chromium's SwiftShader adapter
/// their MatMul of the cross K/V projection ([1,37,128]·[128,1024]) came out wrong, where this
/// build agrees with wasm (scripts/test-web.sh asserts its captions equal the CLI's).
const ORT_WEBGPU_BUILD: [&str; 3] = [
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
];
const DEMO_FILES: &[&str] = &["index.html", "boot.js", "demo.js", "demo.css"];

// EMBEDDED: the web/ files this binary carries (build.rs; empty unless built with them).
include!(concat!(env!("OUT_DIR"), "/embedded_web.rs"));

/// Where `export` takes the browser assets (the demo page, the npm package, web/dist) from.
#[derive(Debug, Clone)]
pub enum WebAssets {
    /// A web/ folder where scripts/build-web.sh ran.
    Dir(PathBuf),
    /// The copy built into this binary (release builds, or BLIP_ONNX_EMBED_WEB=1, made after
    /// scripts/build-web.sh): an installed binary needs no checkout.
    Embedded,
}

impl WebAssets {
    /// The assets built into this binary, if it carries them.
    pub fn embedded() -> Option<WebAssets> {
        (!EMBEDDED.is_empty()).then_some(WebAssets::Embedded)
    }

    fn find(rel: &str) -> Option<&'static [u8]> {
        EMBEDDED.iter().find(|(p, _)| *p == rel).map(|(_, b)| *b)
    }

    fn has(&self, rel: &str) -> bool {
        match self {
            WebAssets::Dir(d) => d.join(rel).is_file(),
            WebAssets::Embedded => Self::find(rel).is_some(),
        }
    }

    /// What a missing file is called in the error.
    fn name(&self, rel: &str) -> PathBuf {
        match self {
            WebAssets::Dir(d) => d.join(rel),
            WebAssets::Embedded => PathBuf::from(format!("(built into this binary) web/{rel}")),
        }
    }

    fn copy(&self, rel: &str, to: &Path) -> Result<u64> {
        match self {
            WebAssets::Dir(d) => copy(&d.join(rel), to),
            WebAssets::Embedded => {
                let bytes = Self::find(rel).ok_or_else(|| SiteError::AssetsMissing {
                    missing: self.name(rel),
                })?;
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::write(to, bytes).map_err(io(to))?;
                Ok(bytes.len() as u64)
            }
        }
    }

    /// Copies the folder `rel` (recursively) to `to`.
    fn copy_tree(&self, rel: &str, to: &Path) -> Result<u64> {
        match self {
            WebAssets::Dir(d) => copy_dir(&d.join(rel), to),
            WebAssets::Embedded => {
                let prefix = format!("{rel}/");
                let mut bytes = 0;
                for (p, _) in EMBEDDED.iter().filter(|(p, _)| p.starts_with(&prefix)) {
                    bytes += self.copy(p, &to.join(&p[prefix.len()..]))?;
                }
                Ok(bytes)
            }
        }
    }
}
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp"];

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(
        "the browser assets are not built: {missing} is missing. Run scripts/build-web.sh \
         (it builds blip-web for wasm32, runs wasm-bindgen and copies onnxruntime-web into web/dist), \
         or pass --web-dir to a folder where it ran"
    )]
    AssetsMissing { missing: PathBuf },
    #[error("{0} exists; pass --force to replace it")]
    Exists(PathBuf),
    #[error(
        "packages {first} and {second} would share the site folder packages/{name}: rename one"
    )]
    DuplicateName {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no package given")]
    NoPackage,
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, SiteError>;

fn io(path: &Path) -> impl Fn(std::io::Error) -> SiteError + '_ {
    move |source| SiteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct ExportOptions {
    pub packages: Vec<PathBuf>,
    /// Images the page shows and indexes for search (the folder's images, sorted by name).
    pub gallery: Option<PathBuf>,
    /// The browser assets: a web/ folder with a built dist/ (scripts/build-web.sh), or the
    /// binary's own copy.
    pub web: WebAssets,
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SitePackage {
    pub name: String,
    pub head: blip_package::Head,
    /// Relative to the site root.
    pub url: String,
    pub bytes: u64,
}

/// `site.json`: what the demo page loads.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SiteIndex {
    pub packages: Vec<SitePackage>,
    pub gallery: Vec<String>,
    /// The site carries onnxruntime-web's WebGPU build (a package is made for WebGPU).
    pub webgpu: bool,
}

fn copy(from: &Path, to: &Path) -> Result<u64> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::copy(from, to).map_err(io(from))
}

fn copy_dir(from: &Path, to: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let path = entry.map_err(io(from))?.path();
        let dest = to.join(path.file_name().unwrap_or_default());
        bytes += if path.is_dir() {
            copy_dir(&path, &dest)?
        } else {
            copy(&path, &dest)?
        };
    }
    Ok(bytes)
}

/// The images of a folder (not recursive), sorted by name.
pub fn gallery_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if path.is_file() && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the site to `out` (into a staging folder, moved into place when complete).
pub fn export(opts: &ExportOptions, out: &Path) -> Result<SiteIndex> {
    if opts.packages.is_empty() {
        return Err(SiteError::NoPackage);
    }
    let ort_files = ORT_WASM_BUILD
        .iter()
        .chain(&ORT_WEBGPU_BUILD)
        .map(|f| format!("dist/ort/{f}"));
    for f in BUILT_FILES.iter().map(|f| f.to_string()).chain(ort_files) {
        if !opts.web.has(&f) {
            return Err(SiteError::AssetsMissing {
                missing: opts.web.name(&f),
            });
        }
    }
    if out.exists() && !opts.force {
        return Err(SiteError::Exists(out.to_path_buf()));
    }
    let mut packages: Vec<(Package, String)> = Vec::new();
    for dir in &opts.packages {
        let package = Package::open(dir)?;
        let name = dir
            .canonicalize()
            .map_err(io(dir))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "package".into());
        if let Some((first, _)) = packages.iter().find(|(_, n)| *n == name) {
            return Err(SiteError::DuplicateName {
                name,
                first: first.dir.clone(),
                second: dir.clone(),
            });
        }
        packages.push((package, name));
    }
    let gallery = match &opts.gallery {
        Some(dir) => gallery_images(dir)?,
        None => Vec::new(),
    };
    let webgpu = packages
        .iter()
        .any(|(p, _)| Runtime::claimed(&p.manifest.runtimes).contains(&Runtime::Webgpu));
    let ort_builds: &[[&str; 3]] = if webgpu {
        &[ORT_WASM_BUILD, ORT_WEBGPU_BUILD]
    } else {
        &[ORT_WASM_BUILD]
    };
    let written = blip_package::write_staged(out, |tmp| -> Result<SiteIndex> {
        for f in DEMO_FILES {
            opts.web.copy(&format!("demo/{f}"), &tmp.join(f))?;
        }
        for f in PACKAGE_FILES {
            opts.web.copy(f, &tmp.join("blip").join(f))?;
        }
        opts.web.copy_tree("dist/pkg", &tmp.join("blip/dist/pkg"))?;
        for f in ort_builds.iter().flatten() {
            opts.web
                .copy(&format!("dist/ort/{f}"), &tmp.join("blip/dist/ort").join(f))?;
        }
        let mut index = SiteIndex {
            packages: Vec::new(),
            gallery: Vec::new(),
            webgpu,
        };
        for (package, name) in &packages {
            let dest = tmp.join("packages").join(name);
            let m = &package.manifest;
            let mut bytes = copy(&package.dir.join(MANIFEST_FILE), &dest.join(MANIFEST_FILE))?;
            bytes += copy(&package.tokenizer_path(), &dest.join(&m.tokenizer))?;
            for g in m.graphs.values() {
                bytes += copy(&package.dir.join(&g.file), &dest.join(&g.file))?;
                if let Some(data) = &g.data_file {
                    bytes += copy(&package.dir.join(data), &dest.join(data))?;
                }
            }
            index.packages.push(SitePackage {
                name: name.clone(),
                head: m.head,
                url: format!("packages/{name}/"),
                bytes,
            });
        }
        for img in &gallery {
            let name = img.file_name().unwrap_or_default().to_string_lossy();
            copy(img, &tmp.join("gallery").join(&*name))?;
            index.gallery.push(format!("gallery/{name}"));
        }
        let json = serde_json::to_string_pretty(&index).map_err(|e| SiteError::Io {
            path: tmp.join("site.json"),
            source: e.into(),
        })?;
        std::fs::write(tmp.join("site.json"), json + "\n").map_err(io(&tmp.join("site.json")))?;
        Ok(index)
    });
    written.map_err(|e| match e.into_io(out) {
        Ok(e) => e,
        Err(source) => SiteError::Io {
            path: out.to_path_buf(),
            source,
        },
    })
}

/// The router: files under `dir`, with COOP/COEP (cross-origin isolation: SharedArrayBuffer, so
/// onnxruntime-web can use threads) and `no-cache` (the page's Cache Storage is the cache).
pub fn router(dir: &Path) -> axum::Router {
    use axum::http::{HeaderName, HeaderValue};
    use tower_http::set_header::SetResponseHeaderLayer;
    let header = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::overriding(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    axum::Router::new()
        .fallback_service(tower_http::services::ServeDir::new(dir))
        .layer(header("cross-origin-opener-policy", "same-origin"))
        .layer(header("cross-origin-embedder-policy", "require-corp"))
        .layer(header("cache-control", "no-cache"))
}

/// Serves `dir` on 127.0.0.1:`port` (0: any free port) until Ctrl-C; `on_listening` gets the address.
pub fn serve_static(dir: &Path, port: u16, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    if !dir.join("index.html").is_file() {
        return Err(SiteError::Io {
            path: dir.join("index.html"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a site folder (no index.html); write one with `blip-onnx export-web`",
            ),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io(dir))?;
    runtime.block_on(async {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(io(dir))?;
        on_listening(listener.local_addr().map_err(io(dir))?);
        axum::serve(listener, router(dir))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(io(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_files_with_isolation_headers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.path().join("m.wasm"), b"\0asm").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let root = dir.path().to_path_buf();
        std::thread::spawn(move || serve_static(&root, 0, |a| tx.send(a).unwrap()));
        let addr = rx.recv().unwrap();
        let page = get(addr, "/").to_ascii_lowercase();
        assert!(page.starts_with("http/1.1 200"), "{page}");
        assert!(
            page.contains("cross-origin-opener-policy: same-origin"),
            "{page}"
        );
        assert!(
            page.contains("cross-origin-embedder-policy: require-corp"),
            "{page}"
        );
        assert!(page.ends_with("<p>hi</p>"), "{page}");
        let wasm = get(addr, "/m.wasm").to_ascii_lowercase();
        assert!(wasm.contains("content-type: application/wasm"), "{wasm}");
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn export_without_built_assets_says_how_to_build() {
        let web = tempfile::tempdir().unwrap();
        let out = web.path().join("site");
        let opts = ExportOptions {
            packages: vec![web.path().to_path_buf()],
            gallery: None,
            web: WebAssets::Dir(web.path().to_path_buf()),
            force: false,
        };
        let e = export(&opts, &out).unwrap_err().to_string();
        assert!(
            e.contains("scripts/build-web.sh") && e.contains("blip_web.js"),
            "{e}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn serve_refuses_a_folder_without_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let e = serve_static(dir.path(), 0, |_| {}).unwrap_err().to_string();
        assert!(e.contains("export-web"), "{e}");
    }
}
