//! `blip_onnx._native`: the Rust side of the `blip_onnx` Python package.
//!
//! A thin layer over `blip-runtime`, `blip-convert` and `blip-quantize`: Python values in, the
//! library's results out as plain tuples and numpy arrays (the public classes, docstrings and
//! defaults shown to users live in `python/blip_onnx`). Every call into the model runs with the GIL
//! released, so Python threads can run models side by side. Library errors become one exception
//! class per kind, with the library's message (the CLI prints the same text).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use blip_convert::{ConvertError as LibConvertError, ConvertOptions, ExternalData};
use blip_package::Head;
use blip_preprocess::{ImagePreprocessor, RgbImage};
use blip_quantize::{Policy, QuantizeError as LibQuantizeError, QuantizeOptions, Scheme};
use blip_runtime::request;
use blip_runtime::{
    BlipModel, CandidateStates, CaptionOptions, Device, ImageInput, OrtLibrary, PreprocessError,
    RuntimeError, SessionOptions, Strategy, VqaOptions,
};
use ndarray::{Array1, Array2};
use numpy::{IntoPyArray, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

create_exception!(
    _native,
    BlipError,
    PyException,
    "Base class of every blip_onnx error."
);
create_exception!(
    _native,
    OnnxRuntimeError,
    BlipError,
    "ONNX Runtime is missing, too old, or cannot be loaded."
);
create_exception!(
    _native,
    PackageError,
    BlipError,
    "The model package folder is missing, incomplete or invalid."
);
create_exception!(
    _native,
    SessionError,
    BlipError,
    "ONNX Runtime could not load one of the package's graphs."
);
create_exception!(
    _native,
    DeviceError,
    BlipError,
    "The requested execution provider (device) cannot be used."
);
create_exception!(
    _native,
    InferenceError,
    BlipError,
    "A graph failed while running."
);
create_exception!(
    _native,
    ImageError,
    BlipError,
    "An image could not be read, decoded or resized; the message names it."
);
create_exception!(
    _native,
    TextError,
    BlipError,
    "A text could not be tokenized."
);
create_exception!(
    _native,
    InputError,
    BlipError,
    "Arguments that do not fit together or do not fit the package."
);
create_exception!(
    _native,
    ConvertError,
    BlipError,
    "A checkpoint could not be converted."
);
create_exception!(
    _native,
    QuantizeError,
    BlipError,
    "A package could not be quantized."
);

use blip_runtime::defaults::{SAMPLE_SEED, SAMPLE_TEMPERATURE, SAMPLE_TOP_K};
/// Nucleus sampling's top_p as Python shows it (0.9, not its f32 neighbour 0.8999999761581421).
fn sample_top_p() -> f64 {
    // The shortest decimal of the f32 default, read back as f64.
    blip_runtime::defaults::SAMPLE_TOP_P
        .to_string()
        .parse()
        .unwrap_or(f64::from(blip_runtime::defaults::SAMPLE_TOP_P))
}

fn runtime_err(e: RuntimeError) -> PyErr {
    let message = e.to_string();
    match e {
        RuntimeError::LibraryNotFound { .. }
        | RuntimeError::LibraryVersion { .. }
        | RuntimeError::LibraryLoad { .. } => OnnxRuntimeError::new_err(message),
        RuntimeError::Session { .. } => SessionError::new_err(message),
        RuntimeError::ExecutionProvider(_) => DeviceError::new_err(message),
        RuntimeError::Inference { .. } => InferenceError::new_err(message),
        RuntimeError::Package(_) | RuntimeError::GraphMismatch { .. } => {
            PackageError::new_err(message)
        }
        RuntimeError::Preprocess(
            PreprocessError::Image { .. }
            | PreprocessError::TooLarge { .. }
            | PreprocessError::FileTooLarge { .. }
            | PreprocessError::Resize(_),
        ) => ImageError::new_err(message),
        RuntimeError::Preprocess(
            PreprocessError::EmptyText
            | PreprocessError::Text { .. }
            | PreprocessError::Tokenizer(_),
        ) => TextError::new_err(message),
        RuntimeError::Input(_) => InputError::new_err(message),
    }
}

/// One image as the model reads it: encoded (a file or bytes), or RGB pixels from numpy / PIL.
enum Image {
    Encoded(ImageInput),
    Pixels { name: String, rgb: RgbImage },
}

impl Image {
    /// Reads a path (str / os.PathLike), bytes, or an `H×W×3` uint8 array. `name` names the item in
    /// errors (a path names itself).
    fn extract(item: &Bound<'_, PyAny>, name: String) -> PyResult<Image> {
        if let Ok(bytes) = item.cast::<PyBytes>() {
            return Ok(Image::Encoded(ImageInput::Bytes {
                name,
                data: bytes.as_bytes().to_vec(),
            }));
        }
        if let Ok(array) = item.extract::<PyReadonlyArray3<'_, u8>>() {
            let shape = array.shape().to_vec();
            if shape[2] != 3 {
                return Err(ImageError::new_err(format!(
                    "image {name}: expected an H×W×3 RGB array, got shape {shape:?}"
                )));
            }
            let (Ok(height), Ok(width)) = (u32::try_from(shape[0]), u32::try_from(shape[1])) else {
                return Err(ImageError::new_err(format!(
                    "image {name}: {shape:?} is too large"
                )));
            };
            // Logical (row-major) order whatever the array's strides.
            let data = array.as_array().iter().copied().collect();
            return Ok(Image::Pixels {
                name,
                rgb: RgbImage {
                    width,
                    height,
                    data,
                },
            });
        }
        if let Ok(path) = item.extract::<PathBuf>() {
            return Ok(Image::Encoded(ImageInput::Path(path)));
        }
        let kind = item
            .get_type()
            .name()
            .map_or_else(|_| "?".to_string(), |n| n.to_string());
        Err(InputError::new_err(format!(
            "image {name}: expected a path, bytes, a PIL image or an H×W×3 uint8 numpy array, got {kind}"
        )))
    }

    fn all(items: &[Bound<'_, PyAny>], names: Vec<String>) -> PyResult<Vec<Image>> {
        if items.len() != names.len() {
            return Err(InputError::new_err(format!(
                "{} images but {} names",
                items.len(),
                names.len()
            )));
        }
        items
            .iter()
            .zip(names)
            .map(|(item, name)| Image::extract(item, name))
            .collect()
    }

    /// The preprocessed `3 × S × S` pixels.
    fn model_pixels(&self, model: &BlipModel) -> blip_runtime::Result<Vec<f32>> {
        Ok(self.pixels(&model.images)?)
    }

    fn pixels(&self, pre: &ImagePreprocessor) -> Result<Vec<f32>, PreprocessError> {
        match self {
            Image::Encoded(input) => input.pixel_values(pre),
            Image::Pixels { name, rgb } => pre.pixel_values(rgb).map_err(|e| match e {
                PreprocessError::Resize(message) => PreprocessError::Image {
                    name: name.clone(),
                    message,
                },
                other => other,
            }),
        }
    }
}

/// The pixels of every image laid end to end; the first bad image is the error.
fn pixels_of(model: &BlipModel, images: &[&Image]) -> blip_runtime::Result<Vec<f32>> {
    let mut pixels = Vec::new();
    for image in images {
        pixels.extend(image.model_pixels(model)?);
    }
    Ok(pixels)
}

fn parse_device(device: &str) -> PyResult<Device> {
    match device {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda { device_id: 0 }),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(device_id) => Ok(Device::Cuda { device_id }),
            None => Err(InputError::new_err(format!(
                "device {other:?}: expected cpu, cuda or cuda:N"
            ))),
        },
    }
}

/// Captioning keyword arguments as a request for the request layer, which applies the defaults
/// and the checks ([`request::CaptionRequest::resolve`]), as at every other door.
#[allow(clippy::too_many_arguments)]
fn caption_request(
    prompt: Option<String>,
    beams: Option<usize>,
    sample: bool,
    top_p: Option<f32>,
    top_k: Option<usize>,
    temperature: Option<f32>,
    seed: Option<u64>,
    max_length: Option<usize>,
    min_length: Option<usize>,
    length_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
) -> request::CaptionRequest {
    request::CaptionRequest {
        prompt,
        beams,
        sample: sample.then_some(true),
        top_p,
        top_k,
        temperature,
        seed,
        max_length,
        min_length,
        length_penalty,
        repetition_penalty,
    }
}

/// A request-layer error as Python's `InputError`, naming the keyword argument.
fn request_err(e: request::RequestError) -> PyErr {
    InputError::new_err(e.to_string())
}

/// A loaded package (`blip_onnx.BlipModel` wraps it).
#[pyclass(name = "Model", module = "blip_onnx._native", frozen)]
struct Model {
    inner: Mutex<BlipModel>,
    head: String,
    package: PathBuf,
    /// What the request layer checks options against, read once at open: resolving options
    /// must not wait for the model lock while holding the GIL.
    limits: request::ModelLimits,
}

type Embeddings<'py> = Bound<'py, numpy::PyArray2<f32>>;
/// Rank mode per question: best answer index, then (answer index, score) candidates.
type Ranked = (usize, Vec<(usize, f32)>);
/// A retrieval hit: (index, score, itc, itm).
type HitTuple = (usize, f32, f32, Option<f32>);

impl Model {
    fn lock(&self) -> PyResult<MutexGuard<'_, BlipModel>> {
        self.inner.lock().map_err(|_| {
            InferenceError::new_err("the model is unusable: an earlier call panicked inside it")
        })
    }
}

#[pymethods]
impl Model {
    /// Loads ONNX Runtime from `library` (once per process) and opens the package at `path`.
    #[new]
    #[pyo3(signature = (path, library, threads = 0, device = "cpu"))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        library: PathBuf,
        threads: usize,
        device: &str,
    ) -> PyResult<Self> {
        let device = parse_device(device)?;
        let opts = SessionOptions {
            intra_threads: threads,
            device,
            ..Default::default()
        };
        let model = py
            .detach(|| {
                OrtLibrary::init_from_library(&library, threads)?;
                BlipModel::open(&path, &opts)
            })
            .map_err(runtime_err)?;
        Ok(Model {
            head: model.head().to_string(),
            limits: request::ModelLimits::of(&model.package),
            inner: Mutex::new(model),
            package: path,
        })
    }

    #[getter]
    fn head(&self) -> &str {
        &self.head
    }

    #[getter]
    fn package(&self) -> PathBuf {
        self.package.clone()
    }

    /// `(text, ids, score)` per image, or the image's exception instance when it cannot be read.
    #[pyo3(signature = (images, names, *, prompt = None, beams = None, sample = false, top_p = None,
        top_k = None, temperature = None, seed = None, max_length = None, min_length = None,
        length_penalty = None, repetition_penalty = None))]
    #[allow(clippy::too_many_arguments)]
    fn caption<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Bound<'py, PyAny>>,
        names: Vec<String>,
        prompt: Option<String>,
        beams: Option<usize>,
        sample: bool,
        top_p: Option<f32>,
        top_k: Option<usize>,
        temperature: Option<f32>,
        seed: Option<u64>,
        max_length: Option<usize>,
        min_length: Option<usize>,
        length_penalty: Option<f32>,
        repetition_penalty: Option<f32>,
    ) -> PyResult<Bound<'py, PyList>> {
        let opts = caption_request(
            prompt,
            beams,
            sample,
            top_p,
            top_k,
            temperature,
            seed,
            max_length,
            min_length,
            length_penalty,
            repetition_penalty,
        )
        .resolve(self.limits)
        .map_err(request_err)?;
        let images = Image::all(&images, names)?;
        let results = py.detach(|| -> PyResult<_> {
            let mut model = self.lock()?;
            // A bad image gets its own error; the others are captioned in one batch.
            let mut pixels = Vec::new();
            let mut slots = Vec::with_capacity(images.len());
            let mut ok = 0;
            for image in &images {
                match image.model_pixels(&model) {
                    Ok(p) => {
                        pixels.extend(p);
                        slots.push(Ok(ok));
                        ok += 1;
                    }
                    Err(e) => slots.push(Err(e)),
                }
            }
            let captions = if ok > 0 {
                model
                    .caption_pixels(&pixels, ok, &opts)
                    .map_err(runtime_err)?
            } else {
                Vec::new()
            };
            Ok(slots
                .into_iter()
                .map(|slot| slot.map(|i| captions[i].clone()))
                .collect::<Vec<_>>())
        })?;
        let out = PyList::empty(py);
        for result in results {
            match result {
                Ok(c) => out.append((c.text, c.ids, c.score))?,
                Err(e) => out.append(runtime_err(e).into_value(py))?,
            }
        }
        Ok(out)
    }

    /// ITC embeddings `[n, E]` (L2-normalised) of images.
    fn embed_images<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Bound<'py, PyAny>>,
        names: Vec<String>,
    ) -> PyResult<Embeddings<'py>> {
        let images = Image::all(&images, names)?;
        let embeds = py.detach(|| -> PyResult<Array2<f32>> {
            let mut model = self.lock()?;
            image_embeddings(&mut model, &images.iter().collect::<Vec<_>>()).map_err(runtime_err)
        })?;
        Ok(embeds.into_pyarray(py))
    }

    /// ITC embeddings `[n, E]` (L2-normalised) of texts.
    fn embed_texts<'py>(&self, py: Python<'py>, texts: Vec<String>) -> PyResult<Embeddings<'py>> {
        let embeds = py.detach(|| -> PyResult<Array2<f32>> {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            self.lock()?.embed_texts(&refs).map_err(runtime_err)
        })?;
        Ok(embeds.into_pyarray(py))
    }

    /// ITM logits `[n, 2]` and ITC similarities `[n]` of one image with each text.
    fn itm<'py>(
        &self,
        py: Python<'py>,
        image: Bound<'py, PyAny>,
        name: String,
        texts: Vec<String>,
    ) -> PyResult<(Embeddings<'py>, Bound<'py, numpy::PyArray1<f32>>)> {
        request::check_texts("texts", &texts, request::limits::MAX_TEXTS).map_err(request_err)?;
        let image = Image::extract(&image, name)?;
        let (logits, itc) = py.detach(|| -> PyResult<(Array2<f32>, Array1<f32>)> {
            let mut model = self.lock()?;
            let run = |model: &mut BlipModel| -> blip_runtime::Result<_> {
                let pixels = image.model_pixels(model)?;
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let scores = model.itm(&pixels, &refs)?;
                let logits = Array2::from_shape_fn((scores.len(), 2), |(i, j)| scores[i].logits[j]);
                let itc = scores.iter().map(|s| s.itc).collect::<Array1<f32>>();
                Ok((logits, itc))
            };
            run(&mut model).map_err(runtime_err)
        })?;
        Ok((logits.into_pyarray(py), itc.into_pyarray(py)))
    }

    /// Generated answers, one per question, about one image.
    #[pyo3(signature = (image, name, questions, *, mask_question_padding = false))]
    fn answer(
        &self,
        py: Python<'_>,
        image: Bound<'_, PyAny>,
        name: String,
        questions: Vec<String>,
        mask_question_padding: bool,
    ) -> PyResult<Vec<(String, Vec<i64>)>> {
        let request::VqaMode::Generate(opts) = request::VqaRequest {
            questions: questions.clone(),
            answers: None,
            k: None,
            mask_question_padding: Some(mask_question_padding),
        }
        .resolve()
        .map_err(request_err)?
        else {
            return Err(InputError::new_err(
                "internal: a request without answers resolved to rank mode",
            ));
        };
        let image = Image::extract(&image, name)?;
        py.detach(|| -> PyResult<_> {
            let mut model = self.lock()?;
            let qs: Vec<&str> = questions.iter().map(String::as_str).collect();
            let answers = match &image {
                // As the CLI: the image once per question (decoded and encoded once).
                Image::Encoded(input) => model.answer(&vec![input.clone(); qs.len()], &qs, &opts),
                Image::Pixels { .. } => image
                    .model_pixels(&model)
                    .and_then(|p| model.answer_pixels_of(&p, 1, &vec![0; qs.len()], &qs, &opts)),
            }
            .map_err(runtime_err)?;
            Ok(answers.into_iter().map(|a| (a.text, a.ids)).collect())
        })
    }

    /// LAVIS rank mode: per question, `(best answer index, [(answer index, score), ...])`.
    #[pyo3(signature = (image, name, questions, answers, k = None))]
    fn rank_answers(
        &self,
        py: Python<'_>,
        image: Bound<'_, PyAny>,
        name: String,
        questions: Vec<String>,
        answers: Vec<String>,
        k: Option<usize>,
    ) -> PyResult<Vec<Ranked>> {
        // The request layer's rules and default k (LAVIS: 128), as at every door.
        let request::VqaMode::Rank { k, .. } = request::VqaRequest {
            questions: questions.clone(),
            answers: Some(answers.clone()),
            k,
            mask_question_padding: None,
        }
        .resolve()
        .map_err(request_err)?
        else {
            return Err(InputError::new_err(
                "internal: a request with answers resolved to generation",
            ));
        };
        let image = Image::extract(&image, name)?;
        let max_tokens = VqaOptions::default().max_question_tokens;
        py.detach(|| -> PyResult<_> {
            let mut model = self.lock()?;
            let qs: Vec<&str> = questions.iter().map(String::as_str).collect();
            let list: Vec<&str> = answers.iter().map(String::as_str).collect();
            let n = qs.len();
            let ranked = match &image {
                Image::Encoded(input) => {
                    model.rank_answers(&vec![input.clone(); n], &qs, &list, k, max_tokens)
                }
                Image::Pixels { .. } => image.model_pixels(&model).and_then(|p| {
                    model.rank_answers_pixels_of(&p, 1, &vec![0; n], &qs, &list, k, max_tokens)
                }),
            }
            .map_err(runtime_err)?;
            Ok(ranked.into_iter().map(|r| (r.best, r.candidates)).collect())
        })
    }

    /// The best `k` images for `text`: `(index, score, itc, itm)` best first. The top `rerank` by
    /// ITC are re-scored with ITM (score = ITM logit + ITC), which needs their `images`.
    #[pyo3(signature = (text, embeddings, rerank, images = None, names = None, k = None))]
    #[allow(clippy::too_many_arguments)]
    fn rank_images(
        &self,
        py: Python<'_>,
        text: String,
        embeddings: PyReadonlyArray2<'_, f32>,
        rerank: usize,
        images: Option<Vec<Bound<'_, PyAny>>>,
        names: Option<Vec<String>>,
        k: Option<usize>,
    ) -> PyResult<Vec<HitTuple>> {
        let request::SearchOptions { k, rerank } = request::SearchRequest {
            text: text.clone(),
            k,
            rerank: Some(rerank),
        }
        .resolve()
        .map_err(request_err)?;
        let embeds = embeddings.as_array().to_owned();
        let images = match (images, names) {
            (Some(images), Some(names)) => Some(Image::all(&images, names)?),
            _ => None,
        };
        if let Some(images) = &images
            && images.len() != embeds.nrows()
        {
            return Err(InputError::new_err(format!(
                "{} embeddings but {} images",
                embeds.nrows(),
                images.len()
            )));
        }
        if rerank > 0 && images.is_none() {
            return Err(InputError::new_err(
                "rerank needs the images the embeddings come from (images=...); pass rerank=0 for ITC only",
            ));
        }
        py.detach(|| -> PyResult<_> {
            let mut model = self.lock()?;
            let pre = model.images.clone();
            // Only reached with rerank > 0, when `images` was checked to be given.
            let all = images.as_deref().unwrap_or_default();
            let mut candidate_pixels =
                |cand: &[usize]| -> Result<Vec<f32>, blip_runtime::TaskError> {
                    let mut pixels = Vec::new();
                    for &i in cand {
                        pixels.extend(all[i].pixels(&pre)?);
                    }
                    Ok(pixels)
                };
            let hits = model
                .rank_images(
                    &text,
                    // One vector per image, as `embed_images` returns them.
                    embeds.view().insert_axis(ndarray::Axis(1)),
                    rerank,
                    CandidateStates::Pixels(&mut candidate_pixels),
                )
                .map_err(runtime_err)?;
            Ok(hits
                .into_iter()
                .take(k)
                .map(|h| (h.index, h.score, h.itc, h.itm))
                .collect())
        })
    }
}

fn no_embeddings(model: &BlipModel) -> RuntimeError {
    RuntimeError::Input(format!(
        "package head {} has no image embeddings",
        model.head()
    ))
}

fn image_embeddings(model: &mut BlipModel, images: &[&Image]) -> blip_runtime::Result<Array2<f32>> {
    let pixels = pixels_of(model, images)?;
    let embeds = model
        .vision(&pixels, images.len())?
        .embeds
        .ok_or_else(|| no_embeddings(model))?;
    Ok(blip_runtime::one_vector_per_image(embeds)?)
}

fn convert_err(e: LibConvertError) -> PyErr {
    ConvertError::new_err(e.to_string())
}

/// Converts a checkpoint into a package; returns the report as a dict.
#[pyfunction]
#[pyo3(signature = (checkpoint, output, *, image_size = None, config = None, tokenizer = None,
    head = None, external_data = None, force = false))]
#[allow(clippy::too_many_arguments)]
fn convert<'py>(
    py: Python<'py>,
    checkpoint: PathBuf,
    output: PathBuf,
    image_size: Option<usize>,
    config: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    head: Option<&str>,
    external_data: Option<&str>,
    force: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let head = head
        .map(|name| {
            Head::from_manifest_name(name).ok_or_else(|| {
                InputError::new_err(format!("head {name:?}: expected caption, retrieval or vqa"))
            })
        })
        .transpose()?;
    let defaults = ConvertOptions::default();
    let external_data = match external_data {
        None => defaults.external_data,
        Some("auto") => ExternalData::Auto,
        Some("always") => ExternalData::Always,
        Some("never") => ExternalData::Never,
        Some(other) => {
            return Err(InputError::new_err(format!(
                "external_data {other:?}: expected auto, always or never"
            )));
        }
    };
    let opts = ConvertOptions {
        image_size,
        config,
        tokenizer,
        head,
        force,
        external_data,
    };
    let report = py
        .detach(|| blip_convert::convert(&checkpoint, &output, &opts))
        .map_err(convert_err)?;
    let out = PyDict::new(py);
    out.set_item("output", report.output)?;
    out.set_item("head", report.head.name())?;
    out.set_item("seconds", report.total_seconds)?;
    let graphs = PyList::empty(py);
    for g in &report.graphs {
        let d = PyDict::new(py);
        d.set_item("role", &g.role)?;
        d.set_item("bytes", g.bytes)?;
        d.set_item("nodes", g.nodes)?;
        d.set_item("seconds", g.seconds)?;
        graphs.append(d)?;
    }
    out.set_item("graphs", graphs)?;
    Ok(out)
}

fn quantize_err(e: LibQuantizeError) -> PyErr {
    QuantizeError::new_err(e.to_string())
}

/// Writes a quantized copy of a package; returns one dict per rewritten graph.
#[pyfunction]
#[pyo3(signature = (package, output, *, target = "native", precision = None, policy = "default", block_size = None,
    accuracy_level = None, reduce_range = None, weight_type = None, asymmetric = None,
    keep_embeddings = None, keep_fp32 = None, force = false))]
#[allow(clippy::too_many_arguments)]
fn quantize<'py>(
    py: Python<'py>,
    package: PathBuf,
    output: PathBuf,
    target: &str,
    precision: Option<&str>,
    policy: &str,
    block_size: Option<usize>,
    accuracy_level: Option<i64>,
    reduce_range: Option<bool>,
    weight_type: Option<&str>,
    asymmetric: Option<bool>,
    keep_embeddings: Option<bool>,
    keep_fp32: Option<Vec<String>>,
    force: bool,
) -> PyResult<Bound<'py, PyList>> {
    let target: blip_quantize::Target = target.parse().map_err(InputError::new_err)?;
    let scheme = match precision {
        None => target.default_scheme(),
        Some("int8") => Scheme::Int8,
        Some("int4") => target.int4(
            block_size.unwrap_or(blip_quantize::DEFAULT_INT4_BLOCK_SIZE),
            accuracy_level,
        ),
        Some("fp16") => Scheme::Fp16,
        Some(other) => {
            return Err(InputError::new_err(format!(
                "precision {other:?}: expected int8, int4 or fp16"
            )));
        }
    };
    let defaults = QuantizeOptions::default();
    let weight_type = match weight_type {
        None => target.default_weight_type(),
        Some("qint8") => blip_quantize::WeightType::QInt8,
        Some("quint8") => blip_quantize::WeightType::QUInt8,
        Some(other) => {
            return Err(InputError::new_err(format!(
                "weight_type {other:?}: expected qint8 or quint8"
            )));
        }
    };
    let opts = QuantizeOptions {
        policy: Policy::parse(policy, &scheme, target),
        scheme,
        reduce_range: reduce_range.unwrap_or(defaults.reduce_range),
        weight_type,
        int4_symmetric: asymmetric.map_or(defaults.int4_symmetric, |a| !a),
        embeddings: keep_embeddings.map_or(defaults.embeddings, |k| !k),
        keep_fp32: keep_fp32.unwrap_or(defaults.keep_fp32),
        target,
        force,
    };
    let stats = py
        .detach(|| blip_quantize::quantize_package(&package, &output, &opts))
        .map_err(quantize_err)?;
    let out = PyList::empty(py);
    for s in &stats {
        let d = PyDict::new(py);
        d.set_item("role", &s.role)?;
        d.set_item("quantized_matmuls", s.quantized_matmuls)?;
        d.set_item("other_rewrites", s.other_rewrites)?;
        d.set_item("bytes_before", s.bytes_before)?;
        d.set_item("bytes_after", s.bytes_after)?;
        out.append(d)?;
    }
    Ok(out)
}

/// Runs the `blip-onnx` command line with `argv` (argv[0] the program name) and returns its exit
/// code: the wheel's console script (`blip_onnx._cli`). The GIL is released for the whole run, so a
/// long `serve` or `convert` does not stop other Python threads.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<std::ffi::OsString>) -> u8 {
    py.detach(|| {
        let code = blip_onnx_cli::main_with_args(argv);
        // The native binary's std flushes stdout on exit; a host process (Python) does not, so a
        // last line without a newline would be lost.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        code
    })
}

/// Library defaults of the options `caption` leaves unset, for docs and `repr`.
#[pyfunction]
fn caption_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = CaptionOptions::default();
    let out = PyDict::new(py);
    out.set_item("prompt", &d.prompt)?;
    if let Strategy::Beam {
        num_beams,
        length_penalty,
        ..
    } = d.strategy
    {
        out.set_item("beams", num_beams)?;
        out.set_item("length_penalty", length_penalty)?;
    }
    out.set_item("max_length", d.max_length)?;
    out.set_item("min_length", d.min_length)?;
    out.set_item("repetition_penalty", d.repetition_penalty)?;
    out.set_item("top_p", sample_top_p())?;
    out.set_item("top_k", SAMPLE_TOP_K)?;
    out.set_item("temperature", SAMPLE_TEMPERATURE)?;
    out.set_item("seed", SAMPLE_SEED)?;
    Ok(out)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(caption_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add("ORT_VERSION", blip_runtime::ORT_VERSION)?;
    m.add("ORT_MIN_MINOR", blip_runtime::ORT_MIN_MINOR)?;
    m.add("BlipError", py.get_type::<BlipError>())?;
    m.add("OnnxRuntimeError", py.get_type::<OnnxRuntimeError>())?;
    m.add("PackageError", py.get_type::<PackageError>())?;
    m.add("SessionError", py.get_type::<SessionError>())?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("InferenceError", py.get_type::<InferenceError>())?;
    m.add("ImageError", py.get_type::<ImageError>())?;
    m.add("TextError", py.get_type::<TextError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("ConvertError", py.get_type::<ConvertError>())?;
    m.add("QuantizeError", py.get_type::<QuantizeError>())?;
    Ok(())
}
