//! A loaded package: its graphs as ONNX Runtime sessions, tokenizer and image transform, with one
//! method per graph. Task logic (captioning, retrieval, VQA) builds on these in [`crate::tasks`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blip_package::Package;
use blip_preprocess::{BlipTokenizer, ImagePreprocessor, TextBatch};
use ndarray::{Array2, Array3, ArrayView3};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorRef};

use crate::{Result, Runtime, RuntimeError, SessionOptions};

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

impl From<&Path> for ImageInput {
    fn from(p: &Path) -> Self {
        ImageInput::Path(p.to_path_buf())
    }
}

pub(crate) fn infer_err(graph: &str) -> impl Fn(ort::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Inference {
        graph: graph.to_string(),
        message: e.to_string(),
    }
}

pub(crate) fn to_array3(v: &DynValue, graph: &str) -> Result<Array3<f32>> {
    let (shape, data) = v.try_extract_tensor::<f32>().map_err(infer_err(graph))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    Array3::from_shape_vec((dims[0], dims[1], dims[2]), data.to_vec()).map_err(|e| {
        RuntimeError::Inference {
            graph: graph.to_string(),
            message: e.to_string(),
        }
    })
}

pub(crate) fn to_array2(v: &DynValue, graph: &str) -> Result<Array2<f32>> {
    let (shape, data) = v.try_extract_tensor::<f32>().map_err(infer_err(graph))?;
    Array2::from_shape_vec((shape[0] as usize, shape[1] as usize), data.to_vec()).map_err(|e| {
        RuntimeError::Inference {
            graph: graph.to_string(),
            message: e.to_string(),
        }
    })
}

/// Outputs of the vision encoder for a batch of images.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// `[n, tokens, D]`
    pub hidden: Array3<f32>,
    /// `[n, E]`, L2-normalised (retrieval packages only).
    pub embeds: Option<Array2<f32>>,
}

pub struct BlipModel {
    pub package: Package,
    pub tokenizer: BlipTokenizer,
    pub images: ImagePreprocessor,
    sessions: HashMap<String, Session>,
    images_encoded: u64,
}

impl BlipModel {
    /// How many images the vision encoder has encoded so far (a repeated image in one call counts once).
    pub fn images_encoded(&self) -> u64 {
        self.images_encoded
    }

    /// Loads a package and opens every graph it lists.
    pub fn open(dir: &Path, opts: &SessionOptions) -> Result<BlipModel> {
        let package = Package::open(dir)?;
        let runtime = Runtime::init_with_threads(opts.intra_threads)?;
        let tokenizer =
            BlipTokenizer::from_file(&package.tokenizer_path(), package.manifest.tokens.clone())?;
        let images = ImagePreprocessor::new(&package.manifest.preprocess);
        let mut sessions = HashMap::new();
        for role in package.manifest.graphs.keys() {
            sessions.insert(role.clone(), runtime.package_session(&package, role, opts)?);
        }
        Ok(BlipModel {
            package,
            tokenizer,
            images,
            sessions,
            images_encoded: 0,
        })
    }

    pub fn head(&self) -> &str {
        &self.package.manifest.head
    }

    pub(crate) fn session(&mut self, role: &str) -> Result<&mut Session> {
        let head = self.package.manifest.head.clone();
        let dir = self.package.dir.clone();
        self.sessions.get_mut(role).ok_or(RuntimeError::Package(
            blip_package::PackageError::NoSuchGraph {
                path: dir,
                graph: role.to_string(),
                head,
            },
        ))
    }

    /// Decodes and preprocesses one image to `3 × S × S` floats.
    pub fn pixel_values(&self, input: &ImageInput) -> Result<Vec<f32>> {
        let img = match input {
            ImageInput::Path(p) => self.images.load_path(p)?,
            ImageInput::Bytes { name, data } => self.images.load_bytes(data, name)?,
        };
        Ok(self.images.pixel_values(&img)?)
    }

    /// Runs the vision encoder on `n` preprocessed images laid end to end.
    pub fn vision(&mut self, pixels: &[f32], n: usize) -> Result<VisionOutput> {
        let s = self.package.manifest.preprocess.image_size;
        self.images_encoded += n as u64;
        let session = self.session(blip_package::VISION_ENCODER)?;
        let input = TensorRef::from_array_view(([n, 3, s, s], pixels))
            .map_err(infer_err("vision_encoder"))?;
        let outputs = session
            .run(ort::inputs!["pixel_values" => input])
            .map_err(infer_err("vision_encoder"))?;
        let hidden = to_array3(&outputs["last_hidden_state"], "vision_encoder")?;
        let embeds = match outputs.get("image_embeds") {
            Some(v) => Some(to_array2(v, "vision_encoder")?),
            None => None,
        };
        Ok(VisionOutput { hidden, embeds })
    }

    /// ITC text embeddings (`[n, E]`, normalised) of a [CLS]-first batch.
    pub fn text_embeds(&mut self, batch: &TextBatch) -> Result<Array2<f32>> {
        let session = self.session(blip_package::TEXT_ENCODER)?;
        let shape = [batch.rows, batch.cols];
        let ids = TensorRef::from_array_view((shape, batch.ids.as_slice()))
            .map_err(infer_err("text_encoder"))?;
        let mask = TensorRef::from_array_view((shape, batch.mask.as_slice()))
            .map_err(infer_err("text_encoder"))?;
        let out = session
            .run(ort::inputs!["input_ids" => ids, "attention_mask" => mask])
            .map_err(infer_err("text_encoder"))?;
        to_array2(&out["text_embeds"], "text_encoder")
    }

    /// Runs an image-grounded text graph (`itm` or `vqa_question_encoder`) on row-aligned text and image states.
    fn grounded(
        &mut self,
        role: &str,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<ort::session::SessionOutputs<'_>> {
        let image = image.as_standard_layout().into_owned();
        let session = self.session(role)?;
        let shape = [batch.rows, batch.cols];
        let ids = Tensor::from_array((shape, batch.ids.clone())).map_err(infer_err(role))?;
        let mask = Tensor::from_array((shape, batch.mask.clone())).map_err(infer_err(role))?;
        let states = Tensor::from_array(image).map_err(infer_err(role))?;
        session
            .run(ort::inputs!["input_ids" => ids, "attention_mask" => mask, "encoder_hidden_states" => states])
            .map_err(infer_err(role))
    }

    /// ITM logits `[n, 2]` for row-aligned ([ENC]-first) texts and image states.
    pub fn itm_logits(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array2<f32>> {
        let out = self.grounded(blip_package::ITM, batch, image)?;
        to_array2(&out["itm_logits"], "itm")
    }

    /// VQA question states `[n, L, D]` for ([ENC]-first) questions and row-aligned image states.
    pub fn question_states(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array3<f32>> {
        let out = self.grounded(blip_package::VQA_QUESTION_ENCODER, batch, image)?;
        to_array3(&out["last_hidden_state"], "vqa_question_encoder")
    }

    /// Cross-attention K/V of every decoder layer for `states` (`[n, E, D]`), each row repeated
    /// `repeat` times (one per beam), in decoder input order.
    pub fn cross_kv(
        &mut self,
        states: ArrayView3<'_, f32>,
        repeat: usize,
    ) -> Result<Vec<(String, DynValue)>> {
        let states = states.as_standard_layout().into_owned();
        let layers = self.package.manifest.model.text_layers;
        let session = self.session(blip_package::CROSS_KV)?;
        let input = Tensor::from_array(states).map_err(infer_err("cross_kv"))?;
        let mut out = session
            .run(ort::inputs!["encoder_hidden_states" => input])
            .map_err(infer_err("cross_kv"))?;
        let mut values = Vec::with_capacity(2 * layers);
        for i in 0..layers {
            for kv in ["key", "value"] {
                let name = format!("cross_key_values.{i}.{kv}");
                let v = out.remove(&name).ok_or_else(|| RuntimeError::Inference {
                    graph: "cross_kv".into(),
                    message: format!("no output {name}"),
                })?;
                let v = if repeat > 1 {
                    repeat_rows(&v, repeat)?
                } else {
                    v
                };
                values.push((name, v));
            }
        }
        Ok(values)
    }
}

/// Repeats every row (axis 0) of a float tensor `times` times (`repeat_interleave`).
pub(crate) fn repeat_rows(v: &DynValue, times: usize) -> Result<DynValue> {
    let (shape, data) = v
        .try_extract_tensor::<f32>()
        .map_err(infer_err("cross_kv"))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let row: usize = dims[1..].iter().product();
    let mut out = Vec::with_capacity(data.len() * times);
    for r in data.chunks(row.max(1)) {
        for _ in 0..times {
            out.extend_from_slice(r);
        }
    }
    let mut new_dims = dims.clone();
    new_dims[0] *= times;
    Ok(Tensor::from_array((new_dims, out))
        .map_err(infer_err("cross_kv"))?
        .into_dyn())
}

/// Selects rows of a float tensor.
pub(crate) fn gather_rows(v: &DynValue, rows: &[usize]) -> Result<DynValue> {
    let (shape, data) = v
        .try_extract_tensor::<f32>()
        .map_err(infer_err("decoder"))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let row: usize = dims[1..].iter().product();
    let mut out = Vec::with_capacity(row * rows.len());
    for &r in rows {
        out.extend_from_slice(&data[r * row..(r + 1) * row]);
    }
    let mut new_dims = dims;
    new_dims[0] = rows.len();
    Ok(Tensor::from_array((new_dims, out))
        .map_err(infer_err("decoder"))?
        .into_dyn())
}
