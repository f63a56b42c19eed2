//! The metric code against the reference implementations: pycocoevalcap's BLEU and CIDEr-D on small
//! cases (fixtures/eval/metric-cases.json, written by tools/shapes/evaluate_pytorch.py), and the
//! official VQAv2 accuracy on worked examples.

use blip_eval::caption_metrics::{bleu, cider_d, tokenize};
use blip_eval::vqa_metric::{accuracy, process_digit_article, process_punctuation};

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

#[test]
fn bleu_and_cider_d_equal_pycocoevalcap() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("eval/metric-cases.json")).unwrap())
            .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let mut keys: Vec<&String> = case["hyps"].as_object().unwrap().keys().collect();
        keys.sort();
        let hyps: Vec<Vec<String>> = keys
            .iter()
            .map(|k| tokenize(case["hyps"][k.as_str()].as_str().unwrap()))
            .collect();
        let refs: Vec<Vec<Vec<String>>> = keys
            .iter()
            .map(|k| {
                case["refs"][k.as_str()]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| tokenize(r.as_str().unwrap()))
                    .collect()
            })
            .collect();
        let b = bleu(&hyps, &refs);
        for (n, want) in case["bleu"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            assert!(
                (b[n] - want).abs() <= 1e-9 * want.abs().max(1e-6),
                "BLEU-{} {} vs pycocoevalcap {want}",
                n + 1,
                b[n]
            );
        }
        let (c, _) = cider_d(&hyps, &refs);
        let want = case["cider_d"].as_f64().unwrap();
        assert!(
            (c - want).abs() <= 1e-9,
            "CIDEr-D {c} vs pycocoevalcap {want}"
        );
    }
}

#[test]
fn tokenization_drops_punctuation_and_lowercases() {
    assert_eq!(
        tokenize("A red circle, a Blue square: done."),
        ["a", "red", "circle", "a", "blue", "square", "done"]
    );
    assert_eq!(tokenize("the dog's ball"), ["the", "dog's", "ball"]);
}

#[test]
fn vqa_accuracy_follows_the_official_evaluation() {
    let h = |v: &[(&str, usize)]| -> Vec<String> {
        v.iter()
            .flat_map(|(a, n)| std::iter::repeat_n(a.to_string(), *n))
            .collect()
    };
    // Ten humans agree: a match scores 1, anything else 0.
    assert_eq!(accuracy("red", &h(&[("red", 10)])), 1.0);
    assert_eq!(accuracy("blue", &h(&[("red", 10)])), 0.0);
    // Humans agree, so no normalisation: "Red" does not match (the official quirk).
    assert_eq!(accuracy("Red", &h(&[("red", 10)])), 0.0);
    // Two of ten said "3": each of the eight others sees 2 matches (2/3), each of the two sees 1 (1/3).
    let a = accuracy("3", &h(&[("3", 2), ("4", 8)]));
    assert!(
        (a - (8.0 * 2.0 / 3.0 + 2.0 / 3.0) / 10.0).abs() < 1e-12,
        "{a}"
    );
    // Humans disagree, so answers are normalised: "two" → "2", articles dropped, punctuation.
    let a = accuracy("Two", &h(&[("2", 3), ("two", 2), ("3", 5)]));
    assert_eq!(a, 1.0);
    assert_eq!(
        accuracy("a dog!", &h(&[("dog", 4), ("the dog", 3), ("cat", 3)])),
        1.0
    );
    assert_eq!(process_punctuation("yes, it is"), "yes it is");
    assert_eq!(process_punctuation("1,000"), "1000");
    assert_eq!(process_punctuation("red/blue"), "red blue");
    assert_eq!(process_punctuation("3.5 m."), "3.5 m");
    assert_eq!(process_digit_article("The Three dont"), "3 don't");
}
