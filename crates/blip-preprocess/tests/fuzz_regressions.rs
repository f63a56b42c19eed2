//! Inputs that `scripts/fuzz.sh` found crashing the tokenizer loading (fixtures/fuzz-regressions/).

use std::path::PathBuf;

use blip_package::Tokens;
use blip_preprocess::BlipTokenizer;

fn regressions(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/fuzz-regressions")
        .join(target)
}

fn tokens() -> Tokens {
    Tokens {
        bos: 30522,
        enc: 30523,
        cls: 101,
        sep: 102,
        eos: 102,
        pad: 0,
        max_text_tokens: 35,
    }
}

fn load_error(path: &std::path::Path) -> String {
    match BlipTokenizer::from_file(path, tokens()) {
        Ok(_) => panic!("{} loaded as a tokenizer", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tokenizer_json_cut_short_inside_the_decoder_is_refused_naming_the_file() {
    // `{"decoder":` panicked inside tokenizers' decoder deserializer (expect("Helper")).
    let path = regressions("tokenizer_file").join("decoder-cut-short.json");
    let msg = load_error(&path);
    assert!(
        msg.contains("decoder-cut-short.json") && msg.contains("not valid JSON"),
        "{msg}"
    );
}

#[test]
fn bad_utf8_or_a_broken_escape_inside_the_decoder_is_refused() {
    // Found by the fuzzer: a byte that is not UTF-8 inside a decoder string (same panic as above;
    // a syntax-only check of the file let it through). The broken \u escape is the same class.
    for (file, problem) in [
        ("decoder-invalid-utf8.json", "valid UTF-8"),
        ("decoder-broken-escape.json", "not valid JSON"),
    ] {
        let msg = load_error(&regressions("tokenizer_file").join(file));
        assert!(msg.contains(file) && msg.contains(problem), "{msg}");
    }
}

#[test]
fn every_committed_tokenizer_regression_is_refused_without_a_panic() {
    let mut n = 0;
    for entry in std::fs::read_dir(regressions("tokenizer_file")).unwrap() {
        let path = entry.unwrap().path();
        let msg = load_error(&path);
        assert!(msg.starts_with("tokenizer: "), "{msg}");
        n += 1;
    }
    assert!(n >= 1, "no regression inputs found");
}
