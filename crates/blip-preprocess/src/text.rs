//! BLIP tokenization over the package's `tokenizer.json`: batches padded to the longest text, optional
//! truncation (35 tokens for retrieval texts and VQA questions, as the reference), and BLIP's first-token
//! conventions ([CLS] for ITC, [ENC] for ITM / VQA questions, [DEC] for decoder prompts).

use std::path::Path;

use blip_package::{Package, Tokens};
use tokenizers::Tokenizer;

use crate::PreprocessError;

/// Which token replaces [CLS] at position 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstToken {
    Cls,
    Enc,
    Dec,
}

/// Token ids and attention mask of a padded batch, row-major `[rows, cols]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBatch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub rows: usize,
    pub cols: usize,
}

impl TextBatch {
    pub fn row_ids(&self, r: usize) -> &[i64] {
        &self.ids[r * self.cols..(r + 1) * self.cols]
    }
    pub fn row_len(&self, r: usize) -> usize {
        self.mask[r * self.cols..(r + 1) * self.cols]
            .iter()
            .filter(|&&m| m == 1)
            .count()
    }
}

pub struct BlipTokenizer {
    tokenizer: Tokenizer,
    pub tokens: Tokens,
    /// The model's positions (`max_position_embeddings`): a text that does not fit is refused,
    /// naming it, instead of reaching the graph. `None` when built without a package.
    pub max_positions: Option<usize>,
}

/// `tokenizer.json` files larger than this are refused unread (bert-base-uncased's is 0.7 MB).
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// Loads a `tokenizer.json`, telling apart a file that is not JSON from valid JSON that is not a
/// tokenizer (the tokenizers crate reports both as a syntax error).
pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_TOKENIZER_BYTES {
        return Err(format!(
            "{} bytes, over the {MAX_TOKENIZER_BYTES}-byte limit for a tokenizer.json",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    parse_tokenizer_json(&text)
}

/// A `tokenizer.json` from its text: checked as JSON and as a tokenizers file before `tokenizers`
/// parses it (its own parser panics on some malformed input).
pub fn parse_tokenizer_json(text: &str) -> Result<Tokenizer, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let missing: Vec<&str> = ["model", "normalizer", "pre_tokenizer"]
        .into_iter()
        .filter(|k| value.get(k).is_none())
        .collect();
    if !value.is_object() || value.get("model").is_none() {
        return Err(format!(
            "valid JSON but not a tokenizer.json (a Hugging Face tokenizers file has a \"model\" object; this one lacks {})",
            missing.join(", ")
        ));
    }
    // Built from the parsed value: tokenizers 0.23 panics (`expect("Helper")` in its decoder
    // deserializer) on a JSON error inside "decoder" when it parses text itself.
    serde_json::from_value::<Tokenizer>(value)
        .map_err(|e| format!("valid JSON but not a usable tokenizer.json: {e}"))
}

impl BlipTokenizer {
    pub fn from_file(path: &Path, tokens: Tokens) -> Result<Self, PreprocessError> {
        let tokenizer = load_tokenizer_json(path)
            .map_err(|e| PreprocessError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::configured(tokenizer, tokens)
    }

    /// From the bytes of a `tokenizer.json` (the browser has no files); `name` names it in errors.
    pub fn from_bytes(bytes: &[u8], name: &str, tokens: Tokens) -> Result<Self, PreprocessError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| PreprocessError::Tokenizer(format!("{name}: not UTF-8: {e}")))?;
        let tokenizer = parse_tokenizer_json(text)
            .map_err(|e| PreprocessError::Tokenizer(format!("{name}: {e}")))?;
        Self::configured(tokenizer, tokens)
    }

    fn configured(mut tokenizer: Tokenizer, tokens: Tokens) -> Result<Self, PreprocessError> {
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| PreprocessError::Tokenizer(e.to_string()))?;
        Ok(BlipTokenizer {
            tokenizer,
            tokens,
            max_positions: None,
        })
    }

    /// The tokenizer of a package, limited to the model's positions.
    pub fn for_package(pkg: &Package) -> Result<Self, PreprocessError> {
        let mut t = BlipTokenizer::from_file(&pkg.tokenizer_path(), pkg.manifest.tokens.clone())?;
        t.max_positions = Some(pkg.manifest.model.max_position_embeddings);
        // Ids past the model's vocabulary would index past its logits.
        let (tok, model) = (t.vocab_size(), pkg.manifest.model.vocab_size);
        if tok > model {
            return Err(PreprocessError::Tokenizer(format!(
                "{}: {tok} tokens, more than the model's vocabulary of {model}",
                pkg.tokenizer_path().display()
            )));
        }
        Ok(t)
    }

    /// `[CLS] tokens [SEP]`, the tokens cut so the whole fits `max_tokens` (BERT's truncation of a
    /// single sequence). Done here rather than by reconfiguring the tokenizer, whose clone is costly.
    fn encode_one(
        &self,
        text: &str,
        max_tokens: Option<usize>,
    ) -> Result<Vec<i64>, PreprocessError> {
        if text.trim().is_empty() {
            return Err(PreprocessError::EmptyText);
        }
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| PreprocessError::Tokenizer(e.to_string()))?;
        let mut body: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        if let Some(max) = max_tokens {
            body.truncate(max.saturating_sub(2).max(1));
        }
        let mut ids = Vec::with_capacity(body.len() + 2);
        ids.push(self.tokens.cls);
        ids.extend(body);
        ids.push(self.tokens.sep);
        Ok(ids)
    }

    /// Encodes texts (with [CLS] … [SEP]), replaces the first token, pads to the longest.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        first: FirstToken,
        max_tokens: Option<usize>,
    ) -> Result<TextBatch, PreprocessError> {
        let mut rows = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let item = |message: String| PreprocessError::Text {
                ordinal: i + 1,
                count: texts.len(),
                snippet: t.chars().take(40).collect(),
                message,
            };
            let mut ids = match self.encode_one(t, max_tokens) {
                Ok(ids) => ids,
                Err(PreprocessError::EmptyText) => return Err(item("empty text".into())),
                Err(e) => return Err(item(e.to_string())),
            };
            self.check_fits(ids.len()).map_err(item)?;
            ids[0] = match first {
                FirstToken::Cls => self.tokens.cls,
                FirstToken::Enc => self.tokens.enc,
                FirstToken::Dec => self.tokens.bos,
            };
            rows.push(ids);
        }
        Ok(self.pad(&rows))
    }

    /// Errs when `len` tokens do not fit the model's positions.
    pub fn check_fits(&self, len: usize) -> Result<(), String> {
        match self.max_positions {
            Some(max) if len > max => Err(format!(
                "{len} tokens, over the model's {max} positions (max_position_embeddings)"
            )),
            _ => Ok(()),
        }
    }

    /// Pads id rows to the longest with [PAD], mask 0.
    pub fn pad(&self, rows: &[Vec<i64>]) -> TextBatch {
        let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * cols);
        let mut mask = Vec::with_capacity(rows.len() * cols);
        for r in rows {
            ids.extend_from_slice(r);
            mask.extend(std::iter::repeat_n(1, r.len()));
            ids.extend(std::iter::repeat_n(self.tokens.pad, cols - r.len()));
            mask.extend(std::iter::repeat_n(0, cols - r.len()));
        }
        TextBatch {
            ids,
            mask,
            rows: rows.len(),
            cols,
        }
    }

    /// A caption prompt as the decoder starts it: [DEC] + prompt tokens, no trailing [SEP]
    /// (BLIP's `input_ids[:, 0] = bos; input_ids[:, :-1]`). An empty prompt gives `[DEC]`.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<i64>, PreprocessError> {
        if prompt.trim().is_empty() {
            return Ok(vec![self.tokens.bos]);
        }
        let mut ids = self.encode_one(prompt, None)?;
        ids[0] = self.tokens.bos;
        ids.pop();
        self.check_fits(ids.len())
            .map_err(|m| PreprocessError::Tokenizer(format!("prompt {prompt:?}: {m}")))?;
        Ok(ids)
    }

    /// Text of generated ids, special tokens dropped.
    pub fn decode(&self, ids: &[i64]) -> Result<String, PreprocessError> {
        let ids: Vec<u32> = ids.iter().filter(|&&i| i >= 0).map(|&i| i as u32).collect();
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| PreprocessError::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> BlipTokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/models/tiny-caption/tokenizer.json");
        let tokens = Tokens {
            bos: 30522,
            enc: 30523,
            cls: 101,
            sep: 102,
            eos: 102,
            pad: 0,
            max_text_tokens: 35,
        };
        BlipTokenizer::from_file(&path, tokens).unwrap()
    }

    #[test]
    fn truncation_keeps_cls_and_sep_like_bert() {
        let t = tokenizer();
        let long = "a picture of a woman with a dog sitting in a beach ".repeat(20);
        let full = t
            .encode_batch(&[long.as_str()], FirstToken::Cls, None)
            .unwrap();
        let cut = t
            .encode_batch(&[long.as_str()], FirstToken::Enc, Some(35))
            .unwrap();
        assert_eq!(cut.cols, 35);
        assert_eq!(cut.ids[0], 30523);
        assert_eq!(cut.ids[34], 102);
        assert_eq!(cut.ids[1..34], full.ids[1..34]);
        // "a picture of" is [CLS] 1037 3861 1997 [SEP] in bert-base-uncased.
        let p = t
            .encode_batch(&["A picture of"], FirstToken::Cls, Some(35))
            .unwrap();
        assert_eq!(p.ids, [101, 1037, 3861, 1997, 102]);
        assert_eq!(
            t.prompt_ids("a picture of ").unwrap(),
            [30522, 1037, 3861, 1997]
        );
    }

    #[test]
    fn padding_and_empty_text() {
        let t = tokenizer();
        let b = t
            .encode_batch(&["a red circle", "two cats"], FirstToken::Cls, None)
            .unwrap();
        assert_eq!((b.rows, b.cols), (2, 5));
        assert_eq!(b.mask, [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(b.ids[9], 0);
        let err = t
            .encode_batch(&["ok", " \n", "fine"], FirstToken::Cls, None)
            .unwrap_err();
        assert_eq!(err.to_string(), r#"text 2 of 3 (" \n"): empty text"#);
    }

    #[test]
    fn a_text_over_the_model_positions_is_refused_naming_it() {
        let mut t = tokenizer();
        t.max_positions = Some(8);
        let long = "one two three four five six seven";
        let err = t
            .encode_batch(&["yes", long], FirstToken::Dec, None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "text 2 of 2 ({long:?}): 9 tokens, over the model's 8 positions (max_position_embeddings)"
            )
        );
        // Truncated texts always fit.
        let b = t.encode_batch(&[long], FirstToken::Enc, Some(8)).unwrap();
        assert_eq!(b.cols, 8);
        assert!(
            t.prompt_ids(&format!("{long} eight"))
                .unwrap_err()
                .to_string()
                .contains("over the model's 8 positions")
        );
    }

    #[test]
    fn valid_json_that_is_not_a_tokenizer_is_told_apart_from_broken_json() {
        let dir = std::env::temp_dir().join(format!("blip-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_tok = dir.join("config.json");
        std::fs::write(&not_tok, r#"{"model_type": "blip"}"#).unwrap();
        let err = load_tokenizer_json(&not_tok).unwrap_err();
        assert!(
            err.starts_with("valid JSON but not a tokenizer.json"),
            "{err}"
        );
        let broken = dir.join("broken.json");
        std::fs::write(&broken, r#"{"model": "#).unwrap();
        let err = load_tokenizer_json(&broken).unwrap_err();
        assert!(err.starts_with("not valid JSON"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
