//! Manifest values checked when a package is opened: a manifest is outside input, so nonsense
//! sizes, token limits past the model's positions and paths leaving the package are refused here,
//! naming the field, before any of them reaches a tensor shape or the filesystem.

use std::path::{Component, Path, PathBuf};

use crate::{Manifest, PackageError};

fn bad(path: &Path, field: &str, message: impl Into<String>) -> PackageError {
    PackageError::InvalidField {
        path: path.to_path_buf(),
        field: field.to_string(),
        message: message.into(),
    }
}

impl Manifest {
    /// Checks sizes, token ids and limits for consistency; `path` is the manifest, for errors.
    pub fn validate_values(&self, path: &Path) -> Result<(), PackageError> {
        let m = &self.model;
        let positive = [
            ("model.vision_hidden_size", m.vision_hidden_size),
            ("model.vision_layers", m.vision_layers),
            ("model.vision_heads", m.vision_heads),
            ("model.patch_size", m.patch_size),
            ("model.image_size", m.image_size),
            ("model.image_tokens", m.image_tokens),
            ("model.text_hidden_size", m.text_hidden_size),
            ("model.text_layers", m.text_layers),
            ("model.text_heads", m.text_heads),
            ("model.vocab_size", m.vocab_size),
            ("model.max_position_embeddings", m.max_position_embeddings),
            ("model.embed_dim", m.embed_dim.unwrap_or(1)),
            ("preprocess.image_size", self.preprocess.image_size),
            ("tokens.max_text_tokens", self.tokens.max_text_tokens),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(bad(path, field, "is 0; it must be positive"));
            }
        }
        // Pillow-exact preprocessing allocates size² pixels: a sane upper bound keeps a hostile
        // manifest from asking for terabytes.
        const MAX_IMAGE_SIZE: usize = 4096;
        if self.preprocess.image_size > MAX_IMAGE_SIZE {
            return Err(bad(
                path,
                "preprocess.image_size",
                format!(
                    "{} is over the {MAX_IMAGE_SIZE} px limit",
                    self.preprocess.image_size
                ),
            ));
        }
        for (field, hidden, heads) in [
            ("model.vision_heads", m.vision_hidden_size, m.vision_heads),
            ("model.text_heads", m.text_hidden_size, m.text_heads),
        ] {
            if !hidden.is_multiple_of(heads) {
                return Err(bad(
                    path,
                    field,
                    format!("{heads} heads do not divide the hidden size {hidden}"),
                ));
            }
        }
        if !m.image_size.is_multiple_of(m.patch_size) {
            return Err(bad(
                path,
                "model.patch_size",
                format!(
                    "{} does not divide the image size {}",
                    m.patch_size, m.image_size
                ),
            ));
        }
        let tokens = (m.image_size / m.patch_size).pow(2) + 1;
        if m.image_tokens != tokens {
            return Err(bad(
                path,
                "model.image_tokens",
                format!(
                    "is {}, but a {} px image in {} px patches gives {tokens} (patches + [CLS])",
                    m.image_tokens, m.image_size, m.patch_size
                ),
            ));
        }
        if self.preprocess.image_size != m.image_size {
            return Err(bad(
                path,
                "preprocess.image_size",
                format!(
                    "is {}, but the model takes {} px images",
                    self.preprocess.image_size, m.image_size
                ),
            ));
        }
        let p = &self.preprocess;
        if !(p.rescale.is_finite() && p.rescale > 0.0) {
            return Err(bad(
                path,
                "preprocess.rescale",
                format!("{} is not a positive number", p.rescale),
            ));
        }
        if p.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || p.mean.iter().any(|v| !v.is_finite())
        {
            return Err(bad(
                path,
                "preprocess.std",
                format!(
                    "mean {:?} / std {:?}: std must be positive and both finite",
                    p.mean, p.std
                ),
            ));
        }
        let t = &self.tokens;
        if t.max_text_tokens > m.max_position_embeddings {
            return Err(bad(
                path,
                "tokens.max_text_tokens",
                format!(
                    "{} is over the model's {} positions (model.max_position_embeddings)",
                    t.max_text_tokens, m.max_position_embeddings
                ),
            ));
        }
        if t.max_text_tokens < 3 {
            return Err(bad(
                path,
                "tokens.max_text_tokens",
                format!(
                    "{} leaves no room for a token between [CLS] and [SEP]",
                    t.max_text_tokens
                ),
            ));
        }
        for (field, id) in [
            ("tokens.bos", t.bos),
            ("tokens.enc", t.enc),
            ("tokens.cls", t.cls),
            ("tokens.sep", t.sep),
            ("tokens.eos", t.eos),
            ("tokens.pad", t.pad),
        ] {
            if id < 0 || id as u64 >= m.vocab_size as u64 {
                return Err(bad(
                    path,
                    field,
                    format!("id {id} is outside the vocabulary (0..{})", m.vocab_size),
                ));
            }
        }
        Ok(())
    }

    /// Checks that every file the manifest names stays inside `dir`: relative, no `..`, and no
    /// symlink resolving outside; `path` is the manifest, for errors.
    pub fn validate_paths(&self, dir: &Path, path: &Path) -> Result<(), PackageError> {
        let root = dir.canonicalize().map_err(|source| PackageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        confine(&root, path, "tokenizer", &self.tokenizer)?;
        for (role, g) in &self.graphs {
            confine(&root, path, &format!("graphs.{role}.file"), &g.file)?;
            if let Some(d) = &g.data_file {
                confine(&root, path, &format!("graphs.{role}.data_file"), d)?;
            }
        }
        Ok(())
    }
}

/// `value` (a manifest path) must be a plain relative path that resolves inside `root`.
fn confine(
    root: &Path,
    manifest: &Path,
    field: &str,
    value: &str,
) -> Result<PathBuf, PackageError> {
    let outside = |why: String| PackageError::PathOutside {
        path: manifest.to_path_buf(),
        field: field.to_string(),
        value: value.to_string(),
        reason: why,
    };
    let rel = Path::new(value);
    if value.is_empty() {
        return Err(outside("the path is empty".into()));
    }
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(outside("`..` leaves the package folder".into())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(outside(
                    "absolute paths are not allowed; paths are relative to the package".into(),
                ));
            }
        }
    }
    let full = root.join(rel);
    match full.canonicalize() {
        Ok(real) if !real.starts_with(root) => Err(outside(format!(
            "it is a symlink to {}, outside the package",
            real.display()
        ))),
        Ok(real) => Ok(real),
        // A missing file is reported by the caller, which knows which graph it is.
        Err(_) => Ok(full),
    }
}
