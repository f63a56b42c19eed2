//! `Package::open` refuses what a hostile or damaged manifest asks for, naming the field or file,
//! and verifies graph checksums (once, then from the stamp).

use std::collections::BTreeMap;
use std::path::Path;

use blip_package::*;

fn spec(name: &str) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype: "float32".into(),
        dims: vec!["batch".into()],
    }
}

/// A caption package with fake graph bytes and true checksums (nothing here parses ONNX).
fn write_package(dir: &Path) -> Manifest {
    let mut graphs = BTreeMap::new();
    for role in [VISION_ENCODER, CROSS_KV, DECODER] {
        let file = format!("{role}.onnx");
        let bytes = format!("graph bytes of {role}").repeat(100);
        std::fs::write(dir.join(&file), &bytes).unwrap();
        graphs.insert(
            role.to_string(),
            GraphEntry {
                sha256: sha256_files(&[dir.join(&file)]).unwrap(),
                file,
                data_file: None,
                bytes: bytes.len() as u64,
                precision: blip_package::Precision::Fp32,
                quantization: None,
                optimization: None,
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
            },
        );
    }
    std::fs::write(dir.join(TOKENIZER_FILE), "{}").unwrap();
    let m = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        producer: Producer {
            name: "test".into(),
            version: "0".into(),
        },
        source: Source {
            name: "tiny".into(),
            format: "hf-safetensors".into(),
            sha256: "0".repeat(64),
            files: vec![],
            interpolated_from_image_size: None,
        },
        family: blip_package::Family::Blip,
        head: blip_package::Head::Caption,
        model: ModelDims {
            vision_hidden_size: 32,
            vision_layers: 2,
            vision_heads: 4,
            patch_size: 8,
            image_size: 32,
            image_tokens: 17,
            text_hidden_size: 32,
            text_layers: 2,
            text_heads: 4,
            vocab_size: 30524,
            max_position_embeddings: 64,
            embed_dim: None,
            query_tokens: None,
        },
        preprocess: Preprocess::blip(32),
        tokens: Tokens {
            bos: 30522,
            enc: 30523,
            cls: 101,
            sep: 102,
            eos: 102,
            pad: 0,
            max_text_tokens: 35,
        },
        opset: 17,
        precision: blip_package::Precision::Fp32,
        tokenizer: TOKENIZER_FILE.into(),
        runtimes: Vec::new(),
        graphs,
    };
    m.save(dir).unwrap();
    m
}

type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

fn open_err(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let path = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let saved = v.clone();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    let err = Package::open(dir)
        .expect_err("bad manifest opened")
        .to_string();
    std::fs::write(&path, serde_json::to_string(&saved).unwrap()).unwrap();
    err
}

#[test]
fn a_good_package_opens() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_package(dir.path());
    assert_eq!(Package::open(dir.path()).unwrap().manifest, m);
}

#[test]
fn nonsense_values_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path());
    let d = dir.path();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "preprocess.image_size",
            Box::new(|v| v["preprocess"]["image_size"] = 0.into()),
            "is 0",
        ),
        (
            "model.image_size",
            Box::new(|v| v["model"]["image_size"] = 0.into()),
            "is 0",
        ),
        (
            "model.vision_hidden_size",
            Box::new(|v| v["model"]["vision_hidden_size"] = 0.into()),
            "is 0",
        ),
        (
            "model.text_heads",
            Box::new(|v| v["model"]["text_heads"] = 5.into()),
            "5 heads do not divide the hidden size 32",
        ),
        (
            "model.vision_heads",
            Box::new(|v| v["model"]["vision_heads"] = 3.into()),
            "do not divide",
        ),
        (
            "model.patch_size",
            Box::new(|v| v["model"]["patch_size"] = 5.into()),
            "does not divide the image size 32",
        ),
        (
            "model.image_tokens",
            Box::new(|v| v["model"]["image_tokens"] = 50.into()),
            "gives 17",
        ),
        (
            "preprocess.image_size",
            Box::new(|v| v["preprocess"]["image_size"] = 48.into()),
            "the model takes 32 px",
        ),
        (
            "preprocess.image_size",
            Box::new(|v| {
                v["preprocess"]["image_size"] = 100000.into();
                v["model"]["image_size"] = 100000.into();
            }),
            "over the 4096 px limit",
        ),
        (
            "tokens.max_text_tokens",
            Box::new(|v| v["tokens"]["max_text_tokens"] = 512.into()),
            "over the model's 64 positions",
        ),
        (
            "tokens.max_text_tokens",
            Box::new(|v| v["tokens"]["max_text_tokens"] = 2.into()),
            "no room",
        ),
        (
            "tokens.bos",
            Box::new(|v| v["tokens"]["bos"] = 99999.into()),
            "outside the vocabulary",
        ),
        (
            "tokens.pad",
            Box::new(|v| v["tokens"]["pad"] = (-1).into()),
            "outside the vocabulary",
        ),
        (
            "preprocess.std",
            Box::new(|v| v["preprocess"]["std"] = serde_json::json!([0.0, 1.0, 1.0])),
            "std must be positive",
        ),
        (
            "preprocess.rescale",
            Box::new(|v| v["preprocess"]["rescale"] = 0.0.into()),
            "not a positive number",
        ),
        (
            "head",
            Box::new(|v| v["head"] = "segmentation".into()),
            "is not one of caption, retrieval, vqa",
        ),
        (
            "precision",
            Box::new(|v| v["precision"] = "int3".into()),
            "\"int3\" is not one of fp32, int8, int4, fp16, mixed",
        ),
        (
            "graphs.vision_encoder.precision",
            Box::new(|v| v["graphs"]["vision_encoder"]["precision"] = "bf16".into()),
            "\"bf16\" is not one of fp32, int8, int4, fp16, mixed",
        ),
    ];
    for (field, edit, says) in cases {
        let err = open_err(d, edit);
        // Validation rules say `field …`, type errors from parsing `field: …`.
        assert!(
            err.contains(&format!("invalid manifest: {field} "))
                || err.contains(&format!("invalid manifest: {field}: ")),
            "{field}: {err}"
        );
        assert!(err.contains(says), "{field}: {err}");
        assert!(err.contains("blip.json"), "names the manifest: {err}");
    }
}

#[test]
fn paths_leaving_the_package_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir(&pkg).unwrap();
    write_package(&pkg);
    std::fs::write(dir.path().join("secret.onnx"), b"outside").unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "graphs.decoder.file",
            "../../../../etc/hostname".into(),
            "`..` leaves the package folder",
        ),
        (
            "graphs.decoder.file",
            "/etc/hostname".into(),
            "absolute paths are not allowed",
        ),
        ("graphs.decoder.file", "".into(), "the path is empty"),
        (
            "graphs.decoder.data_file",
            "../secret.onnx".into(),
            "`..` leaves",
        ),
        ("tokenizer", "/etc/passwd".into(), "absolute paths"),
    ];
    for (field, value, says) in cases {
        let err = open_err(&pkg, |v| match field {
            "tokenizer" => v["tokenizer"] = value.clone(),
            f => {
                let key = f.rsplit('.').next().unwrap();
                v["graphs"]["decoder"][key] = value.clone();
            }
        });
        assert!(
            err.contains(&format!("invalid manifest: {field} = {value}")),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
    }
    // A symlink inside the package that points out of it.
    std::os::unix::fs::symlink(dir.path().join("secret.onnx"), pkg.join("link.onnx")).unwrap();
    let err = open_err(&pkg, |v| {
        v["graphs"]["decoder"]["file"] = "link.onnx".into()
    });
    assert!(err.contains("graphs.decoder.file = \"link.onnx\""), "{err}");
    assert!(
        err.contains("is a symlink to") && err.contains("outside the package"),
        "{err}"
    );
}

#[test]
fn a_changed_graph_fails_its_checksum_at_open_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path());
    // First open hashes and stamps; the stamp records every graph.
    Package::open(dir.path()).unwrap();
    let stamp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(VERIFIED_STAMP)).unwrap()).unwrap();
    assert_eq!(stamp["files"].as_object().unwrap().len(), 3);
    // Same size, other bytes (a swapped graph): the stamp must not hide it.
    let path = dir.path().join("decoder.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = Package::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("decoder.onnx") && err.contains("graph decoder fails its checksum"),
        "{err}"
    );
    // Truncated.
    std::fs::write(&path, &bytes[..10]).unwrap();
    let err = Package::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("fails its checksum"), "{err}");
    // `check` opens without hashing and reports checksums itself.
    Package::open_unverified(dir.path()).unwrap();
}

#[test]
fn the_stamp_is_trusted_only_for_unchanged_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_package(dir.path());
    Package::open(dir.path()).unwrap();
    // A stamp recording another checksum for the same file (the manifest changed) is not trusted:
    // edit the manifest's checksum and the open must fail even though the file is unchanged.
    let mut bad = m.clone();
    bad.graphs.get_mut(DECODER).unwrap().sha256 = "f".repeat(64);
    bad.save(dir.path()).unwrap();
    assert!(
        Package::open(dir.path())
            .unwrap_err()
            .to_string()
            .contains("fails its checksum")
    );
    m.save(dir.path()).unwrap();
    Package::open(dir.path()).unwrap();
    // A read-only package still opens (verified every time, no stamp written), also as root.
    let stamp = dir.path().join(VERIFIED_STAMP);
    std::fs::remove_file(&stamp).unwrap();
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(dir.path(), perms.clone()).unwrap();
    let (writable, opened) = without_permission_override(|| {
        let probe = std::fs::write(dir.path().join("probe"), b"").is_ok();
        (probe, Package::open(dir.path()).map(|_| ()))
    });
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    assert!(!writable, "the read-only folder took a new file");
    opened.unwrap();
    assert!(
        !stamp.exists(),
        "a stamp was written into a read-only package"
    );
    // Writable again: the next open stamps it.
    Package::open(dir.path()).unwrap();
    assert!(stamp.is_file());
}

/// Runs `f` on a thread without the capabilities that let root ignore file permissions
/// (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), so that a read-only folder is read-only
/// to it when the tests run as root. Capabilities belong to a thread on Linux: the rest of the
/// process keeps them. For a user without them it changes nothing.
fn without_permission_override<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // _LINUX_CAPABILITY_VERSION_3 (two Data words); pid 0: the calling thread.
            let mut header = Header {
                version: 0x2008_0522,
                pid: 0,
            };
            let mut data = [Data::default(); 2];
            // SAFETY: capget/capset with a valid header and two data words, as the ABI asks.
            let got = unsafe {
                libc::syscall(
                    libc::SYS_capget,
                    &mut header as *mut Header,
                    data.as_mut_ptr(),
                )
            };
            assert_eq!(got, 0, "capget: {}", std::io::Error::last_os_error());
            data[0].effective &= !((1 << 1) | (1 << 2) | (1 << 3));
            // SAFETY: as above; only this thread's effective set shrinks.
            let set = unsafe {
                libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr())
            };
            assert_eq!(set, 0, "capset: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}
