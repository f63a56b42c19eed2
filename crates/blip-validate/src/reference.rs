//! PyTorch reference bundles: `NAME.json` (head, image names, texts/questions, `generate` token ids
//! with their settings) next to `NAME.safetensors` (pixel values, inputs and every graph output),
//! as the reference tool writes them (`blip_reference.py bundle`, and the test fixtures' goldens).

use std::path::{Path, PathBuf};

use blip_preprocess::TextBatch;
use safetensors::{Dtype, SafeTensors};

use crate::validate::{Result, ValidateError};

pub struct Bundle {
    pub path: PathBuf,
    pub head: String,
    pub images: Vec<String>,
    images_dir: PathBuf,
    meta: serde_json::Value,
    tensors: Vec<u8>,
}

impl Bundle {
    /// Loads `path` (the JSON; the safetensors file has the same stem).
    pub fn load(path: &Path, images_dir: Option<&Path>) -> Result<Bundle> {
        let err = |message: String| ValidateError::Bundle {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let head = meta["head"]
            .as_str()
            .ok_or_else(|| err("no \"head\"".into()))?
            .to_string();
        let images: Vec<String> = meta["images"]
            .as_array()
            .ok_or_else(|| err("no \"images\" list".into()))?
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let st = path.with_extension("safetensors");
        let tensors = std::fs::read(&st).map_err(|e| err(format!("{}: {e}", st.display())))?;
        SafeTensors::deserialize(&tensors).map_err(|e| err(format!("{}: {e}", st.display())))?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let images_dir = match (images_dir, meta["images_dir"].as_str()) {
            (Some(d), _) => d.to_path_buf(),
            (None, Some(d)) => folder.join(d),
            (None, None) => folder.to_path_buf(),
        };
        Ok(Bundle {
            path: path.to_path_buf(),
            head,
            images,
            images_dir,
            meta,
            tensors,
        })
    }

    /// The bundle's images that exist on disk (others are skipped by the preprocessing gate).
    pub fn image_paths(&self) -> Vec<PathBuf> {
        self.images
            .iter()
            .map(|n| self.images_dir.join(n))
            .filter(|p| p.is_file())
            .collect()
    }

    fn err(&self, message: String) -> ValidateError {
        ValidateError::Bundle {
            path: self.path.clone(),
            message,
        }
    }

    fn raw(&self, name: &str, dtype: Dtype) -> Result<(Vec<usize>, Vec<u8>)> {
        let st = SafeTensors::deserialize(&self.tensors).map_err(|e| self.err(e.to_string()))?;
        let t = st
            .tensor(name)
            .map_err(|_| self.err(format!("no tensor {name:?}")))?;
        if t.dtype() != dtype {
            return Err(self.err(format!("{name} is {:?}, expected {dtype:?}", t.dtype())));
        }
        Ok((t.shape().to_vec(), t.data().to_vec()))
    }

    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let (_, data) = self.raw(name, Dtype::F32)?;
        Ok(data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    pub fn i64(&self, name: &str) -> Result<Vec<i64>> {
        let (_, data) = self.raw(name, Dtype::I64)?;
        Ok(data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect())
    }

    /// `PREFIX.input_ids` and `PREFIX.attention_mask` as a batch.
    pub fn text_batch(&self, prefix: &str) -> Result<TextBatch> {
        let (shape, _) = self.raw(&format!("{prefix}.input_ids"), Dtype::I64)?;
        let ids = self.i64(&format!("{prefix}.input_ids"))?;
        let mask = self.i64(&format!("{prefix}.attention_mask"))?;
        if shape.len() != 2 || mask.len() != ids.len() {
            return Err(self.err(format!(
                "{prefix}: ids {shape:?} and mask do not form a batch"
            )));
        }
        Ok(TextBatch {
            ids,
            mask,
            rows: shape[0],
            cols: shape[1],
        })
    }

    /// `generate` entries: key → `{settings, prompt?, ids}`.
    pub fn generate(&self) -> Vec<(String, serde_json::Value)> {
        self.meta["generate"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn strings(&self, key: &str) -> Vec<String> {
        self.meta[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}
