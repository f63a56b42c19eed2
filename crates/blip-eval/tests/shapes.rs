//! The trained shapes models, converted and evaluated in Rust on the shapes test split: the
//! predictions equal PyTorch's (fixtures/eval/shapes-pytorch.json, from tools/shapes/evaluate_pytorch.py),
//! so the metrics do too, and the models really do their jobs.

use blip_convert::ConvertOptions;
use blip_eval::{Dataset, EvalOptions, evaluate_captions, evaluate_retrieval, evaluate_vqa};
use blip_runtime::{BlipModel, SessionOptions};
use blip_testkit::{convert_fixture, fixture};

fn pytorch() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("eval/shapes-pytorch.json")).unwrap())
        .unwrap()
}

fn open(head: &str) -> (blip_testkit::Converted, BlipModel) {
    let c = convert_fixture(
        &fixture(&format!("shapes/models/shapes-{head}")),
        &ConvertOptions::default(),
    );
    let m = BlipModel::open(&c.pkg.dir, &SessionOptions::default()).unwrap();
    (c, m)
}

fn quiet() -> impl FnMut(usize, usize, &str) {
    |_, _, _| {}
}

#[test]
fn captions_equal_pytorch_and_score_high() {
    let (_c, mut m) = open("caption");
    let ds = Dataset::locate(&fixture("shapes/test"));
    let opts = EvalOptions {
        max_images: 60,
        ..Default::default()
    };
    let r = evaluate_captions(&mut m, &ds, &opts, &mut quiet()).unwrap();
    let want = &pytorch()["caption"]["predictions"];
    assert_eq!(r.predictions.len(), 60);
    for (file, text) in &r.predictions {
        assert_eq!(Some(text.as_str()), want[file].as_str(), "{file}");
    }
    assert!(r.exact_match >= 0.8 || r.cider_d >= 2.0, "{r:?}");
    assert!(r.bleu[3] > 0.5, "{:?}", r.bleu);
}

#[test]
fn retrieval_recall_matches_pytorch_on_the_whole_test_split() {
    let (_c, mut m) = open("retrieval");
    let ds = Dataset::locate(&fixture("shapes/test"));
    let r = evaluate_retrieval(&mut m, &ds, &EvalOptions::default(), &mut quiet()).unwrap();
    let want = &pytorch()["retrieval"];
    for (key, got) in [
        ("text_to_image_itc", &r.text_to_image_itc),
        ("image_to_text_itc", &r.image_to_text_itc),
        ("text_to_image_itm", r.text_to_image_itm.as_ref().unwrap()),
        ("image_to_text_itm", r.image_to_text_itm.as_ref().unwrap()),
    ] {
        for (k, v) in [("r1", got.r1), ("r5", got.r5), ("r10", got.r10)] {
            let w = want[key][k].as_f64().unwrap();
            // One query may flip where two candidates tie to within float noise.
            assert!(
                (v - w).abs() <= 1.5 / r.texts as f64,
                "{key} {k}: {v} vs PyTorch {w}"
            );
        }
    }
    assert!(r.text_to_image_itm.unwrap().r1 >= 0.9);
}

#[test]
fn vqa_answers_equal_pytorch_and_are_right() {
    let (_c, mut m) = open("vqa");
    let ds = Dataset::locate(&fixture("shapes/test"));
    let opts = EvalOptions {
        max_images: 40,
        ..Default::default()
    };
    let r = evaluate_vqa(&mut m, &ds, &opts, &mut quiet()).unwrap();
    let want = &pytorch()["vqa"]["predictions"];
    assert!(r.questions > 150);
    for (qid, answer) in &r.predictions {
        assert_eq!(
            Some(answer.as_str()),
            want[qid.to_string()].as_str(),
            "question {qid}"
        );
    }
    assert!(r.accuracy >= 0.9, "{r:?}");
}
