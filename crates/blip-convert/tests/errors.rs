//! Bad input gets an error that names the problem, and never leaves a partial package behind.

use crate::common;

use std::path::{Path, PathBuf};

use blip_convert::{ConvertError, ConvertOptions, convert};
use common::fixture;

/// Copies a fixture checkpoint folder so a test can damage it.
fn copy_fixture(name: &str, into: &Path) -> PathBuf {
    let src = fixture(&format!("models/{name}"));
    let dst = into.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// Converts into `work/out` and checks that nothing but the inputs is left in `work` afterwards.
fn convert_fails(checkpoint: &Path, work: &Path, opts: &ConvertOptions) -> ConvertError {
    let before: Vec<_> = list(work);
    let err = convert(checkpoint, &work.join("out"), opts).expect_err("conversion should fail");
    assert_eq!(
        list(work),
        before,
        "a failed conversion left files behind: {err}"
    );
    err
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Rewrites a safetensors file through `edit` on (name, shape, f32 data).
fn rewrite_safetensors(
    path: &Path,
    edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)>),
) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec(), v.dtype()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn missing_config_json() {
    let work = tempfile::tempdir().unwrap();
    let ck = copy_fixture("tiny-caption", work.path());
    std::fs::remove_file(ck.join("config.json")).unwrap();
    let err = convert_fails(&ck, work.path(), &ConvertOptions::default());
    assert!(
        matches!(
            err,
            ConvertError::Checkpoint(blip_checkpoint::CheckpointError::MissingConfig { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no config.json"), "{err}");
}

#[test]
fn unknown_model_type() {
    let work = tempfile::tempdir().unwrap();
    let ck = copy_fixture("tiny-caption", work.path());
    let cfg = std::fs::read_to_string(ck.join("config.json"))
        .unwrap()
        .replace("\"model_type\": \"blip\"", "\"model_type\": \"clip\"");
    std::fs::write(ck.join("config.json"), cfg).unwrap();
    let err = convert_fails(&ck, work.path(), &ConvertOptions::default());
    assert!(err.to_string().contains("model_type is \"clip\""), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let work = tempfile::tempdir().unwrap();
    let ck = copy_fixture("tiny-caption", work.path());
    let gone = "text_decoder.bert.encoder.layer.1.output.dense.weight";
    rewrite_safetensors(&ck.join("model.safetensors"), |t| {
        t.retain(|(n, ..)| n != gone)
    });
    let err = convert_fails(&ck, work.path(), &ConvertOptions::default());
    assert!(
        err.to_string().contains(&format!("missing tensor {gone}")),
        "{err}"
    );
}

#[test]
fn misshapen_tensor_is_named_with_both_shapes() {
    let work = tempfile::tempdir().unwrap();
    let ck = copy_fixture("tiny-caption", work.path());
    let bad = "vision_model.encoder.layers.0.mlp.fc1.weight";
    rewrite_safetensors(&ck.join("model.safetensors"), |t| {
        for (n, shape, ..) in t.iter_mut() {
            if n == bad {
                *shape = vec![shape[1], shape[0]];
            }
        }
    });
    let err = convert_fails(&ck, work.path(), &ConvertOptions::default());
    let msg = err.to_string();
    assert!(
        msg.contains(bad) && msg.contains("[32, 64]") && msg.contains("[64, 32]"),
        "{msg}"
    );
}

#[test]
fn truncated_safetensors() {
    let work = tempfile::tempdir().unwrap();
    let ck = copy_fixture("tiny-caption", work.path());
    let path = ck.join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = convert_fails(&ck, work.path(), &ConvertOptions::default());
    assert!(
        err.to_string().contains("truncated or corrupt safetensors"),
        "{err}"
    );
}

#[test]
fn pth_without_model_key() {
    let work = tempfile::tempdir().unwrap();
    let pth = work.path().join("bad.pth");
    std::fs::copy(fixture("models/bad-pth-no-model-key.pth"), &pth).unwrap();
    let err = convert_fails(&pth, work.path(), &ConvertOptions::default());
    let msg = err.to_string();
    assert!(
        msg.contains("no \"model\" key") && msg.contains("state_dict"),
        "{msg}"
    );
}

#[test]
fn truncated_pth() {
    let work = tempfile::tempdir().unwrap();
    let pth = work.path().join("cut.pth");
    let bytes = std::fs::read(fixture("models/tiny-caption-pth/model_tiny_caption.pth")).unwrap();
    std::fs::write(&pth, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = convert_fails(&pth, work.path(), &ConvertOptions::default());
    assert!(
        err.to_string().contains("not a readable torch checkpoint"),
        "{err}"
    );
}

#[test]
fn pth_with_non_standard_widths_asks_for_a_config() {
    // BLIP's own models use 64-wide heads; the tiny fixture does not, so its sizes cannot be inferred.
    let work = tempfile::tempdir().unwrap();
    let opts = ConvertOptions {
        tokenizer: Some(fixture("models/tiny-caption")),
        ..Default::default()
    };
    let err = convert_fails(
        &fixture("models/tiny-caption-pth/model_tiny_caption.pth"),
        work.path(),
        &opts,
    );
    assert!(err.to_string().contains("pass --config"), "{err}");
}

#[test]
fn output_exists_without_force_is_untouched_and_force_replaces_it() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "user data").unwrap();
    let err = convert(
        &fixture("models/tiny-caption"),
        &out,
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConvertError::OutputExists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "user data"
    );
    convert(
        &fixture("models/tiny-caption"),
        &out,
        &ConvertOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(out.join("blip.json").is_file() && !out.join("keep.txt").exists());
    assert_eq!(list(work.path()), ["out"], "no temporary folders left");
}

#[test]
fn unwritable_output_location() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = convert(
        &fixture("models/tiny-caption"),
        &file.join("pkg"),
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConvertError::Unwritable { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot write the package"),
        "{err}"
    );
}

#[test]
fn bad_image_size() {
    let work = tempfile::tempdir().unwrap();
    let opts = ConvertOptions {
        image_size: Some(50),
        ..Default::default()
    };
    let err = convert_fails(&fixture("models/tiny-caption"), work.path(), &opts);
    assert!(
        err.to_string()
            .contains("not a multiple of the patch size 8"),
        "{err}"
    );
}

#[test]
fn missing_checkpoint_path() {
    let work = tempfile::tempdir().unwrap();
    let err = convert_fails(
        &work.path().join("nope"),
        work.path(),
        &ConvertOptions::default(),
    );
    assert!(err.to_string().contains("no such file or folder"), "{err}");
}

#[test]
fn checkpoint_without_tokenizer() {
    let work = tempfile::tempdir().unwrap();
    let ck = copy_fixture("tiny-vqa", work.path());
    std::fs::remove_file(ck.join("vocab.txt")).unwrap();
    let err = convert_fails(&ck, work.path(), &ConvertOptions::default());
    assert!(err.to_string().contains("--tokenizer"), "{err}");
}
