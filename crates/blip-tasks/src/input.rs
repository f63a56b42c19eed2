//! Images as callers give them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blip_preprocess::{ImagePreprocessor, PreprocessError};

/// An image to process: a file, or encoded bytes already in memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageInput {
    Path(PathBuf),
    Bytes { name: String, data: Vec<u8> },
}

impl ImageInput {
    /// Decodes and preprocesses the image to `3 × S × S` floats.
    pub fn pixel_values(&self, pre: &ImagePreprocessor) -> Result<Vec<f32>, PreprocessError> {
        let img = match self {
            ImageInput::Path(p) => pre.load_path(p)?,
            ImageInput::Bytes { name, data } => pre.load_bytes(data, name)?,
        };
        pre.pixel_values(&img)
    }

    pub fn name(&self) -> String {
        match self {
            ImageInput::Path(p) => p.display().to_string(),
            ImageInput::Bytes { name, .. } => name.clone(),
        }
    }
}

impl From<&Path> for ImageInput {
    fn from(p: &Path) -> Self {
        ImageInput::Path(p.to_path_buf())
    }
}

/// Distinct inputs and, per input, the index of its distinct copy: an image given several times in
/// one call is decoded and encoded once.
pub fn unique_inputs(images: &[ImageInput]) -> (Vec<ImageInput>, Vec<usize>) {
    let mut seen: HashMap<&ImageInput, usize> = HashMap::new();
    let mut unique = Vec::new();
    let map = images
        .iter()
        .map(|img| {
            *seen.entry(img).or_insert_with(|| {
                unique.push(img.clone());
                unique.len() - 1
            })
        })
        .collect();
    (unique, map)
}
