//! Images as callers give them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// An image to process: a file, or encoded bytes already in memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageInput {
    Path(PathBuf),
    Bytes { name: String, data: Vec<u8> },
}

impl ImageInput {
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
