//! BLIP tokenization over the package's `tokenizer.json`: batches padded to the longest text, optional
//! truncation (35 tokens for retrieval texts and VQA questions, as the reference), and BLIP's first-token
//! conventions ([CLS] for ITC, [ENC] for ITM / VQA questions, [DEC] for decoder prompts).

use std::path::Path;

use blip_package::Tokens;
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
}

impl BlipTokenizer {
    pub fn from_file(path: &Path, tokens: Tokens) -> Result<Self, PreprocessError> {
        let failed = |e: &dyn std::fmt::Display| {
            PreprocessError::Tokenizer(format!("{}: {e}", path.display()))
        };
        let text = std::fs::read_to_string(path).map_err(|e| failed(&e))?;
        // tokenizers 0.23 panics (`expect("Helper")` in its decoder deserializer) on a JSON error
        // inside the "decoder" value (bad syntax, bad UTF-8, a broken escape) instead of returning
        // it. So the text is parsed here, and the tokenizer is built from the parsed value, which
        // has no such error left in it.
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| failed(&format!("not valid JSON: {e}")))?;
        let mut tokenizer: Tokenizer = serde_json::from_value(json).map_err(|e| failed(&e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| PreprocessError::Tokenizer(e.to_string()))?;
        Ok(BlipTokenizer { tokenizer, tokens })
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
        for t in texts {
            let mut ids = self.encode_one(t, max_tokens)?;
            ids[0] = match first {
                FirstToken::Cls => self.tokens.cls,
                FirstToken::Enc => self.tokens.enc,
                FirstToken::Dec => self.tokens.bos,
            };
            rows.push(ids);
        }
        Ok(self.pad(&rows))
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
        assert!(matches!(
            t.encode_batch(&["ok", " \n"], FirstToken::Cls, None),
            Err(PreprocessError::EmptyText)
        ));
    }
}
