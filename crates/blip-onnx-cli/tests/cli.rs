//! The `blip-onnx` binary end to end: convert, refuse to overwrite, inspect and run every graph.

use std::path::PathBuf;
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

fn blip(args: &[&str]) -> (bool, String, String) {
    let (status, stdout, stderr) = code(args);
    (status == Some(0), stdout, stderr)
}

#[test]
fn convert_then_inspect_runs_every_graph() {
    let dir = tempfile::tempdir().unwrap();
    for head in ["caption", "retrieval", "vqa"] {
        let out = dir.path().join(head);
        let ck = fixture(&format!("models/tiny-{head}"));
        let (ok, stdout, stderr) = blip(&[
            "convert",
            ck.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["head"], head);
        let (ok, stdout, stderr) =
            blip(&["inspect", out.to_str().unwrap(), "--run", "--threads", "1"]);
        assert!(ok, "{stderr}");
        let graphs = std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "onnx")
            })
            .count();
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.starts_with("graph") && l.ends_with("ok"))
                .count(),
            graphs,
            "{stdout}"
        );
    }
}

#[test]
fn inspect_names_the_int8_kernel_of_this_cpu_for_int8_packages_only() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = dir.path().join("fp32");
    let int8 = dir.path().join("int8");
    let ck = fixture("models/tiny-caption");
    let (ok, _, stderr) = blip(&[
        "convert",
        ck.to_str().unwrap(),
        "-o",
        fp32.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = blip(&[
        "quantize",
        fp32.to_str().unwrap(),
        "-o",
        int8.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let want = if flags.contains(" avx512_vnni") || flags.contains(" avx_vnni") {
        "int8      u8s8-vnni on this CPU: the CPU has VNNI"
    } else {
        "int8      u8u8 on this CPU: the CPU has no VNNI"
    };
    let (ok, stdout, stderr) = blip(&["inspect", int8.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with(want)), "{stdout}");
    let (ok, stdout, stderr) = blip(&["inspect", fp32.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("int8 "), "{stdout}");
}

#[test]
fn convert_refuses_to_overwrite_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    let ck = fixture("models/tiny-caption");
    assert!(blip(&["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()]).0);
    let (ok, _, stderr) = blip(&["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");
    let (ok, _, stderr) = blip(&[
        "convert",
        ck.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert!(ok, "{stderr}");
}

#[test]
fn inspect_reports_a_missing_graph_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    let ck = fixture("models/tiny-caption");
    assert!(blip(&["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()]).0);
    std::fs::remove_file(out.join("decoder.onnx")).unwrap();
    let (ok, _, stderr) = blip(&["inspect", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "graph decoder is listed in the manifest but its file decoder.onnx is missing"
        ),
        "{stderr}"
    );
}

fn convert_to(dir: &std::path::Path, head: &str) -> PathBuf {
    let out = dir.join(head);
    let ck = fixture(&format!("models/tiny-{head}"));
    assert!(blip(&["convert", ck.to_str().unwrap(), "-o", out.to_str().unwrap()]).0);
    out
}

fn golden_ids(name: &str, key: &str) -> Vec<Vec<i64>> {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("goldens/{name}.json"))).unwrap(),
    )
    .unwrap();
    serde_json::from_value(meta["generate"][key]["ids"].clone()).unwrap()
}

#[test]
fn caption_prints_pytorch_tokens_and_reports_bad_files_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = convert_to(dir.path(), "caption");
    let img = fixture("images/synthetic_a.png");
    let (ok, stdout, stderr) = blip(&[
        "caption",
        "-p",
        pkg.to_str().unwrap(),
        "--beams",
        "1",
        "--prompt",
        "",
        "--min-length",
        "0",
        "--format",
        "jsonl",
        img.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let rec: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let want: Vec<i64> = golden_ids("tiny-caption", "greedy")[0].clone();
    assert_eq!(rec["tokens"], serde_json::json!(want));
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args([
            "caption",
            "-p",
            pkg.to_str().unwrap(),
            img.to_str().unwrap(),
            "/no/such/image.png",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "partial failure exit code");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("synthetic_a.png\t") && stdout.contains("/no/such/image.png\tERROR"),
        "{stdout}"
    );
}

#[test]
fn index_reuses_unchanged_files_and_search_reranks() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = convert_to(dir.path(), "retrieval");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for f in ["synthetic_a.png", "synthetic_b.png", "grace_hopper.jpg"] {
        std::fs::copy(fixture(&format!("images/{f}")), images.join(f)).unwrap();
    }
    // A second copy of one image is encoded once and indexed twice.
    std::fs::copy(
        fixture("images/synthetic_a.png"),
        images.join("copy_of_a.png"),
    )
    .unwrap();
    let idx = dir.path().join("idx.bin");
    let args = [
        "index",
        "-p",
        pkg.to_str().unwrap(),
        images.to_str().unwrap(),
        "-o",
        idx.to_str().unwrap(),
        "--format",
        "json",
    ];
    let (ok, stdout, stderr) = blip(&args);
    assert!(ok, "{stderr}");
    let first: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (
            first[0]["embedded"].as_u64(),
            first[0]["duplicates"].as_u64(),
            first[0]["reused"].as_u64(),
            first[0]["images"].as_u64()
        ),
        (Some(3), Some(1), Some(0), Some(4))
    );
    std::fs::write(images.join("broken.png"), b"not an image").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            second[0]["embedded"].as_u64(),
            second[0]["reused"].as_u64(),
            second[0]["failed"].as_u64()
        ),
        (Some(0), Some(4), Some(1))
    );
    let search = |k: &str, rerank: &str| -> serde_json::Value {
        let (ok, stdout, stderr) = blip(&[
            "search",
            "-p",
            pkg.to_str().unwrap(),
            idx.to_str().unwrap(),
            "a red circle",
            "-k",
            k,
            "--rerank",
            rerank,
            "--format",
            "json",
        ]);
        assert!(ok, "{stderr}");
        serde_json::from_str(&stdout).unwrap()
    };
    // The copy answers exactly as its original: same embedding, same stored rerank states.
    let all = search("4", "4");
    let hit = |name: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|h| h["image"].as_str().unwrap().ends_with(name))
            .cloned()
            .unwrap()
    };
    let (a, copy) = (hit("synthetic_a.png"), hit("copy_of_a.png"));
    for key in ["itc", "itm"] {
        let (x, y) = (a[key].as_f64().unwrap(), copy[key].as_f64().unwrap());
        assert!((x - y).abs() < 1e-6, "{key}: {x} vs {y}");
    }
    let hits = search("3", "2");
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 3);
    for h in &hits[..2] {
        let (itc, itm, score) = (
            h["itc"].as_f64().unwrap(),
            h["itm"].as_f64().unwrap(),
            h["score"].as_f64().unwrap(),
        );
        assert!(
            (itc + itm - score).abs() < 1e-5,
            "reranked score = ITM logit + ITC similarity"
        );
    }
    assert!(hits[2]["itm"].is_null());
    assert!(hits[0]["score"].as_f64() >= hits[1]["score"].as_f64());
}

/// Asserts `got` (a JSON array of numbers) is within 1e-4 of `want`, element by element.
#[track_caller]
fn assert_floats(what: &str, got: &serde_json::Value, want: &[f32]) {
    let got: Vec<f64> = serde_json::from_value(got.clone()).unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - f64::from(*w)).abs() <= 1e-4,
            "{what}: {got:?} vs {want:?}"
        );
    }
}

/// The golden's `pixel_values[i]` written back as a PNG of the model's size: BLIP's preprocessing
/// of it (no resize at that size, then rescale and normalise) gives the golden's pixels exactly,
/// so what the binary prints can be compared with transformers' outputs at 1e-4. (From the
/// original file, the resize is within one level of Pillow's, which moves the tiny random
/// model's answers.)
fn golden_png(g: &blip_testkit::Goldens, i: usize, out: &std::path::Path) -> PathBuf {
    let px = g
        .f("pixel_values")
        .index_axis(ndarray::Axis(0), i)
        .to_owned();
    let (h, w) = (px.shape()[1], px.shape()[2]);
    let pre = blip_preprocess::ImagePreprocessor::new(&blip_package::Preprocess::blip(w));
    let mut rgb = vec![0u8; h * w * 3];
    for ((c, y, x), v) in px.indexed_iter().map(|(ix, v)| ((ix[0], ix[1], ix[2]), *v)) {
        let level = (v * pre.std[c] + pre.mean[c]) * 255.0;
        assert!(
            (level - level.round()).abs() < 1e-3,
            "pixel {c},{y},{x}: {level}"
        );
        rgb[(y * w + x) * 3 + c] = level.round() as u8;
    }
    let path = out.join(format!("golden-{i}.png"));
    image::RgbImage::from_raw(w as u32, h as u32, rgb)
        .unwrap()
        .save(&path)
        .unwrap();
    path
}

/// Row `i` of the golden float tensor `key`.
fn golden_row(g: &blip_testkit::Goldens, key: &str, i: usize) -> Vec<f32> {
    g.f(key)
        .index_axis(ndarray::Axis(0), i)
        .iter()
        .copied()
        .collect()
}

#[test]
fn vqa_generates_and_ranks_and_embed_and_itm_print_numbers() {
    // Every number against the transformers goldens for synthetic_a.png (its golden pixels as a
    // PNG): the VQA golden's first question, the retrieval golden's second text (image-major
    // pairs: image 0, text 1).
    let dir = tempfile::tempdir().unwrap();
    let vqa = convert_to(dir.path(), "vqa");
    let g = blip_testkit::Goldens::load("tiny-vqa");
    assert_eq!(g.meta["images"][0], "synthetic_a.png");
    let img = golden_png(&g, 0, dir.path());
    let questions: Vec<String> = serde_json::from_value(g.meta["questions"].clone()).unwrap();
    let q = questions[0].as_str();
    let vqa_args = |qs: &[&str], extra: &[&str]| {
        let mut a = vec!["vqa", "-p", vqa.to_str().unwrap(), img.to_str().unwrap()];
        a.extend(qs);
        a.extend(extra);
        blip(&a)
    };
    // Generated: the default decoding is the golden's (beam 3, at most 10 tokens, at least 1).
    // transformers generated the three questions as one batch, padded to the longest, the decoder
    // attending to the padding too (as BLIP's code): the binary gets the same three questions, and
    // its first answer is the golden's first pair (this image, the first question).
    assert_eq!(
        g.settings("beam3"),
        &serde_json::json!({"num_beams": 3, "max_length": 10, "min_length": 1})
    );
    let all: Vec<&str> = questions.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = vqa_args(&all, &["--format", "json"]);
    assert!(ok, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r[0]["question"], q);
    let want = &g.ids("beam3")[0];
    let mut tokens: Vec<i64> = serde_json::from_value(r[0]["tokens"].clone()).unwrap();
    assert!(tokens.len() <= want.len(), "{tokens:?}");
    tokens.resize(want.len(), 102); // transformers pads finished beams with [SEP]
    assert_eq!(&tokens, want, "generated answer tokens");
    let answer = r[0]["answer"].as_str().unwrap();
    let (ok, stdout, stderr) = vqa_args(&all, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.lines().next(),
        Some(format!("{q}\t{answer}").as_str())
    );
    // Rank mode over the golden's answer list: its first-token top-k, scores and best answer.
    let rank = &g.meta["rank"];
    let list: Vec<String> = serde_json::from_value(rank["answers"].clone()).unwrap();
    let answers = dir.path().join("answers.txt");
    std::fs::write(&answers, format!("{}\n\n", list.join("\n"))).unwrap();
    let k = rank["k"].to_string();
    // Each question was encoded alone there (no padding): one question here too.
    let (ok, stdout, stderr) = vqa_args(
        &[q],
        &[
            "--answers",
            answers.to_str().unwrap(),
            "-k",
            &k,
            "--format",
            "json",
        ],
    );
    assert!(ok, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let topk: Vec<usize> = serde_json::from_value(rank["first_token_topk_ids"][0].clone()).unwrap();
    let scores: Vec<f32> = serde_json::from_value(rank["scores"][0].clone()).unwrap();
    let cands = r[0]["candidates"].as_array().unwrap();
    let names: Vec<&str> = cands
        .iter()
        .map(|c| c["answer"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = topk.iter().map(|&i| list[i].as_str()).collect();
    assert_eq!(names, want, "first-token top-k");
    let got: Vec<serde_json::Value> = cands.iter().map(|c| c["score"].clone()).collect();
    assert_floats("rank scores", &serde_json::json!(got), &scores);
    assert_eq!(r[0]["answer"], rank["best_answers"][0]);

    let ret = convert_to(dir.path(), "retrieval");
    let g = blip_testkit::Goldens::load("tiny-retrieval");
    let text = g.meta["texts"][1].as_str().unwrap();
    assert_eq!(g.meta["images"][0], "synthetic_a.png");
    let img = golden_png(&g, 0, dir.path());
    let (ok, stdout, stderr) = blip(&[
        "embed",
        "-p",
        ret.to_str().unwrap(),
        "--text",
        text,
        "--format",
        "json",
    ]);
    assert!(ok, "{stderr}");
    let e: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let want = golden_row(&g, "text.text_embeds", 1);
    assert_floats("text embedding", &e[0]["embedding"], &want);
    let (ok, stdout, stderr) = blip(&[
        "itm",
        "-p",
        ret.to_str().unwrap(),
        img.to_str().unwrap(),
        text,
        "--format",
        "json",
    ]);
    assert!(ok, "{stderr}");
    let m: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let logits = golden_row(&g, "itm.logits", 1);
    assert_floats("ITM logits", &m[0]["itm_logits"], &logits);
    let itc = g.f("itc.similarity")[[0, 1]];
    assert_floats(
        "ITC similarity",
        &serde_json::json!([m[0]["itc_similarity"]]),
        &[itc],
    );
    // Softmax over (no match, match), written out.
    let p = 1.0 / (1.0 + (logits[0] - logits[1]).exp());
    assert_floats(
        "match probability",
        &serde_json::json!([m[0]["match_probability"]]),
        &[p],
    );
    let (ok, _, stderr) = blip(&["embed", "-p", ret.to_str().unwrap(), "--text", "  "]);
    assert!(!ok && stderr.contains("empty text"), "{stderr}");
}

#[test]
fn check_passes_a_fresh_package_and_exits_4_on_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = convert_to(dir.path(), "retrieval");
    let (ok, stdout, stderr) = blip(&["check", pkg.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.trim_end().ends_with("30 passed, 0 failed"),
        "{stdout}"
    );
    let manifest = pkg.join("blip.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"pad\": 0", "\"pad\": 7");
    std::fs::write(&manifest, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args([
            "check",
            pkg.to_str().unwrap(),
            "--no-ort",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["pass"] == false)
        .map(|i| i["item"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["package: tokenizer ids"]);
}

fn code(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn quantize_optimize_and_validate_gate_a_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = convert_to(dir.path(), "caption");
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let golden = fixture("goldens/tiny-caption.json");
    let images = fixture("images");
    let (golden, images) = (golden.to_str().unwrap(), images.to_str().unwrap());
    // FP16 and the ORT-optimized package both write checked packages.
    for (cmd, out) in [
        (
            vec!["quantize", fp32.to_str().unwrap(), "--precision", "fp16"],
            p("fp16"),
        ),
        (vec!["optimize", fp32.to_str().unwrap()], p("opt")),
        (
            vec!["quantize", fp32.to_str().unwrap(), "--target", "web"],
            p("web"),
        ),
    ] {
        let mut args = cmd.clone();
        args.extend(["-o", out.as_str()]);
        let (ok, _, stderr) = blip(&args);
        assert!(ok, "{stderr}");
        let (ok, stdout, stderr) = blip(&["check", &out]);
        assert!(ok, "{stdout}{stderr}");
    }
    // Each records the runtimes it is made for; the web flavour is QUInt8 INT8 on every graph.
    let manifest = |name: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(name).join("blip.json")).unwrap(),
        )
        .unwrap()
    };
    let runtimes = |name: &str| manifest(name)["runtimes"].clone();
    assert_eq!(
        runtimes("fp16"),
        serde_json::json!(["ort", "node", "ort-mobile"])
    );
    assert_eq!(
        runtimes("opt"),
        serde_json::json!(["ort", "node", "web", "openvino", "ort-mobile"])
    );
    let web = manifest("web");
    assert_eq!(web["runtimes"], serde_json::json!(["web", "ort-mobile"]));
    for (role, g) in web["graphs"].as_object().unwrap() {
        assert_eq!(g["precision"], "int8", "{role}");
        assert!(
            g["quantization"].as_str().unwrap().contains("QUInt8"),
            "{role}: {g}"
        );
    }
    // The optimized package passes the FP32 gates against PyTorch and against the portable one.
    let (status, stdout, stderr) = code(&[
        "validate",
        &p("opt"),
        "--reference",
        golden,
        "--images-dir",
        images,
        "--against",
        fp32.to_str().unwrap(),
        "--long-run",
        "100",
        "--max-batch",
        "3",
        "--format",
        "json",
    ]);
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["gates"].as_array().unwrap().len() > 15);
    // FP16 misses the FP32 tolerance against PyTorch: exit 4, the failing gate named in the table.
    let (status, stdout, _) = code(&[
        "validate",
        &p("fp16"),
        "--reference",
        golden,
        "--images-dir",
        images,
        "--quantized-tolerance",
        "1e-6",
        "--long-run",
        "0",
        "--max-batch",
        "0",
    ]);
    assert_eq!(status, Some(4), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL reference: vision.last_hidden_state")),
        "{stdout}"
    );
}

#[test]
fn bench_writes_json_markdown_and_a_png_chart() {
    let dir = tempfile::tempdir().unwrap();
    let caption = convert_to(dir.path(), "caption");
    let retrieval = convert_to(dir.path(), "retrieval");
    let quantized = dir.path().join("caption-q");
    let (ok, _, stderr) = blip(&[
        "quantize",
        caption.to_str().unwrap(),
        "--precision",
        "int8",
        "-o",
        quantized.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let prefix = dir.path().join("out/bench");
    let image = fixture("images/synthetic_a.png");
    let (ok, stdout, stderr) = blip(&[
        "bench",
        caption.to_str().unwrap(),
        retrieval.to_str().unwrap(),
        quantized.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--reps",
        "2",
        "--rounds",
        "2",
        "--threads",
        "1",
        "--cuda",
        "-o",
        prefix.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("(round 2 of 2)"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(prefix.with_extension("json")).unwrap())
            .unwrap();
    let engines = report["engines"].as_array().unwrap();
    assert_eq!(engines.len(), 3, "one engine per package (no GPU here)");
    let cases = |e: &serde_json::Value| -> Vec<String> {
        e["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert!(r["median_ms"].as_f64().unwrap() > 0.0);
                assert!(r["p90_ms"].as_f64().unwrap() >= r["median_ms"].as_f64().unwrap());
                r["case"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(
        cases(&engines[0]),
        [
            "vision 32² b1",
            "vision 32² b8",
            "decoder step (20 cached)",
            "caption greedy 20 tokens"
        ]
    );
    assert!(cases(&engines[1]).contains(&"retrieve 1 vs 1000, rerank 16".to_string()));
    // Two rounds of 2 reps (batch 8: half), pooled.
    let samples = |row: usize| {
        engines[0]["rows"][row]["samples_ms"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!((samples(0), samples(1)), (4, 2));
    for e in engines {
        assert!(e["peak_rss_mb"].as_f64().unwrap() > 10.0);
        assert!(e["size_mb"].as_f64().unwrap() > 1.0);
    }
    // The two packages with a decoder also had their steps interleaved: 2 rounds of 2 × 2 turns.
    let steps = report["interleaved_steps"].as_array().unwrap();
    let names: Vec<&str> = steps
        .iter()
        .map(|s| s["engine"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["blip-onnx caption", "blip-onnx caption-q"]);
    for s in steps {
        let samples = s["samples_ms"].as_array().unwrap();
        assert_eq!(samples.len(), 8);
        assert!(samples.iter().all(|x| x.as_f64().unwrap() > 0.0));
    }
    // Without a CUDA build, the CUDA row is reported as not measured, not silently run on the CPU.
    assert!(
        report["notes"][0].as_str().unwrap().contains("CUDA"),
        "{report}"
    );
    let md = std::fs::read_to_string(prefix.with_extension("md")).unwrap();
    assert!(md.contains("| blip-onnx caption | fp32 |"), "{md}");
    assert!(stdout.contains("vision 32² b1: median / p90 ms"));
    assert!(md.contains("one run of 2 rounds"), "{md}");
    assert!(md.contains("interleaved in one process"), "{md}");
    assert!(
        md.contains("| blip-onnx caption | fp32 |") && md.contains("| **1.00×** |"),
        "{md}"
    );
    let png = image::open(prefix.with_extension("png")).unwrap();
    assert_eq!((png.width(), png.height()), (1400, 700));
    // --render rewrites the same table and chart from the JSON, measuring nothing.
    let again = dir.path().join("out/again");
    let (ok, _, stderr) = blip(&[
        "bench",
        "--render",
        prefix.with_extension("json").to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(again.with_extension("md")).unwrap(),
        md
    );
    assert!(again.with_extension("png").exists());
    assert!(
        !again.with_extension("json").exists(),
        "--render reads the measured JSON and writes none"
    );
}

/// Issue 12's index cases: a FIFO in the folder is skipped (never opened, so never blocks), an
/// index of another width is refused in words (no ndarray panic), and a package without image
/// embeddings fails before anything is written.
#[cfg(unix)]
#[test]
fn index_skips_fifos_refuses_other_widths_and_non_retrieval_packages() {
    let dir = tempfile::tempdir().unwrap();
    let ret = convert_to(dir.path(), "retrieval");
    let cap = convert_to(dir.path(), "caption");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(fixture("images/synthetic_a.png"), images.join("a.png")).unwrap();
    let fifo = images.join("pipe.png");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let idx = dir.path().join("idx.bin");
    let (status, stdout, stderr) = code(&[
        "index",
        "-p",
        ret.to_str().unwrap(),
        images.to_str().unwrap(),
        "-o",
        idx.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        stderr.contains("pipe.png") && stderr.contains("not a regular file"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (
            summary[0]["images"].as_u64(),
            summary[0]["skipped"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // Same package fingerprint, embeddings 7 wide instead of 24.
    let good = blip_index::Index::read(&idx).unwrap();
    let mut odd = blip_index::Index::new(good.package.clone(), 7, None);
    let mut entry = good.entries()[0].clone();
    entry.state = None;
    odd.push(entry, &[0.1; 7]).unwrap();
    let odd_path = dir.path().join("odd.bin");
    odd.write(&odd_path).unwrap();
    let (status, _, stderr) = code(&[
        "search",
        "-p",
        ret.to_str().unwrap(),
        odd_path.to_str().unwrap(),
        "a red circle",
    ]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains("7-wide") && stderr.contains("24-wide"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = dir.path().join("caption.idx");
    let (status, _, stderr) = code(&[
        "index",
        "-p",
        cap.to_str().unwrap(),
        images.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stderr.contains("has no image embeddings"), "{stderr}");
    assert!(!out.exists() && !blip_index::Index::sidecar(&out).exists());
}

/// `blip-onnx serve` binds, answers /health/live, and exits 0 on SIGTERM.
#[cfg(unix)]
#[test]
fn serve_starts_answers_and_stops_on_sigterm() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let cap = convert_to(dir.path(), "caption");
    let mut child = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args([
            "serve",
            "--package",
            cap.to_str().unwrap(),
            "--threads",
            "1",
        ])
        .env("BLIP_PORT", "0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("live"),
        "{reply}"
    );
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.code(),
        Some(0),
        "signal {:?}; stderr after listening: {rest}",
        status.signal()
    );
}

/// `caption FOLDER --format parquet -o FILE` writes one row per image with blip_onnx.ray's columns
/// (a corrupt image is an error row, exit 3, no temporary left); `index --from-parquet` refuses a
/// shard without embeddings and writes nothing.
#[test]
fn caption_writes_a_parquet_shard_that_index_from_parquet_checks() {
    let dir = tempfile::tempdir().unwrap();
    let cap = convert_to(dir.path(), "caption");
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    std::fs::copy(fixture("images/synthetic_a.png"), images.join("a.png")).unwrap();
    std::fs::copy(fixture("images/synthetic_b.png"), images.join("sub/b.png")).unwrap();
    std::fs::write(images.join("corrupt.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let cap_s = cap.to_str().unwrap();
    let out = dir.path().join("captions.parquet");
    let (status, _, stderr) = code(&[
        "caption",
        "-p",
        cap_s,
        "--beams",
        "1",
        "--format",
        "parquet",
        "-o",
        out.to_str().unwrap(),
        images.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(3), "{stderr}");
    assert!(stderr.contains("corrupt.png"), "{stderr}");
    let rows = blip_shards::read_captions(&out).unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a.png", "corrupt.png", "sub/b.png"]);
    // The same captions and tokens as the JSON output for the same files.
    let (ok, stdout, stderr) = blip(&[
        "caption",
        "-p",
        cap_s,
        "--beams",
        "1",
        "--format",
        "json",
        images.join("a.png").to_str().unwrap(),
        images.join("sub/b.png").to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let json: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    for (row, want) in [&rows[0], &rows[2]].into_iter().zip(&json) {
        let (text, tokens) = row.result.clone().unwrap();
        assert_eq!(text, want["caption"].as_str().unwrap());
        let want_tokens: Vec<i64> = serde_json::from_value(want["tokens"].clone()).unwrap();
        assert_eq!(tokens, want_tokens);
        assert_eq!(row.path, want["image"].as_str().unwrap());
    }
    let err = rows[1].result.clone().unwrap_err();
    assert!(err.contains("corrupt.png"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let (status, _, stderr) = code(&[
        "caption",
        "-p",
        cap_s,
        "--format",
        "parquet",
        images.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(1));
    assert!(
        stderr.contains("--format parquet needs --output"),
        "{stderr}"
    );

    let ret = convert_to(dir.path(), "retrieval");
    let idx = dir.path().join("from-parquet.idx");
    let (status, _, stderr) = code(&[
        "index",
        "-p",
        ret.to_str().unwrap(),
        "--from-parquet",
        out.to_str().unwrap(),
        "-o",
        idx.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains("captions.parquet") && stderr.contains("\"embedding\" is missing"),
        "{stderr}"
    );
    assert!(!idx.exists());
}

/// `index export` writes every entry (metadata and each vector of a multi-vector entry
/// included), and `index --from-parquet` of that file is the same index: same entries, same
/// search results.
#[test]
fn index_export_then_import_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let ret = convert_to(dir.path(), "retrieval");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for (i, name) in ["synthetic_a.png", "synthetic_b.png", "grace_hopper.jpg"]
        .iter()
        .enumerate()
    {
        std::fs::copy(
            fixture(&format!("images/{name}")),
            images.join(format!("{i}-{name}")),
        )
        .unwrap();
    }
    let idx = dir.path().join("photos.idx");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (status, _, stderr) = code(&["index", "-p", &s(&ret), &s(&images), "-o", &s(&idx)]);
    assert_eq!(status, Some(0), "{stderr}");
    // One more entry through the library: metadata and two vectors.
    {
        let store = blip_index::Store::open(&idx).unwrap();
        let mut first = None;
        store
            .for_each(|e| {
                first.get_or_insert(e);
                Ok(())
            })
            .unwrap();
        let first = first.unwrap();
        let mut vectors = first.vectors.clone();
        vectors.extend(first.vectors.iter().map(|x| -x));
        let added = store
            .add(vec![blip_index::NewEntry {
                id: "two-vectors".into(),
                path: first.entry.path.clone(),
                stamp: first.entry.stamp.clone(),
                metadata: Some(serde_json::json!({"album": "holidays", "n": 3})),
                vectors,
                states: Some(store.read_states(&[first.entry.id.as_str()]).unwrap()),
            }])
            .unwrap();
        assert!(added[0].is_ok(), "{:?}", added[0]);
    }
    let parquet = dir.path().join("export.parquet");
    let (status, stdout, stderr) = code(&["index", "export", &s(&idx), "--parquet", &s(&parquet)]);
    assert_eq!(status, Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (summary["images"].as_u64(), summary["vectors"].as_u64()),
        (Some(4), Some(5))
    );

    let back = dir.path().join("back.idx");
    let (status, _, stderr) = code(&[
        "index",
        "-p",
        &s(&ret),
        "--from-parquet",
        &s(&parquet),
        "-o",
        &s(&back),
    ]);
    assert_eq!(status, Some(0), "{stderr}");
    let entries = |p: &std::path::Path| {
        let store = blip_index::Store::open_entries(p).unwrap();
        let mut all = Vec::new();
        store
            .for_each(|e| {
                all.push((e.entry.id, e.entry.path, e.entry.metadata, e.vectors));
                Ok(())
            })
            .unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    assert_eq!(entries(&idx), entries(&back));
    for query in ["a red circle", "a blue square"] {
        let search = |p: &std::path::Path| {
            let (status, stdout, stderr) = code(&[
                "search",
                "-p",
                &s(&ret),
                &s(p),
                query,
                "--rerank",
                "0",
                "--format",
                "json",
            ]);
            assert_eq!(status, Some(0), "{stderr}");
            serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
        };
        assert_eq!(search(&idx), search(&back), "{query}");
    }
}
