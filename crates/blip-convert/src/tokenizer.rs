//! The package tokenizer: the checkpoint's `tokenizer.json`, or bert-base-uncased rules over its
//! `vocab.txt`, with BLIP's [DEC] (bos) and [ENC] tokens; padding and truncation are left to the runtime.

use std::path::{Path, PathBuf};

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

use blip_package::{Family, Tokens};

use crate::ConvertError;

pub struct PackageTokenizer {
    pub tokenizer: Tokenizer,
    pub bos: i64,
    /// The first token of an ITM text: [ENC] for BLIP, [CLS] for BLIP-2.
    pub enc: i64,
    pub cls: i64,
    pub sep: i64,
    pub pad: i64,
}

impl PackageTokenizer {
    /// The manifest's token ids: [SEP] ends a text, and texts keep at most 35 tokens (BLIP's and
    /// LAVIS's retrieval limit).
    pub fn tokens(&self) -> Tokens {
        Tokens {
            bos: self.bos,
            enc: self.enc,
            cls: self.cls,
            sep: self.sep,
            eos: self.sep,
            pad: self.pad,
            max_text_tokens: 35,
        }
    }
}

fn err(path: &Path, message: impl std::fmt::Display) -> ConvertError {
    ConvertError::Tokenizer {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn from_vocab(vocab: &Path) -> Result<Tokenizer, ConvertError> {
    let path = vocab
        .to_str()
        .ok_or_else(|| err(vocab, "path is not UTF-8"))?;
    let wp = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| err(vocab, e))?;
    let mut tok = Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(|e| err(vocab, e))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let sep = tok
        .token_to_id("[SEP]")
        .ok_or_else(|| err(vocab, "vocabulary has no [SEP]"))?;
    let cls = tok
        .token_to_id("[CLS]")
        .ok_or_else(|| err(vocab, "vocabulary has no [CLS]"))?;
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    tok.add_special_tokens(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(|t| AddedToken::from(t, true)),
    )
    .map_err(|e| err(vocab, e))?;
    Ok(tok)
}

/// Finds the tokenizer: `explicit` (a file or folder), else the checkpoint folder.
pub fn resolve(
    explicit: Option<&Path>,
    checkpoint_dir: Option<&Path>,
    vocab_size: usize,
    family: Family,
) -> Result<PackageTokenizer, ConvertError> {
    let dirs: Vec<PathBuf> = match explicit {
        Some(p) if p.is_file() => vec![],
        Some(p) => vec![p.to_path_buf()],
        None => checkpoint_dir
            .map(|d| vec![d.to_path_buf()])
            .unwrap_or_default(),
    };
    let mut candidates: Vec<PathBuf> = explicit
        .filter(|p| p.is_file())
        .map(|p| vec![p.to_path_buf()])
        .unwrap_or_default();
    for d in &dirs {
        candidates.push(d.join("tokenizer.json"));
        candidates.push(d.join("vocab.txt"));
    }
    let source = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| ConvertError::NoTokenizer {
            looked: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let mut tok = if source.extension().and_then(|e| e.to_str()) == Some("json") {
        blip_preprocess::load_tokenizer_json(&source).map_err(|e| err(&source, e))?
    } else {
        from_vocab(&source)?
    };
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| err(&source, e))?;
    // BLIP appends [DEC] and [ENC] to bert-base-uncased's 30522 entries (salesforce/BLIP init_tokenizer).
    // BLIP's tokenizer adds [DEC] (bos) and [ENC] (ITM's first token); BLIP-2's Q-Former adds
    // [DEC] only, and its ITM text starts with [CLS] (docs/blip2-reference.md §10).
    let added: &[&str] = match family {
        Family::Blip => &["[DEC]", "[ENC]"],
        Family::Blip2 => &["[DEC]"],
    };
    tok.add_special_tokens(added.iter().map(|t| AddedToken::from(*t, true)))
        .map_err(|e| err(&source, e))?;
    let id = |t: &str| {
        tok.token_to_id(t)
            .map(|i| i as i64)
            .ok_or_else(|| err(&source, format!("no {t} token")))
    };
    let pt = PackageTokenizer {
        bos: id("[DEC]")?,
        enc: id(family.itm_first_token())?,
        cls: id("[CLS]")?,
        sep: id("[SEP]")?,
        pad: id("[PAD]")?,
        tokenizer: tok,
    };
    let size = pt.tokenizer.get_vocab_size(true);
    if size != vocab_size {
        return Err(err(
            &source,
            format!("tokenizer has {size} tokens but the model's vocabulary has {vocab_size}"),
        ));
    }
    Ok(pt)
}
