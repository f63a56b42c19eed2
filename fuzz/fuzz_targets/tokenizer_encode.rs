//! Arbitrary text through the fixture tokenizer: byte 0 picks the first token and the truncation,
//! the rest is split on NUL into a batch; the ids are decoded back.
#![no_main]

use std::sync::OnceLock;

use blip_preprocess::{BlipTokenizer, FirstToken};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static BlipTokenizer {
    static TOKENIZER: OnceLock<BlipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/models/tiny-caption/tokenizer.json");
        BlipTokenizer::from_file(&path, blip_onnx_fuzz::fixture_tokens())
            .expect("the fixture tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let tok = tokenizer();
    let first = [FirstToken::Cls, FirstToken::Enc, FirstToken::Dec][control as usize % 3];
    let max_tokens = match control >> 2 {
        0 => None,
        n => Some(n as usize),
    };
    let text = String::from_utf8_lossy(rest);
    let texts: Vec<&str> = text.split('\0').collect();
    match tok.encode_batch(&texts, first, max_tokens) {
        Ok(batch) => {
            assert_eq!(batch.rows, texts.len());
            assert_eq!(batch.ids.len(), batch.rows * batch.cols);
            assert_eq!(batch.mask.len(), batch.ids.len());
            if let Some(max) = max_tokens {
                assert!(
                    batch.cols <= max.max(3),
                    "{} columns over the limit {max}",
                    batch.cols
                );
            }
            for r in 0..batch.rows {
                let _ = tok.decode(batch.row_ids(r));
            }
        }
        Err(_) => assert!(texts.iter().any(|t| t.trim().is_empty())),
    }
    if let Ok(ids) = tok.prompt_ids(&text) {
        assert_eq!(ids.first(), Some(&tok.tokens.bos));
        let _ = tok.decode(&ids);
    }
    let ids: Vec<i64> = rest
        .chunks(2)
        .map(|c| i64::from(c[0]) << 8 | i64::from(*c.get(1).unwrap_or(&0)))
        .collect();
    let _ = tok.decode(&ids);
});
