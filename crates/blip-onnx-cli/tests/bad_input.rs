//! The bad-input suite: the real `blip-onnx` binary over hostile and careless inputs (images, texts,
//! checkpoints, packages, datasets, quantize/optimize inputs). Every case asserts the exit code,
//! that stderr names the problem and the item, that nothing partial (output, staging folder, lock)
//! is left next to the output, and, for the bomb cases, the child's peak RSS (from `wait4`).
//!
//! Cases run in groups (one test each, so the groups run in parallel); the converted tiny
//! packages are made once per group and shared by its cases.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_blip-onnx");

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// What a run of the binary gave.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
    peak_rss_mb: u64,
}

/// Runs `blip-onnx ARGS` (optionally under `prlimit --fsize`, with SIGXFSZ ignored so that an
/// over-limit write fails like a full disk instead of killing the process), reaping it with
/// `wait4` to read its own peak RSS. A run over 120 s is killed and fails the case (a hang).
// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run(args: &[String], fsize: Option<u64>) -> Ran {
    let mut cmd = match fsize {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("trap '' XFSZ; exec prlimit --fsize={n} \"$@\""))
                .arg("sh")
                .arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let mut child = cmd
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = String::new();
        out.read_to_string(&mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = String::new();
        err.read_to_string(&mut v).ok();
        v
    });
    let watchdog = std::thread::spawn(move || {
        for _ in 0..1200 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            // SAFETY: signal 0 only probes whether the pid still exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return false;
            }
        }
        // SAFETY: our own child, not yet reaped (the pid cannot have been reused).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        true
    });
    let mut status = 0;
    // SAFETY: plain FFI call on our child's pid with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    let hung = watchdog.join().unwrap();
    assert!(!hung, "blip-onnx {args:?} hung (killed after 120 s)");
    assert!(
        libc::WIFEXITED(status),
        "blip-onnx {args:?} died by signal {} (a crash)",
        libc::WTERMSIG(status)
    );
    Ran {
        code: libc::WEXITSTATUS(status),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        peak_rss_mb: usage.ru_maxrss as u64 / 1024,
    }
}

/// One case: the command, what it must answer, and what must not be left behind.
struct Case {
    name: &'static str,
    args: Vec<String>,
    code: i32,
    /// All must appear in stderr (the problem and the item).
    stderr: Vec<String>,
    /// All must appear in stdout (the other items still answered).
    stdout: Vec<String>,
    /// Must not exist afterwards (a refused output).
    absent: Vec<PathBuf>,
    /// Folders that must hold no staging entries, locks or `.partial` files afterwards.
    clean: Vec<PathBuf>,
    max_rss_mb: Option<u64>,
    fsize: Option<u64>,
}

fn case(name: &'static str, args: &[&str]) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.to_string()).collect(),
        code: 1,
        stderr: vec![],
        stdout: vec![],
        absent: vec![],
        clean: vec![],
        max_rss_mb: None,
        fsize: None,
    }
}

impl Case {
    fn code(mut self, c: i32) -> Self {
        self.code = c;
        self
    }
    fn says(mut self, parts: &[&str]) -> Self {
        self.stderr.extend(parts.iter().map(|p| p.to_string()));
        self
    }
    fn answers(mut self, parts: &[&str]) -> Self {
        self.stdout.extend(parts.iter().map(|p| p.to_string()));
        self
    }
    /// `out` must not exist and its folder must be clean.
    fn no_output(mut self, out: &Path) -> Self {
        self.absent.push(out.to_path_buf());
        self.clean.push(out.parent().unwrap().to_path_buf());
        self
    }
    fn clean(mut self, dir: &Path) -> Self {
        self.clean.push(dir.to_path_buf());
        self
    }
    fn rss_under(mut self, mb: u64) -> Self {
        self.max_rss_mb = Some(mb);
        self
    }
    fn fsize(mut self, bytes: u64) -> Self {
        self.fsize = Some(bytes);
        self
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.filter_map(|e| {
        let name = e.ok()?.file_name().to_string_lossy().into_owned();
        (name.starts_with(".blip-staging-")
            || name.starts_with(".blip-lock-")
            || name.starts_with(".blip-old-")
            || name.contains(".partial"))
        .then_some(name)
    })
    .collect()
}

/// Runs every case and reports all failures together.
fn run_cases(cases: Vec<Case>) -> usize {
    let n = cases.len();
    let mut failures = Vec::new();
    for c in cases {
        let r = run(&c.args, c.fsize);
        let mut why = Vec::new();
        if r.code != c.code {
            why.push(format!("exit {} (want {})", r.code, c.code));
        }
        for p in &c.stderr {
            if !r.stderr.contains(p.as_str()) {
                why.push(format!("stderr lacks {p:?}"));
            }
        }
        for p in &c.stdout {
            if !r.stdout.contains(p.as_str()) {
                why.push(format!("stdout lacks {p:?}"));
            }
        }
        if r.stderr.contains("panicked") || r.stderr.contains("RUST_BACKTRACE") {
            why.push("panicked".into());
        }
        // ONNX Runtime's own log lines must never be what the user gets.
        if r.stderr.contains("onnxruntime") && r.stderr.contains("[E:") {
            why.push("ONNX Runtime log line reached the user".into());
        }
        for a in &c.absent {
            if a.exists() {
                why.push(format!("{} was left", a.display()));
            }
        }
        for d in &c.clean {
            let left = leftovers(d);
            if !left.is_empty() {
                why.push(format!("left in {}: {left:?}", d.display()));
            }
        }
        if let Some(mb) = c.max_rss_mb
            && r.peak_rss_mb > mb
        {
            why.push(format!("peak RSS {} MB > {mb} MB", r.peak_rss_mb));
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n  args: {:?}\n  stderr: {}\n  stdout: {}",
                c.name,
                why.join("; "),
                c.args,
                r.stderr.trim(),
                r.stdout.chars().take(300).collect::<String>()
            ));
        }
    }
    println!("{n} cases run");
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    n
}

fn convert(head: &str, out: &Path) -> PathBuf {
    let ck = fixture(&format!("models/tiny-{head}"));
    let r = run(&["convert".into(), s(&ck), "-o".into(), s(out)], None);
    assert_eq!(r.code, 0, "convert {head}: {}", r.stderr);
    out.to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        std::fs::copy(e.path(), to.join(name)).unwrap();
    }
}

fn edit_manifest(pkg: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = pkg.join("blip.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Bad image files, each named after what is wrong with it.
struct Images {
    good: PathBuf,
    cut_jpg: PathBuf,
    files: Vec<(&'static str, PathBuf, &'static str)>,
}

fn bad_images(dir: &Path) -> Images {
    let w = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let read = |rel: &str| std::fs::read(fixture(rel)).unwrap();
    let jpg = read("images/grace_hopper.jpg");
    let png = read("images/synthetic_a.png");
    let cut_jpg = w("cut.jpg", &jpg[..jpg.len() / 2]);
    let huge = dir.join("huge.png");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let fifo = dir.join("fifo.png");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let folder = dir.join("folder.png");
    std::fs::create_dir(&folder).unwrap();
    let files = vec![
        (
            "truncated JPEG",
            cut_jpg.clone(),
            "corrupt or truncated image",
        ),
        (
            "JPEG cut before its scan",
            w("head.jpg", &jpg[..400]),
            "corrupt or truncated image",
        ),
        (
            "JPEG missing only its end marker",
            w("noeoi.jpg", &jpg[..jpg.len() - 2]),
            "without its end-of-image marker",
        ),
        ("empty file", w("empty.png", b""), "empty file"),
        (
            "text named .png",
            w("notes.png", "not pixels\n".repeat(500).as_bytes()),
            "not a recognised image format",
        ),
        (
            "JPEG signature then garbage",
            w("garbage.jpg", &[0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3, 4, 5, 6]),
            "corrupt or truncated image",
        ),
        (
            "truncated PNG",
            w("cut.png", &png[..png.len() / 2]),
            "corrupt or truncated image",
        ),
        (
            "PNG header only",
            w("header.png", &blip_testkit::png_header(64, 64)),
            "corrupt or truncated image",
        ),
        (
            "decompression bomb",
            w("bomb.png", &blip_testkit::png_header(100_000, 100_000)),
            "decompression-bomb guard",
        ),
        ("1 GiB file", huge, "over the limit of 67108864 bytes"),
        ("FIFO", fifo, "not a regular file"),
        ("folder", folder, "not a regular file"),
        (
            "missing file",
            dir.join("missing.png"),
            "No such file or directory",
        ),
        (
            "truncated GIF",
            w("cut.gif", &read("images/formats/palette.gif")[..200]),
            "corrupt or truncated image",
        ),
        (
            "truncated WebP",
            w("cut.webp", &read("images/formats/lossless.webp")[..100]),
            "corrupt or truncated image",
        ),
        (
            "truncated BMP",
            w("cut.bmp", &read("images/formats/plain.bmp")[..300]),
            "corrupt or truncated image",
        ),
    ];
    Images {
        good: fixture("images/synthetic_a.png"),
        cut_jpg,
        files,
    }
}

#[test]
fn bad_images_fail_alone_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let caption = convert("caption", &dir.path().join("caption"));
    let retrieval = convert("retrieval", &dir.path().join("retrieval"));
    let vqa = convert("vqa", &dir.path().join("vqa"));
    let imgs = bad_images(dir.path());
    let good = s(&imgs.good);
    let mut cases = Vec::new();
    for (name, file, problem) in &imgs.files {
        let f = s(file);
        let short = file.file_name().unwrap().to_str().unwrap();
        // Each bad image next to a good one: the good one is still captioned, exit 3.
        let mut c = case(
            name,
            &["caption", "-p", &s(&caption), "--beams", "1", &good, &f],
        )
        .code(3)
        .says(&[short, problem])
        .answers(&["synthetic_a.png\t", &format!("{short}\tERROR")]);
        if ["decompression bomb", "1 GiB file"].contains(name) {
            c = c.rss_under(300);
        }
        cases.push(c);
    }
    let cut = s(&imgs.cut_jpg);
    cases.extend([
        case(
            "embed: a corrupt image among good ones",
            &["embed", "-p", &s(&retrieval), "--image", &good, &cut, &good],
        )
        .code(3)
        .says(&["cut.jpg", "truncated"])
        .answers(&["synthetic_a.png\t0.", "cut.jpg\tERROR"]),
        case(
            "embed: a bomb only",
            &[
                "embed",
                "-p",
                &s(&retrieval),
                "--image",
                &s(&dir.path().join("bomb.png")),
            ],
        )
        .code(3)
        .says(&["bomb.png", "decompression-bomb guard"])
        .rss_under(300),
        case(
            "itm: a corrupt image",
            &["itm", "-p", &s(&retrieval), &cut, "a dog"],
        )
        .says(&["cut.jpg", "truncated"]),
        case(
            "vqa: a corrupt image",
            &["vqa", "-p", &s(&vqa), &cut, "what is it?"],
        )
        .says(&["cut.jpg", "truncated"]),
        case(
            "embed: a caption package has no image embeddings",
            &["embed", "-p", &s(&caption), "--image", &good],
        )
        .says(&["has no image embeddings"]),
    ]);
    run_cases(cases);
}

#[test]
fn bad_texts_and_options_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let caption = convert("caption", &dir.path().join("caption"));
    let retrieval = convert("retrieval", &dir.path().join("retrieval"));
    let vqa = convert("vqa", &dir.path().join("vqa"));
    let (c, r, v) = (s(&caption), s(&retrieval), s(&vqa));
    let good = s(&fixture("images/synthetic_a.png"));
    let empty_answers = dir.path().join("answers.txt");
    std::fs::write(&empty_answers, "\n  \n").unwrap();
    let long = "a dog on a beach ".repeat(2000);
    // Under the request layer's 2048-byte bound, over the model's 64 positions.
    let long_prompt = "a dog on a beach ".repeat(20);
    let long_answers = dir.path().join("long-answers.txt");
    std::fs::write(
        &long_answers,
        format!("yes\nno\n{}\n", ["word"; 100].join(" ")),
    )
    .unwrap();
    let cases = vec![
        case(
            "embed: an empty text among several",
            &["embed", "-p", &r, "--text", "a dog", "  ", "a cat"],
        )
        .code(3)
        .says(&["text 2 of 3", "empty text"])
        .answers(&["a dog\t", "a cat\t"]),
        case("embed: one empty text", &["embed", "-p", &r, "--text", ""])
            .code(3)
            .says(&["text 1 of 1", "empty text"]),
        case(
            "embed: a very long text is truncated, not refused",
            &["embed", "-p", &r, "--text", &long],
        )
        .code(0)
        .answers(&["a dog on a beach"]),
        case(
            "itm: an empty text",
            &["itm", "-p", &r, &good, "a dog", "   "],
        )
        .says(&["--texts[1]: is empty"]),
        case(
            "vqa: an empty question",
            &["vqa", "-p", &v, &good, "what is it?", ""],
        )
        .says(&["--questions[1]: is empty"]),
        case(
            "vqa: an answer list with no answers",
            &[
                "vqa",
                "-p",
                &v,
                &good,
                "what?",
                "--answers",
                &s(&empty_answers),
            ],
        )
        .says(&["answers.txt", "no answers in the file"]),
        case(
            "vqa: a missing answer list",
            &[
                "vqa",
                "-p",
                &v,
                &good,
                "what?",
                "--answers",
                "/no/such/list.txt",
            ],
        )
        .says(&["/no/such/list.txt: No such file or directory"]),
        case(
            "vqa: an answer candidate over the model's positions",
            &[
                "vqa",
                "-p",
                &v,
                &good,
                "what?",
                "--answers",
                &s(&long_answers),
            ],
        )
        .says(&["text 3 of 3", "102 tokens, over the model's 64 positions"]),
        case(
            "caption: a prompt over the model's positions",
            &["caption", "-p", &c, "--prompt", &long_prompt, &good],
        )
        .says(&["prompt", "101 tokens, over the model's 64 positions"]),
        case(
            "caption: --max-length over the model's positions",
            &["caption", "-p", &c, "--max-length", "65", &good],
        )
        .says(&["--max-length: 65 is out of range: 2 to 64 (the model's positions)"]),
        case(
            "caption: zero beams",
            &["caption", "-p", &c, "--beams", "0", &good],
        )
        .says(&["--beams: 0 is out of range: 1 (greedy) to 16"]),
        case(
            "caption: max length 1",
            &["caption", "-p", &c, "--max-length", "1", &good],
        )
        .says(&["--max-length: 1 is out of range: 2 to 64"]),
        case(
            "caption: unknown device",
            &["caption", "-p", &c, "--device", "tpu", &good],
        )
        .says(&["--device \"tpu\"", "expected cpu, cuda or cuda:N"]),
        case("embed: nothing to embed", &["embed", "-p", &r]).says(&["give --image"]),
        case(
            "caption: no such package",
            &["caption", "-p", "/no/such/pkg", &good],
        )
        .says(&["/no/such/pkg", "not a blip-onnx package"]),
    ];
    run_cases(cases);
}

#[test]
fn bad_checkpoints_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out").join("pkg");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = s(&out);
    // Damaged copies of the tiny caption checkpoint.
    let ck = |name: &str, edit: &dyn Fn(&Path)| {
        let p = d.join(name);
        copy_dir(&fixture("models/tiny-caption"), &p);
        edit(&p);
        p
    };
    let truncated = ck("truncated", &|p| {
        let f = p.join("model.safetensors");
        let b = std::fs::read(&f).unwrap();
        std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    });
    let bad_config = ck("bad-config", &|p| {
        std::fs::write(p.join("config.json"), "{not json").unwrap()
    });
    let zero_hidden = ck("zero-hidden", &|p| {
        let f = p.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        v["text_config"]["hidden_size"] = 0.into();
        std::fs::write(&f, v.to_string()).unwrap();
    });
    // BLIP-2 and InstructBLIP folders (their configs over BLIP weights: the config is read
    // first) are refused by name.
    let family = |name: &str, config: &'static str| {
        ck(name, &move |p: &Path| {
            std::fs::write(p.join("config.json"), config).unwrap()
        })
    };
    let blip2_opt = family(
        "blip2-opt",
        r#"{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "opt"}}"#,
    );
    let blip2_vicuna = family(
        "blip2-vicuna",
        r#"{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"], "text_config": {"model_type": "llama"}}"#,
    );
    let instructblip = family(
        "instructblip",
        r#"{"model_type": "instructblip", "architectures": ["InstructBlipForConditionalGeneration"], "text_config": {"model_type": "t5"}}"#,
    );
    let garbage_st = ck("garbage-st", &|p| {
        std::fs::write(p.join("model.safetensors"), [0xFFu8; 64]).unwrap()
    });
    let pth = fixture("models/tiny-caption-pth/model_tiny_caption.pth");
    let pth_bytes = std::fs::read(&pth).unwrap();
    let cut_pth = d.join("cut.pth");
    std::fs::write(&cut_pth, &pth_bytes[..pth_bytes.len() / 3]).unwrap();
    let random_pth = d.join("random.pth");
    std::fs::write(&random_pth, "x".repeat(4096)).unwrap();
    let not_tok = d.join("config-as-tokenizer.json");
    std::fs::write(&not_tok, r#"{"model_type": "blip", "vocab_size": 30524}"#).unwrap();
    let broken_tok = d.join("broken-tokenizer.json");
    std::fs::write(&broken_tok, r#"{"model": {"type": "WordPiece""#).unwrap();
    let empty = d.join("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    let file_parent = d.join("a-file");
    std::fs::write(&file_parent, "x").unwrap();
    let good = s(&fixture("models/tiny-caption"));
    let cfg = s(&fixture("models/tiny-caption/config.json"));
    let conv = |ck: &str, extra: &[&str]| {
        let mut a = vec!["convert", ck, "-o", &o];
        a.extend(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let mk = |name: &'static str, args: Vec<String>| Case {
        args,
        ..case(name, &[])
    };
    let cases = vec![
        mk("missing checkpoint", conv("/no/such/checkpoint", &[]))
            .says(&["/no/such/checkpoint: no such file or folder"])
            .no_output(&out),
        mk("empty folder", conv(&s(&empty), &[]))
            .says(&["empty-dir: no config.json"])
            .no_output(&out),
        mk("truncated safetensors", conv(&s(&truncated), &[]))
            .says(&["model.safetensors: truncated or corrupt safetensors file"])
            .no_output(&out),
        mk("garbage safetensors", conv(&s(&garbage_st), &[]))
            .says(&["model.safetensors: truncated or corrupt safetensors file: header too large"])
            .no_output(&out),
        mk("config.json not JSON", conv(&s(&bad_config), &[]))
            .says(&["bad-config/config.json: invalid config.json"])
            .no_output(&out),
        mk("config with hidden_size 0", conv(&s(&zero_hidden), &[]))
            .says(&["text hidden_size is 0"])
            .no_output(&out),
        mk("BLIP-2 with OPT", conv(&s(&blip2_opt), &[]))
            .says(&["BLIP-2 (Blip2ForConditionalGeneration, opt language model) is not supported"])
            .no_output(&out),
        mk("BLIP-2 with a LLaMA (Vicuna) language model", conv(&s(&blip2_vicuna), &[]))
            .says(&["llama language model) is not supported: only OPT and Flan-T5"])
            .no_output(&out),
        mk("InstructBLIP", conv(&s(&instructblip), &[]))
            .says(&["InstructBLIP (InstructBlipForConditionalGeneration, t5 language model) is not supported"])
            .no_output(&out),
        mk(
            "pth without a model key",
            conv(&s(&fixture("models/bad-pth-no-model-key.pth")), &["--config", &cfg]),
        )
        .says(&["bad-pth-no-model-key.pth: the checkpoint has no \"model\" key"])
        .no_output(&out),
        mk("truncated pth", conv(&s(&cut_pth), &["--config", &cfg]))
            .says(&["cut.pth: not a readable torch checkpoint: not a zip archive"])
            .no_output(&out),
        mk("random bytes named .pth", conv(&s(&random_pth), &["--config", &cfg]))
            .says(&["random.pth: not a readable torch checkpoint: not a zip archive"])
            .no_output(&out),
        mk(
            "--tokenizer is valid JSON but not a tokenizer",
            conv(&good, &["--tokenizer", &s(&not_tok)]),
        )
        .says(&["config-as-tokenizer.json", "valid JSON but not a tokenizer"])
        .no_output(&out),
        mk(
            "--tokenizer is broken JSON",
            conv(&good, &["--tokenizer", &s(&broken_tok)]),
        )
        .says(&["broken-tokenizer.json", "not valid JSON"])
        .no_output(&out),
        mk(
            "--tokenizer folder without a tokenizer",
            conv(&good, &["--tokenizer", &s(&empty)]),
        )
        .says(&["no tokenizer found", "empty-dir"])
        .no_output(&out),
        mk("--config is a device", conv(&good, &["--config", "/dev/zero"]))
            .says(&["/dev/zero", "not a regular file"])
            .no_output(&out),
        mk("--config not JSON", conv(&good, &["--config", &s(&broken_tok)]))
            .says(&["broken-tokenizer.json: invalid config.json"])
            .no_output(&out),
        mk(
            "--config of another model",
            conv(&good, &["--config", &s(&not_tok)]),
        )
        .says(&[
            "vision_model.embeddings.patch_embedding.weight has shape [32, 3, 8, 8], expected [768, 3, 16, 16]",
        ])
        .no_output(&out),
        mk(
            "output under a file",
            vec![
                "convert".into(),
                good.clone(),
                "-o".into(),
                s(&file_parent.join("pkg")),
            ],
        )
        .says(&["a-file: File exists"]),
        // The message names the output file being written, not the input or a temp path.
        mk("disk full while writing", conv(&good, &[]))
            .fsize(20_000)
            .says(&[&format!("{o}/tokenizer.json: File too large")])
            .no_output(&out),
    ];
    run_cases(cases);
}

#[test]
fn leftovers_of_a_killed_convert_are_swept_and_writers_do_not_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    // What a SIGKILLed writer leaves: its staging folder (dead pid) and an unlocked lock file.
    let stale = dir.path().join(".blip-staging-pkg-4000000");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("vision_encoder.onnx"), "half a graph").unwrap();
    std::fs::write(dir.path().join(".blip-lock-pkg"), "pid 4000000").unwrap();
    let ck = s(&fixture("models/tiny-caption"));
    // A live writer holding the lock: a second writer is refused at once, nothing written.
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .open(dir.path().join(".blip-lock-pkg"))
        .unwrap();
    lock.lock().unwrap();
    let n = run_cases(vec![
        case(
            "convert while another writer holds the output",
            &["convert", &ck, "-o", &s(&out)],
        )
        .says(&["being written by another process", "pid 4000000"]),
    ]);
    assert!(!out.exists() && stale.exists());
    lock.unlock().unwrap();
    drop(lock);
    let n = n + run_cases(vec![
        case(
            "convert after a killed one",
            &["convert", &ck, "-o", &s(&out)],
        )
        .code(0)
        .clean(dir.path()),
    ]);
    assert!(out.join("blip.json").is_file());
    assert!(
        !stale.exists(),
        "the killed writer's staging folder is swept"
    );
    assert_eq!(n, 2);
}

#[test]
fn a_convert_killed_with_sigkill_leaves_a_staging_folder_the_next_run_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    let ck = s(&fixture("models/tiny-caption"));
    let staging_of = |pid: u32| dir.path().join(format!(".blip-staging-pkg-{pid}"));
    // Kill the writer while its staging folder exists; a run that finishes first is retried.
    let mut killed = None;
    for _ in 0..50 {
        let mut child = Command::new(BIN)
            .args(["convert", &ck, "-o", &s(&out)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let staging = staging_of(child.id());
        loop {
            if staging.join("tokenizer.json").exists() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed = Some(staging.clone());
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if killed.is_some() {
            break;
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    let staging = killed.expect("no run was caught while writing");
    assert!(
        staging.is_dir() && !out.exists(),
        "a killed writer leaves only its staging folder"
    );
    let n = run_cases(vec![
        case(
            "convert after a SIGKILLed one",
            &["convert", &ck, "-o", &s(&out)],
        )
        .code(0)
        .clean(dir.path()),
    ]);
    assert_eq!(n, 1);
    assert!(!staging.exists() && out.join("blip.json").is_file());
}

#[test]
fn damaged_and_hostile_packages_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let caption = convert("caption", &d.join("caption"));
    let vqa = convert("vqa", &d.join("vqa"));
    let good = s(&fixture("images/synthetic_a.png"));
    std::fs::write(d.join("outside.onnx"), "not yours").unwrap();
    let variant = |name: &str, edit: &dyn Fn(&Path)| {
        let p = d.join(name);
        copy_dir(&caption, &p);
        edit(&p);
        s(&p)
    };
    let m = |name: &str, edit: fn(&mut serde_json::Value)| {
        variant(name, &|p: &Path| edit_manifest(p, edit))
    };
    let cap = |pkg: &str| {
        ["caption", "-p", pkg, "--beams", "1", good.as_str()]
            .map(String::from)
            .to_vec()
    };
    let mk = |name: &'static str, args: Vec<String>| Case {
        args,
        ..case(name, &[])
    };
    let swapped = variant("swapped", &|p: &Path| {
        std::fs::copy(vqa.join("decoder.onnx"), p.join("decoder.onnx")).unwrap();
    });
    let truncated = variant("truncated", &|p: &Path| {
        let f = p.join("decoder.onnx");
        let b = std::fs::read(&f).unwrap();
        std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    });
    let symlinked = variant("symlinked", &|p: &Path| {
        std::os::unix::fs::symlink(p.join("../outside.onnx"), p.join("link.onnx")).unwrap();
        edit_manifest(p, |v| v["graphs"]["decoder"]["file"] = "link.onnx".into());
    });
    let not_tok = variant("not-a-tokenizer", &|p: &Path| {
        std::fs::write(p.join("tokenizer.json"), r#"{"hello": "world"}"#).unwrap();
    });
    let no_graph = variant("no-graph", &|p: &Path| {
        std::fs::remove_file(p.join("cross_kv.onnx")).unwrap();
    });
    let bad_json = variant("bad-json", &|p: &Path| {
        std::fs::write(p.join("blip.json"), "{\"format\": ").unwrap();
    });
    let cases = vec![
        mk(
            "image_size 0",
            cap(&m("size0", |v| v["preprocess"]["image_size"] = 0.into())),
        )
        .says(&["preprocess.image_size is 0"]),
        mk(
            "model image_size 0",
            cap(&m("msize0", |v| v["model"]["image_size"] = 0.into())),
        )
        .says(&["model.image_size is 0"]),
        mk(
            "zero hidden",
            cap(&m("hidden0", |v| v["model"]["text_hidden_size"] = 0.into())),
        )
        .says(&["model.text_hidden_size is 0"]),
        mk(
            "heads not dividing",
            cap(&m("heads", |v| v["model"]["text_heads"] = 5.into())),
        )
        .says(&["model.text_heads", "do not divide"]),
        mk(
            "token limit above positions",
            cap(&m("tokens", |v| {
                v["tokens"]["max_text_tokens"] = 100000.into()
            })),
        )
        .says(&["tokens.max_text_tokens", "over the model's"]),
        mk(
            "token id outside vocab",
            cap(&m("bos", |v| v["tokens"]["bos"] = 10_000_000.into())),
        )
        .says(&["tokens.bos", "outside the vocabulary"]),
        mk(
            "unknown head",
            cap(&m("head", |v| v["head"] = "detect".into())),
        )
        .says(&["head", "\"detect\" is not one of"]),
        mk(
            "graph path with ..",
            cap(&m("dotdot", |v| {
                v["graphs"]["decoder"]["file"] = "../../../../etc/hostname".into()
            })),
        )
        .says(&[
            "graphs.decoder.file",
            "../../../../etc/hostname",
            "leaves the package",
        ]),
        mk(
            "absolute graph path",
            cap(&m("absolute", |v| {
                v["graphs"]["decoder"]["file"] = "/etc/hostname".into()
            })),
        )
        .says(&["graphs.decoder.file", "absolute paths are not allowed"]),
        mk(
            "data_file with ..",
            cap(&m("data", |v| {
                v["graphs"]["decoder"]["data_file"] = "../x.data".into()
            })),
        )
        .says(&["graphs.decoder.data_file", "leaves the package"]),
        mk(
            "absolute tokenizer path",
            cap(&m("abs-tok", |v| v["tokenizer"] = "/etc/passwd".into())),
        )
        .says(&["tokenizer", "absolute paths"]),
        mk("symlink out of the package", cap(&symlinked)).says(&[
            "graphs.decoder.file",
            "symlink",
            "outside the package",
        ]),
        mk("graph swapped for another package's", cap(&swapped))
            .says(&["decoder.onnx", "graph decoder fails its checksum"]),
        mk("truncated graph", cap(&truncated)).says(&["decoder.onnx", "fails its checksum"]),
        mk(
            "manifest checksum edited",
            cap(&m("sha", |v| {
                v["graphs"]["vision_encoder"]["sha256"] = "0".repeat(64).into()
            })),
        )
        .says(&["vision_encoder.onnx", "fails its checksum"]),
        mk("missing graph file", cap(&no_graph)).says(&["cross_kv", "is missing"]),
        mk("manifest not JSON", cap(&bad_json)).says(&["blip.json", "invalid manifest"]),
        mk(
            "newer format",
            cap(&m("version", |v| v["format_version"] = 99.into())),
        )
        .says(&["format_version 99 is newer"]),
        mk(
            "older format (per-row cross K/V)",
            cap(&m("old", |v| v["format_version"] = 1.into())),
        )
        .says(&[
            "format_version 1 is older than this tool runs for a decoder",
            "convert the checkpoint again",
        ]),
        mk("tokenizer.json not a tokenizer", cap(&not_tok))
            .says(&["tokenizer.json", "valid JSON but not a tokenizer"]),
        mk(
            "validate against a missing package",
            vec![
                "validate".into(),
                s(&caption),
                "--against".into(),
                "/no/such/other".into(),
            ],
        )
        .says(&["/no/such/other", "not a blip-onnx package"]),
        mk(
            "validate with a reference bundle that is not one",
            vec![
                "validate".into(),
                s(&caption),
                "--reference".into(),
                s(&d.join("outside.onnx")),
            ],
        )
        .says(&["outside.onnx: invalid JSON"]),
        mk(
            "bench a missing package",
            vec![
                "bench".into(),
                "/no/such/pkg".into(),
                "--image".into(),
                good.clone(),
            ],
        )
        .says(&["error: /no/such/pkg: not a blip-onnx package"]),
        mk(
            "inspect a swapped graph",
            vec!["inspect".into(), swapped.clone()],
        )
        .says(&["fails its checksum"]),
        // `check` reports the checksum as a failed item and goes on (exit 4).
        mk(
            "check a truncated graph",
            vec!["check".into(), truncated.clone(), "--no-ort".into()],
        )
        .code(4)
        .answers(&["FAIL decoder: checksum"]),
    ];
    run_cases(cases);
}

#[test]
fn bad_datasets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let retrieval = convert("retrieval", &d.join("retrieval"));
    let r = s(&retrieval);
    let ds = |name: &str, captions: Option<&str>| {
        let p = d.join(name);
        std::fs::create_dir_all(p.join("images")).unwrap();
        std::fs::copy(fixture("images/synthetic_a.png"), p.join("images/a.png")).unwrap();
        if let Some(c) = captions {
            std::fs::write(p.join("captions.json"), c).unwrap();
        }
        s(&p)
    };
    let ids_mismatch = ds(
        "mismatch",
        Some(
            r#"{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 7, "caption": "a thing"}, {"image_id": 8, "caption": "b"}]}"#,
        ),
    );
    let no_images = ds("noimages", Some(r#"{"images": [], "annotations": []}"#));
    let not_json = ds("notjson", Some("{"));
    let no_captions = ds("nocaptions", None);
    let eval = |ds: &str, extra: &[&str]| {
        let mut a = vec!["eval", "-p", r.as_str(), "--dataset", ds];
        a.extend(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let mk = |name: &'static str, args: Vec<String>| Case {
        args,
        ..case(name, &[])
    };
    let out = d.join("reports").join("r");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let cases = vec![
        mk(
            "annotation ids match no image",
            eval(&ids_mismatch, &["--out", &s(&out)]),
        )
        .says(&[
            "captions.json",
            "none of the 2 annotations' image_id matches an image's id",
        ])
        .clean(out.parent().unwrap()),
        mk("no images", eval(&no_images, &[])).says(&["captions.json", "no images"]),
        mk("captions not JSON", eval(&not_json, &[])).says(&["captions.json: EOF while parsing"]),
        mk("no captions file", eval(&no_captions, &[]))
            .says(&["no COCO captions file (captions.json)"]),
        mk("missing dataset", eval("/no/such/dataset", &[]))
            .says(&["/no/such/dataset: dataset folder not found"]),
        mk("no VQA questions", eval(&no_captions, &["--task", "vqa"]))
            .says(&["no VQA questions file (vqa_questions.json)"]),
        mk("unknown task", eval(&ids_mismatch, &["--task", "segment"]))
            .says(&["--task \"segment\""]),
    ];
    run_cases(cases);
    assert!(!PathBuf::from(format!("{}.json", out.display())).exists());
}

#[test]
fn bad_quantize_and_optimize_inputs_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let caption = convert("caption", &d.join("caption"));
    let retrieval = convert("retrieval", &d.join("retrieval"));
    let int8 = d.join("int8");
    let r = run(
        &["quantize".into(), s(&caption), "-o".into(), s(&int8)],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let truncated = d.join("truncated");
    copy_dir(&caption, &truncated);
    let f = truncated.join("vision_encoder.onnx");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    let outs = d.join("outs");
    std::fs::create_dir(&outs).unwrap();
    let out = outs.join("q");
    let o = s(&out);
    let q = |pkg: &Path, extra: &[&str]| {
        let mut a = vec!["quantize".to_string(), s(pkg), "-o".into(), o.clone()];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let mk = |name: &'static str, args: Vec<String>| Case {
        args,
        ..case(name, &[])
    };
    let cases = vec![
        mk("INT8 of an INT8 package", q(&int8, &[]))
            .says(&[
                "cross_kv_quantized.onnx",
                "cross_kv is already int8",
                "FP32 package",
            ])
            .no_output(&out),
        mk(
            "FP16 of an INT8 package",
            q(&int8, &["--precision", "fp16"]),
        )
        .says(&["already int8"])
        .no_output(&out),
        mk(
            "unknown --policy role",
            q(&caption, &["--policy", "vision_encoder,decodr"]),
        )
        .says(&[
            "--policy names \"decodr\"",
            "cross_kv, decoder, vision_encoder",
            "default, encoders, decoder, all",
        ])
        .no_output(&out),
        mk(
            "policy selecting nothing",
            q(&retrieval, &["--precision", "int4"]),
        )
        .says(&["selects none of", "itm, text_encoder, vision_encoder"])
        .no_output(&out),
        mk("truncated graph", q(&truncated, &[]))
            .says(&["vision_encoder.onnx", "fails its checksum"])
            .no_output(&out),
        mk(
            "INT4 block not a power of two",
            q(&caption, &["--precision", "int4", "--block-size", "24"]),
        )
        .says(&["block size 24 must be a power of two"])
        .no_output(&out),
        mk("disk full while quantizing", q(&caption, &[]))
            .fsize(20_000)
            .says(&[&format!("{o}/tokenizer.json: File too large")])
            .no_output(&out),
        mk("missing package", q(Path::new("/no/such/pkg"), &[]))
            .says(&["/no/such/pkg", "not a blip-onnx package"])
            .no_output(&out),
        mk(
            "optimize a truncated graph",
            vec!["optimize".into(), s(&truncated), "-o".into(), o.clone()],
        )
        .says(&["vision_encoder.onnx: graph vision_encoder fails its checksum"])
        .no_output(&out),
        mk(
            "optimize a missing package",
            vec![
                "optimize".into(),
                "/no/such/pkg".into(),
                "-o".into(),
                o.clone(),
            ],
        )
        .says(&["/no/such/pkg: not a blip-onnx package"])
        .no_output(&out),
        // Width 32 with the default block 128: blocks of 32 are chosen and recorded.
        mk(
            "INT4 of a narrow model",
            q(&caption, &["--precision", "int4"]),
        )
        .code(0)
        .answers(&["quantized package written"])
        .clean(&outs),
        mk("quantize onto an existing output", q(&caption, &[]))
            .says(&["already exists; pass --force"])
            .clean(&outs),
    ];
    run_cases(cases);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("blip.json")).unwrap()).unwrap();
    assert_eq!(
        m["graphs"]["decoder"]["quantization"],
        "weight-only INT4 (MatMulNBits, block 64/32 (128 requested; the largest power of two >= 16 dividing each K), symmetric, accuracy level 4); word embeddings too"
    );
    assert_eq!(m["graphs"]["decoder"]["precision"], "int4");
}

/// Writes a format-2 copy (the file `index` wrote before the SQLite store) of the format-3 index
/// at `from`: the cases below corrupt its JSON header, which only format 2 has.
fn format2_copy(from: &Path, to: &Path) {
    let store = blip_index::Store::open_entries(from).unwrap();
    let mut idx = blip_index::Index::new(store.package.clone(), store.dim, store.states);
    let mut rows = Vec::new();
    store
        .for_each(|s| {
            rows.push(s);
            Ok(())
        })
        .unwrap();
    for s in rows {
        let states = store.read_states(&[s.entry.id.as_str()]).unwrap();
        let name = idx.write_state(to, &s.entry.id, &states).unwrap();
        let mut entry = s.entry;
        entry.state = Some(name);
        idx.push(entry, &s.vectors[..store.dim]).unwrap();
    }
    idx.write(to).unwrap();
}

/// Rewrites an index file's JSON header (and optionally its embedding bytes) in place.
fn edit_index(
    from: &Path,
    to: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
    data: impl FnOnce(&mut Vec<u8>),
) {
    let bytes = std::fs::read(from).unwrap();
    let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + hlen]).unwrap();
    edit(&mut header);
    let mut embeddings = bytes[16 + hlen..].to_vec();
    data(&mut embeddings);
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&embeddings);
    std::fs::write(to, out).unwrap();
}

#[test]
fn bad_indexes_and_shards_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let retrieval = convert("retrieval", &d.join("retrieval"));
    let caption = convert("caption", &d.join("caption"));
    let images = d.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(fixture("images/synthetic_a.png"), images.join("a.png")).unwrap();
    std::fs::copy(fixture("images/synthetic_b.png"), images.join("b.png")).unwrap();
    let good = d.join("good.idx");
    let r = run(
        &["index", "-p", &s(&retrieval), &s(&images), "-o", &s(&good)].map(String::from),
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bad = |name: &str| d.join(name);
    let good = {
        let v2 = d.join("good2.idx");
        format2_copy(&good, &v2);
        v2
    };
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(bad("cut.idx"), &bytes[..bytes.len() - 3]).unwrap();
    std::fs::write(bad("text.idx"), b"this is not an index at all").unwrap();
    edit_index(
        &good,
        &bad("escape.idx"),
        |h| h["entries"][0]["state"] = "../../../etc/hostname".into(),
        |_| {},
    );
    edit_index(
        &good,
        &bad("twice.idx"),
        |h| h["entries"][1]["id"] = h["entries"][0]["id"].clone(),
        |_| {},
    );
    edit_index(
        &good,
        &bad("nan.idx"),
        |_| {},
        |e| e[..4].copy_from_slice(&f32::NAN.to_le_bytes()),
    );
    edit_index(
        &good,
        &bad("header.idx"),
        |h| h["dim"] = "wide".into(),
        |_| {},
    );
    let search = |idx: &str| {
        [
            "search",
            "-p",
            &s(&retrieval),
            &s(&bad(idx)),
            "a red square",
        ]
        .map(String::from)
        .to_vec()
    };
    let mk = |name: &'static str, args: Vec<String>| Case {
        args,
        ..case(name, &[])
    };
    // Shards for --from-parquet: a caption shard (no embedding column), a file that is not Parquet.
    let caption_shard = d.join("captions.parquet");
    let r = run(
        &[
            "caption",
            "-p",
            &s(&caption),
            "--beams",
            "1",
            &s(&images),
            "--format",
            "parquet",
            "-o",
            &s(&caption_shard),
        ]
        .map(String::from),
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::write(d.join("junk.parquet"), b"PAR1 but no footer").unwrap();
    let empty = d.join("no-shards");
    std::fs::create_dir_all(&empty).unwrap();
    let out = d.join("out").join("from.idx");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let from = |shard: &Path| {
        [
            "index",
            "-p",
            &s(&retrieval),
            "--from-parquet",
            &s(shard),
            "-o",
            &s(&out),
        ]
        .map(String::from)
        .to_vec()
    };
    let cases = vec![
        mk("truncated index", search("cut.idx")).says(&["cut.idx", "embedding data truncated"]),
        mk("not an index", search("text.idx")).says(&["text.idx", "is not a blip-onnx index"]),
        mk(
            "state name leading out of the sidecar",
            search("escape.idx"),
        )
        .says(&["escape.idx", "state file \"../../../etc/hostname\""]),
        mk("duplicate id", search("twice.idx")).says(&["twice.idx", "the id appears twice"]),
        mk("NaN embedding", search("nan.idx")).says(&["nan.idx", "non-finite value"]),
        mk("bad header", search("header.idx")).says(&["header.idx", "bad index header"]),
        mk(
            "index of another head",
            ["search", "-p", &s(&caption), &s(&good), "a"]
                .map(String::from)
                .to_vec(),
        )
        .says(&["has no image embeddings"]),
        mk("caption shard as embeddings", from(&caption_shard))
            .says(&[
                "captions.parquet",
                "\"embedding\" is missing",
                "nothing written",
            ])
            .no_output(&out),
        mk("not Parquet", from(&d.join("junk.parquet")))
            .says(&["junk.parquet", "not a readable Parquet file"])
            .no_output(&out),
        mk("folder without shards", from(&empty))
            .says(&["no Parquet shards", "no-shards"])
            .no_output(&out),
        mk("missing shard", from(&d.join("gone.parquet")))
            .says(&["gone.parquet: No such file or directory"])
            .no_output(&out),
    ];
    run_cases(cases);
}
