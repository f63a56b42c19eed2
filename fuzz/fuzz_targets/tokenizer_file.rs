//! Arbitrary bytes as tokenizer.json → BlipTokenizer::from_file; a tokenizer that loads must
//! encode, pad and decode without panicking.
#![no_main]

use blip_onnx_fuzz::{scratch_dir, write_input};
use blip_preprocess::{BlipTokenizer, FirstToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = write_input(&scratch_dir("tokenizer"), "tokenizer.json", data);
    let Ok(tok) = BlipTokenizer::from_file(&path, blip_onnx_fuzz::fixture_tokens()) else {
        return;
    };
    let _ = tok.encode_batch(
        &["a picture of a dog", "naïve 漢字 [SEP]"],
        FirstToken::Cls,
        Some(35),
    );
    let _ = tok.prompt_ids("a picture of");
    let _ = tok.decode(&[0, 1, 2, 101, 102, 1037, -1, i64::MAX]);
    let _ = tok.vocab_size();
});
