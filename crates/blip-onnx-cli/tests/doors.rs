//! The CLI's door of the request layer: every row of the shared option table
//! (fixtures/requests/caption-options.json, which the server, Python and the browser tests read
//! too) is refused naming its field as a flag (`--top-p: …`), and every good row captions token
//! for token as the library does with the same request resolved.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use blip_runtime::request::{CaptionRequest, ModelLimits};
use blip_runtime::{BlipModel, ImageInput, SessionOptions};

fn fixture(rel: &str) -> PathBuf {
    blip_testkit::fixture(rel)
}

fn table() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("requests/caption-options.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The options of a row as `blip-onnx caption` flags.
fn flags(options: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in options.as_object().unwrap() {
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            serde_json::Value::Bool(true) => out.push(flag),
            serde_json::Value::String(s) => out.push(format!("{flag}={s}")),
            other => out.push(format!("{flag}={other}")),
        }
    }
    out
}

fn caption(package: &Path, options: &serde_json::Value, image: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args(["caption", "-p"])
        .arg(package)
        .args(["--threads", "1", "--format", "json", "--quiet"])
        .args(flags(options))
        .arg(image)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_shared_option_table_through_the_cli() {
    let package = common::shapes_package("caption", "doors-caption");
    let image = fixture("shapes/test/images/test_00003.png");
    let table = table();

    for row in table["bad"].as_array().unwrap() {
        let (ok, _, stderr) = caption(&package, &row["options"], &image);
        let flag = format!("--{}:", row["field"].as_str().unwrap().replace('_', "-"));
        assert!(!ok, "{row} was taken");
        assert!(
            stderr.contains(&flag),
            "{row}: {flag} not named in {stderr:?}"
        );
    }

    let mut model = BlipModel::open(
        &package,
        &SessionOptions {
            intra_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    for options in table["good"].as_array().unwrap() {
        let (ok, stdout, stderr) = caption(&package, options, &image);
        assert!(ok, "{options}: {stderr}");
        let got: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let request: CaptionRequest = serde_json::from_value(options.clone()).unwrap();
        let opts = request.resolve(ModelLimits::of(&model.package)).unwrap();
        let want = model
            .caption(&[ImageInput::Path(image.clone())], &opts)
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(got[0]["tokens"], serde_json::json!(want.ids), "{options}");
        assert_eq!(got[0]["caption"], want.text.as_str(), "{options}");
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn run(args: &[std::ffi::OsString]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blip-onnx"))
        .args(args)
        .args(["--threads", "1", "--format", "json", "--quiet"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `blip-onnx vqa` arguments for a table request: questions as arguments, answers one per line in
/// a file (`--answers`), `-k`, `--mask-question-padding`.
fn vqa_args(
    package: &Path,
    image: &Path,
    request: &serde_json::Value,
    dir: &Path,
) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> =
        vec!["vqa".into(), "-p".into(), package.into(), image.into()];
    a.extend(strings(&request["questions"]).into_iter().map(Into::into));
    if let Some(answers) = request.get("answers") {
        let file = dir.join("answers.txt");
        let mut text = strings(answers).join("\n");
        text.push('\n');
        std::fs::write(&file, text).unwrap();
        a.extend(["--answers".into(), file.into()]);
    }
    if let Some(k) = request.get("k") {
        a.extend(["-k".into(), k.to_string().into()]);
    }
    if request["mask_question_padding"] == true {
        a.push("--mask-question-padding".into());
    }
    a
}

/// The refusal names the row's field as the CLI spells it: `--questions[1]:`, `--k:`; an empty
/// list of positional arguments is clap's refusal naming the argument (`<QUESTIONS>`).
fn assert_refused(ok: bool, stderr: &str, row: &serde_json::Value) {
    assert!(!ok, "{row} was taken");
    let field = row["field"].as_str().unwrap();
    // Questions and texts are positional arguments; answers come from a file.
    let positional = matches!(field, "questions" | "texts");
    let list = row["request"][field].as_array();
    let want = if positional && list.is_some_and(|l| l.is_empty()) {
        format!("<{}>", field.to_uppercase())
    } else {
        format!("--{}:", field.replace('_', "-"))
    };
    assert!(
        stderr.contains(&want),
        "{row}: {want} not named in {stderr:?}"
    );
}

fn close(a: &serde_json::Value, b: f32) -> bool {
    (a.as_f64().unwrap() - f64::from(b)).abs() < 1e-4
}

#[test]
fn the_shared_task_table_through_the_cli() {
    use blip_runtime::request::{SearchRequest, VqaMode, VqaRequest};

    let dir = tempfile::tempdir().unwrap();
    let vqa_package = common::shapes_package("vqa", "doors-vqa");
    let retrieval_package = common::shapes_package("retrieval", "doors-retrieval");
    let table = blip_testkit::task_options();
    let image = fixture("shapes/test/images/test_00001.png");

    for row in table["vqa"]["bad"].as_array().unwrap() {
        // Blank lines of an answers file separate answers; a blank answer cannot be written.
        if strings(&row["request"]["answers"])
            .iter()
            .any(|a| a.trim().is_empty())
        {
            continue;
        }
        let (ok, _, stderr) = run(&vqa_args(&vqa_package, &image, &row["request"], dir.path()));
        assert_refused(ok, &stderr, row);
    }
    let options = SessionOptions {
        intra_threads: 1,
        ..Default::default()
    };
    let mut vqa = BlipModel::open(&vqa_package, &options).unwrap();
    for request in table["vqa"]["good"].as_array().unwrap() {
        let (ok, stdout, stderr) = run(&vqa_args(&vqa_package, &image, request, dir.path()));
        assert!(ok, "{request}: {stderr}");
        let got: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let got = got.as_array().unwrap();
        let req: VqaRequest = serde_json::from_value(request.clone()).unwrap();
        let qs: Vec<&str> = req.questions.iter().map(String::as_str).collect();
        let images = vec![ImageInput::Path(image.clone()); qs.len()];
        assert_eq!(got.len(), qs.len(), "{request}");
        match req.resolve().unwrap() {
            VqaMode::Generate(opts) => {
                for (got, want) in got.iter().zip(vqa.answer(&images, &qs, &opts).unwrap()) {
                    assert_eq!(got["tokens"], serde_json::json!(want.ids), "{request}");
                    assert_eq!(got["answer"], want.text.as_str(), "{request}");
                }
            }
            VqaMode::Rank { answers, k } => {
                let list: Vec<&str> = answers.iter().map(String::as_str).collect();
                let max = vqa.package.manifest.tokens.max_text_tokens;
                let ranked = vqa.rank_answers(&images, &qs, &list, k, max).unwrap();
                for (got, want) in got.iter().zip(ranked) {
                    assert_eq!(got["answer"], list[want.best], "{request}");
                    let cands = got["candidates"].as_array().unwrap();
                    assert_eq!(cands.len(), want.candidates.len(), "{request}");
                    for (c, (i, score)) in cands.iter().zip(&want.candidates) {
                        assert_eq!(c["answer"], list[*i], "{request}");
                        assert!(close(&c["score"], *score), "{request}: {c} vs {score}");
                    }
                }
            }
        }
    }

    for row in table["itm"]["bad"].as_array().unwrap() {
        let mut a: Vec<std::ffi::OsString> = vec![
            "itm".into(),
            "-p".into(),
            retrieval_package.clone().into(),
            image.clone().into(),
        ];
        a.extend(
            strings(&row["request"]["texts"])
                .into_iter()
                .map(Into::into),
        );
        let (ok, _, stderr) = run(&a);
        assert_refused(ok, &stderr, row);
    }

    // Search over an index of shapes test images 0-5.
    let gallery = dir.path().join("gallery");
    std::fs::create_dir(&gallery).unwrap();
    for i in 0..6 {
        let name = format!("test_{i:05}.png");
        std::fs::copy(
            fixture(&format!("shapes/test/images/{name}")),
            gallery.join(name),
        )
        .unwrap();
    }
    let index = dir.path().join("shapes.idx");
    let (ok, _, stderr) = run(&[
        "index".into(),
        "-p".into(),
        retrieval_package.clone().into(),
        gallery.into(),
        "-o".into(),
        index.clone().into(),
    ]);
    assert!(ok, "{stderr}");
    let search_args = |request: &serde_json::Value| {
        let mut a: Vec<std::ffi::OsString> = vec![
            "search".into(),
            "-p".into(),
            retrieval_package.clone().into(),
            index.clone().into(),
            request["text"].as_str().unwrap().into(),
        ];
        if let Some(k) = request.get("k") {
            a.extend(["-k".into(), k.to_string().into()]);
        }
        if let Some(r) = request.get("rerank") {
            a.extend(["--rerank".into(), r.to_string().into()]);
        }
        a
    };
    for row in table["search"]["bad"].as_array().unwrap() {
        let (ok, _, stderr) = run(&search_args(&row["request"]));
        assert_refused(ok, &stderr, row);
    }
    let idx = blip_index::Index::read(&index).unwrap();
    let mut retrieval = BlipModel::open(&retrieval_package, &options).unwrap();
    for request in table["search"]["good"].as_array().unwrap() {
        let (ok, stdout, stderr) = run(&search_args(request));
        assert!(ok, "{request}: {stderr}");
        let got: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let got = got.as_array().unwrap();
        let req: SearchRequest = serde_json::from_value(request.clone()).unwrap();
        let opts = req.resolve().unwrap();
        let want = blip_runtime::ready(blip_index::rank(
            &mut retrieval,
            &idx,
            &index,
            &req.text,
            opts.rerank,
        ))
        .unwrap();
        assert_eq!(got.len(), opts.k.min(want.len()), "{request}: {stdout}");
        for (h, w) in got.iter().zip(&want) {
            let path = idx.entries()[w.index].path.display().to_string();
            assert_eq!(h["image"], path.as_str(), "{request}: {stdout}");
            assert!(close(&h["score"], w.score), "{request}: {h}");
        }
    }
}
