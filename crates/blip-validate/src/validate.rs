//! `validate`: a package against a PyTorch reference bundle and/or another package, plus the
//! guide's runtime checks run for real (batch 1..8 consistency, edge inputs, a long run's RSS).

use std::path::{Path, PathBuf};

use blip_package::Head;
use blip_runtime::{
    BlipModel, CaptionOptions, Generated, ImageInput, SessionOptions, Strategy, VqaOptions,
};
use ndarray::{Array2, Array3, ArrayView3, Axis};

use crate::gates::{
    Gate, Thresholds, ValidateReport, cosine, max_abs_diff, mse, rss_bytes, token_agreement,
};
use crate::reference::Bundle;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Runtime(#[from] blip_runtime::RuntimeError),
    #[error("reference bundle {path}: {message}")]
    Bundle { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, ValidateError>;

/// What to validate and how.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// PyTorch reference bundle (`NAME.json` next to `NAME.safetensors`) written by the reference tool.
    pub reference: Option<PathBuf>,
    /// Where the bundle's images are (default: the bundle's `images_dir`, else its folder).
    pub images_dir: Option<PathBuf>,
    /// Another package to compare with (e.g. the FP32 package a quantized one came from).
    pub against: Option<PathBuf>,
    /// Images for the package comparison and the runtime checks (default: generated scenes).
    pub images: Vec<ImageInput>,
    pub texts: Vec<String>,
    pub questions: Vec<String>,
    pub thresholds: Thresholds,
    /// Batch sizes 1..=max_batch must give batch 1's per-item results (0 skips the check).
    pub max_batch: usize,
    /// Inferences in the long run (0 skips it).
    pub long_run: usize,
    /// A COCO-style dataset (`blip-onnx eval` layout): with `against`, the task metric of both
    /// packages is computed and its relative drop gated (`Thresholds::max_quality_drop`).
    pub eval_dataset: Option<PathBuf>,
    /// Evaluate on the first N images only (0: all).
    pub eval_max_images: usize,
    pub session: SessionOptions,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            reference: None,
            images_dir: None,
            against: None,
            images: Vec::new(),
            texts: DEFAULT_TEXTS.iter().map(|s| s.to_string()).collect(),
            questions: DEFAULT_QUESTIONS.iter().map(|s| s.to_string()).collect(),
            thresholds: Thresholds::default(),
            max_batch: 8,
            long_run: 2000,
            eval_dataset: None,
            eval_max_images: 0,
            session: SessionOptions::default(),
        }
    }
}

pub const DEFAULT_TEXTS: &[&str] = &[
    "a red circle on a white background",
    "a dog running on the beach",
    "two people riding bicycles down a street",
    "a plate of food on a wooden table",
    "a blue square next to a green triangle",
    "a cat sleeping on a couch",
    "a city skyline at night",
    "a man holding an umbrella in the rain",
];

pub const DEFAULT_QUESTIONS: &[&str] = &[
    "what color is the circle?",
    "how many shapes are there?",
    "is there a dog?",
    "what is in the picture?",
];

/// Deterministic scenes (PNG bytes) for when no images are given: a gradient with bars and blocks.
pub fn generated_images(n: usize) -> Vec<ImageInput> {
    (0..n)
        .map(|i| {
            let (w, h) = (64 + 16 * (i as u32 % 3), 48 + 24 * (i as u32 % 2));
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let k = i as u32 * 37;
                let block = ((x / 8 + y / 8 + i as u32) % 2) as u8 * 90;
                image::Rgb([
                    ((x * 255 / w + k) % 256) as u8,
                    ((y * 255 / h + 2 * k) % 256) as u8,
                    block.wrapping_add((k % 120) as u8),
                ])
            });
            ImageInput::Bytes {
                name: format!("generated-{i}.png"),
                data: png_bytes(&image::DynamicImage::ImageRgb8(img)),
            }
        })
        .collect()
}

fn png_bytes(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory RGB/Luma image as PNG does not fail.
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// Runs every gate the options ask for; the report fails when any gate does.
pub fn validate(package: &Path, opts: &ValidateOptions) -> Result<ValidateReport> {
    let mut a = BlipModel::open(package, &opts.session)?;
    let mut gates = Vec::new();
    let bundle = match &opts.reference {
        Some(p) => Some(Bundle::load(p, opts.images_dir.as_deref())?),
        None => None,
    };
    if let Some(b) = &bundle {
        reference_gates(&mut a, b, &opts.thresholds, &mut gates)?;
    }
    let images = if !opts.images.is_empty() {
        opts.images.clone()
    } else if let Some(b) = bundle.as_ref().filter(|b| !b.image_paths().is_empty()) {
        b.image_paths().into_iter().map(ImageInput::Path).collect()
    } else {
        generated_images(8)
    };
    // Decoded and preprocessed once, shared by every gate below.
    let pixels = Pixels {
        values: pixels_of(&a, &images)?,
        n: images.len(),
    };
    if let Some(other) = &opts.against {
        let mut b = BlipModel::open(other, &opts.session)?;
        against_gates(&mut a, &mut b, &pixels, opts, &mut gates)?;
        if let Some(ds) = &opts.eval_dataset {
            quality_gate(&mut a, &mut b, ds, opts, &mut gates)?;
        }
    }
    if opts.max_batch > 0 {
        batch_gates(&mut a, &pixels, opts, &mut gates)?;
    }
    edge_gates(&mut a, &mut gates);
    if opts.long_run > 0 {
        long_run_gate(&mut a, &pixels, opts, &mut gates)?;
    }
    Ok(ValidateReport {
        package: package.display().to_string(),
        gates,
    })
}

fn is_fp32(m: &BlipModel) -> bool {
    m.package.manifest.precision == blip_package::Precision::Fp32
}

fn diff_gate(name: &str, got: &[f32], want: &[f32], limit: f64) -> Gate {
    Gate::at_most(
        format!("{name} max abs diff"),
        max_abs_diff(got, want),
        limit,
        format!("mse {:.2e}, {} values", mse(got, want), want.len()),
    )
}

fn strategy(settings: &serde_json::Value) -> Strategy {
    let beams = settings["num_beams"].as_u64().unwrap_or(1) as usize;
    if beams > 1 {
        Strategy::Beam {
            num_beams: beams,
            length_penalty: settings["length_penalty"].as_f64().unwrap_or(1.0) as f32,
            early_stopping: settings["early_stopping"].as_bool().unwrap_or(false),
        }
    } else {
        Strategy::Greedy
    }
}

/// transformers pads finished rows with pad, except beam search with pad 0, which pads with eos.
fn padded(
    seqs: Vec<Vec<i64>>,
    strategy: &Strategy,
    width: usize,
    tokens: &blip_package::Tokens,
) -> Vec<Vec<i64>> {
    let fill = if matches!(strategy, Strategy::Beam { .. }) && tokens.pad == 0 {
        tokens.eos
    } else {
        tokens.pad
    };
    let mut rows = Generated {
        sequences: seqs,
        scores: None,
    }
    .padded(fill);
    for r in rows.iter_mut() {
        r.resize(width.max(r.len()), fill);
    }
    rows
}

/// Exact-match rate and mean token agreement of generated rows against the reference rows.
fn sequence_gates(
    name: &str,
    got: &[Vec<i64>],
    want: &[Vec<i64>],
    exact_limit: f64,
    gates: &mut Vec<Gate>,
) {
    let n = want.len().max(1) as f64;
    let exact = got.iter().zip(want).filter(|(a, b)| a == b).count() as f64 / n;
    let agree = got
        .iter()
        .zip(want)
        .map(|(a, b)| token_agreement(a, b))
        .sum::<f64>()
        / n;
    gates.push(Gate::at_least(
        format!("{name} exact match"),
        exact,
        exact_limit,
        format!("token agreement {agree:.3} over {} rows", want.len()),
    ));
}

fn reference_gates(
    m: &mut BlipModel,
    b: &Bundle,
    t: &Thresholds,
    gates: &mut Vec<Gate>,
) -> Result<()> {
    let fp32 = is_fp32(m);
    let tol = if fp32 {
        t.fp32_max_abs
    } else {
        t.quantized_max_abs
    };
    let exact_limit = if fp32 { 1.0 } else { t.min_caption_exact };
    if b.head != m.head().name() {
        return Err(ValidateError::Input(format!(
            "the reference bundle is for a {} model, the package is {}",
            b.head,
            m.head()
        )));
    }
    // Preprocessing: our decode + resize of the bundle's images vs the reference's pixel values.
    let pixels = b.f32("pixel_values")?;
    let n = b.images.len();
    let per_image = pixels.len() / n.max(1);
    let std = m.images.std;
    for (i, path) in b.image_paths().iter().enumerate() {
        let name = format!("reference: preprocess {}", b.images[i]);
        match m.pixel_values(&ImageInput::Path(path.clone())) {
            Ok(px) if px.len() == per_image => {
                let plane = per_image / 3;
                let levels = px
                    .iter()
                    .zip(&pixels[i * per_image..(i + 1) * per_image])
                    .enumerate()
                    .map(|(j, (x, y))| ((x - y).abs() * std[j / plane] * 255.0) as f64)
                    .fold(0.0, f64::max);
                let png = path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("png"));
                gates.push(if png {
                    Gate::at_most(name, levels, t.max_pixel_levels, "8-bit levels vs Pillow")
                } else {
                    Gate::info(
                        name,
                        levels,
                        "8-bit levels vs Pillow (decoder differences allowed)",
                    )
                });
            }
            Ok(px) => gates.push(Gate::runs(
                name,
                Err(format!(
                    "{} values, the reference has {per_image}",
                    px.len()
                )),
            )),
            Err(e) => gates.push(Gate::runs(name, Err(e.to_string()))),
        }
    }
    // Graphs, from the reference's own pixel values (so this is about the model, not decoding).
    let vision = m.vision(&pixels, n)?;
    gates.push(diff_gate(
        "reference: vision.last_hidden_state",
        vision.hidden.as_slice().unwrap_or(&[]),
        &b.f32("vision.last_hidden_state")?,
        tol,
    ));
    match m.package.manifest.head {
        Head::Retrieval => {
            let img = vision.embeds.clone().unwrap_or_default();
            gates.push(diff_gate(
                "reference: vision.image_embeds",
                img.as_slice().unwrap_or(&[]),
                &b.f32("vision.image_embeds")?,
                tol,
            ));
            let text = m.text_embeds(&b.text_batch("text")?)?;
            gates.push(diff_gate(
                "reference: text.text_embeds",
                text.as_slice().unwrap_or(&[]),
                &b.f32("text.text_embeds")?,
                tol,
            ));
            let sim = blip_runtime::itc_similarities(img.view(), text.view(), "text")
                .map_err(blip_runtime::RuntimeError::from)?;
            gates.push(diff_gate(
                "reference: itc.similarity",
                sim.as_standard_layout().as_slice().unwrap_or(&[]),
                &b.f32("itc.similarity")?,
                tol,
            ));
            let pairs = b.text_batch("itm")?;
            let per = pairs.rows / n.max(1);
            let states = repeat_rows(vision.hidden.view(), per);
            let logits = m.itm_logits(&pairs, states.view())?;
            gates.push(diff_gate(
                "reference: itm.logits",
                logits.as_slice().unwrap_or(&[]),
                &b.f32("itm.logits")?,
                tol,
            ));
        }
        head @ (Head::Caption | Head::Vqa) => {
            // The decoder cross-attends to the image states (captions) or the question states (VQA).
            let (states, what) = if head == Head::Vqa {
                let q = b.text_batch("question")?;
                let states = m.question_states(&q, vision.hidden.view())?;
                gates.push(diff_gate(
                    "reference: question.last_hidden_state",
                    states.as_slice().unwrap_or(&[]),
                    &b.f32("question.last_hidden_state")?,
                    tol,
                ));
                (states, "answer")
            } else {
                (vision.hidden.clone(), "caption")
            };
            let ids = b.i64("decoder.input_ids")?;
            let enc_len = states.shape()[1];
            let logits = m.decoder_logits(
                states.view(),
                &vec![1; n * enc_len],
                &ids,
                &vec![1; ids.len()],
                ids.len() / n.max(1),
            )?;
            gates.push(diff_gate(
                "reference: decoder.logits (cross_kv + decoder)",
                logits.as_slice().unwrap_or(&[]),
                &b.f32("decoder.logits")?,
                tol,
            ));
            let questions = b.strings("questions");
            let questions: Vec<&str> = questions.iter().map(String::as_str).collect();
            for (key, entry) in b.generate() {
                let s = &entry["settings"];
                let strategy = strategy(s);
                let max_length = s["max_length"].as_u64().unwrap_or(20) as usize;
                let min_length = s["min_length"].as_u64().unwrap_or(0) as usize;
                let seqs: Vec<Vec<i64>> = if head == Head::Vqa {
                    let opts = VqaOptions {
                        strategy: strategy.clone(),
                        max_length,
                        min_length,
                        ..Default::default()
                    };
                    let answers = m.answer_pixels(&pixels, n, &questions, &opts)?;
                    answers.into_iter().map(|a| a.ids).collect()
                } else {
                    let opts = CaptionOptions {
                        prompt: entry["prompt"].as_str().unwrap_or("").to_string(),
                        strategy: strategy.clone(),
                        max_length,
                        min_length,
                        repetition_penalty: s["repetition_penalty"].as_f64().unwrap_or(1.0) as f32,
                        no_cache: false,
                    };
                    let caps = m.caption_pixels(&pixels, n, &opts)?;
                    caps.into_iter().map(|c| c.ids).collect()
                };
                let want = ids_rows(&entry["ids"]);
                let width = want.first().map_or(0, Vec::len);
                sequence_gates(
                    &format!("reference: {what} {key}"),
                    &padded(seqs, &strategy, width, &m.package.manifest.tokens),
                    &want,
                    exact_limit,
                    gates,
                );
            }
        }
    }
    Ok(())
}

fn ids_rows(v: &serde_json::Value) -> Vec<Vec<i64>> {
    v.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|x| x.iter().filter_map(|i| i.as_i64()).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Each row of `states` repeated `k` times, consecutively (image-major pairs).
fn repeat_rows(states: ArrayView3<'_, f32>, k: usize) -> Array3<f32> {
    let views: Vec<_> = states
        .axis_iter(Axis(0))
        .flat_map(|r| std::iter::repeat_n(r, k))
        .collect();
    ndarray::stack(Axis(0), &views).unwrap_or_else(|_| states.to_owned())
}

/// Preprocessed images laid end to end.
struct Pixels {
    values: Vec<f32>,
    n: usize,
}

impl Pixels {
    /// Image `i` (cycling when `i >= n`).
    fn image(&self, i: usize) -> &[f32] {
        let per = self.values.len() / self.n.max(1);
        let i = i % self.n.max(1);
        &self.values[i * per..(i + 1) * per]
    }
}

fn pixels_of(m: &BlipModel, images: &[ImageInput]) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for img in images {
        out.extend(m.pixel_values(img)?);
    }
    Ok(out)
}

fn rows_cosines(a: &Array2<f32>, b: &Array2<f32>) -> (f64, f64) {
    let c: Vec<f64> = a
        .axis_iter(Axis(0))
        .zip(b.axis_iter(Axis(0)))
        .map(|(x, y)| cosine(&x.to_vec(), &y.to_vec()))
        .collect();
    let min = c.iter().copied().fold(f64::INFINITY, f64::min);
    (min, c.iter().sum::<f64>() / c.len().max(1) as f64)
}

/// Indices of the `k` largest values of `row`, best first.
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
    idx.truncate(k);
    idx
}

fn against_gates(
    a: &mut BlipModel,
    b: &mut BlipModel,
    px: &Pixels,
    opts: &ValidateOptions,
    gates: &mut Vec<Gate>,
) -> Result<()> {
    let t = &opts.thresholds;
    if a.head() != b.head() {
        return Err(ValidateError::Input(format!(
            "cannot compare a {} package with a {} package",
            a.head(),
            b.head()
        )));
    }
    let both_fp32 = is_fp32(a) && is_fp32(b);
    let (n, pixels) = (px.n, &px.values);
    let (va, vb) = (a.vision(pixels, n)?, b.vision(pixels, n)?);
    let flat = |h: &Array3<f32>| h.to_shape((n, h.len() / n.max(1))).map(|v| v.to_owned());
    let (ha, hb) = (
        flat(&va.hidden).map_err(|e| ValidateError::Input(e.to_string()))?,
        flat(&vb.hidden).map_err(|e| ValidateError::Input(e.to_string()))?,
    );
    if both_fp32 {
        gates.push(diff_gate(
            "against: vision states",
            hb.as_slice().unwrap_or(&[]),
            ha.as_slice().unwrap_or(&[]),
            t.fp32_max_abs,
        ));
    }
    let (min, mean) = rows_cosines(&ha, &hb);
    gates.push(Gate::at_least(
        "against: image states cosine (min)",
        min,
        t.min_cosine,
        format!("mean {mean:.5} over {n} images"),
    ));
    let texts: Vec<&str> = opts.texts.iter().map(String::as_str).collect();
    match a.package.manifest.head {
        Head::Retrieval => {
            let (ia, ib) = (va.embeds.unwrap_or_default(), vb.embeds.unwrap_or_default());
            let (ta, tb) = (a.embed_texts(&texts)?, b.embed_texts(&texts)?);
            // Every vector of every image (BLIP-2: one per query) against its counterpart.
            // (An empty gate would pass: a shape error is an error, not no rows.)
            let vectors = |e: &ndarray::Array3<f32>| {
                let (n, v, w) = e.dim();
                ndarray::Array2::from_shape_vec((n * v, w), e.iter().copied().collect())
                    .map_err(|err| ValidateError::Input(format!("image embeddings: {err}")))
            };
            let (imin, imean) = rows_cosines(&vectors(&ia)?, &vectors(&ib)?);
            gates.push(Gate::at_least(
                "against: image embedding cosine (min)",
                imin,
                t.min_cosine,
                format!("mean {imean:.5}"),
            ));
            let (tmin, tmean) = rows_cosines(&ta, &tb);
            gates.push(Gate::at_least(
                "against: text embedding cosine (min)",
                tmin,
                t.min_cosine,
                format!("mean {tmean:.5}"),
            ));
            // Text → image ITC rankings.
            let (sa, sb) = (
                blip_runtime::itc_similarities(ia.view(), ta.view(), "text")
                    .map_err(blip_runtime::RuntimeError::from)?
                    .reversed_axes(),
                blip_runtime::itc_similarities(ib.view(), tb.view(), "text")
                    .map_err(blip_runtime::RuntimeError::from)?
                    .reversed_axes(),
            );
            let k = 5.min(n);
            let (mut top1, mut top5) = (0.0, 0.0);
            for (ra, rb) in sa.axis_iter(Axis(0)).zip(sb.axis_iter(Axis(0))) {
                let (ka, kb) = (top_k(&ra.to_vec(), k), top_k(&rb.to_vec(), k));
                top1 += f64::from(ka.first() == kb.first());
                top5 += ka.iter().filter(|x| kb.contains(x)).count() as f64 / k.max(1) as f64;
            }
            let rows = sa.nrows().max(1) as f64;
            gates.push(Gate::at_least(
                "against: ITC top-1 agreement",
                top1 / rows,
                t.min_top1,
                format!("{} texts x {n} images", sa.nrows()),
            ));
            gates.push(Gate::at_least(
                format!("against: ITC top-{k} overlap"),
                top5 / rows,
                t.min_top5,
                "mean overlap of the top-k sets",
            ));
        }
        Head::Caption => {
            let opts = CaptionOptions {
                strategy: Strategy::Greedy,
                ..Default::default()
            };
            let (ca, cb) = (
                a.caption_pixels(pixels, n, &opts)?,
                b.caption_pixels(pixels, n, &opts)?,
            );
            let want: Vec<Vec<i64>> = ca.into_iter().map(|c| c.ids).collect();
            let got: Vec<Vec<i64>> = cb.into_iter().map(|c| c.ids).collect();
            let limit = if both_fp32 { 1.0 } else { t.min_caption_exact };
            sequence_gates("against: greedy captions", &got, &want, limit, gates);
        }
        Head::Vqa => {
            // Every question on every image.
            let (mut pix, mut qs) = (Vec::new(), Vec::new());
            let per = pixels.len() / n.max(1);
            for i in 0..n {
                for q in &opts.questions {
                    pix.extend_from_slice(&pixels[i * per..(i + 1) * per]);
                    qs.push(q.as_str());
                }
            }
            let vqa = VqaOptions::default();
            let (xa, xb) = (
                a.answer_pixels(&pix, qs.len(), &qs, &vqa)?,
                b.answer_pixels(&pix, qs.len(), &qs, &vqa)?,
            );
            let agree = xa.iter().zip(&xb).filter(|(p, q)| p.text == q.text).count() as f64
                / xa.len().max(1) as f64;
            let limit = if both_fp32 {
                1.0
            } else {
                t.min_answer_agreement
            };
            gates.push(Gate::at_least(
                "against: VQA answer agreement",
                agree,
                limit,
                format!("{} image-question pairs", xa.len()),
            ));
        }
    }
    Ok(())
}

/// The package's task metric on a dataset (CIDEr-D, text→image R@1 after ITM rerank, VQA accuracy).
fn task_metric(m: &mut BlipModel, ds: &Path, opts: &ValidateOptions) -> Result<(String, f64)> {
    let data = blip_eval::Dataset::locate(ds);
    let eopts = blip_eval::EvalOptions {
        max_images: opts.eval_max_images,
        ..Default::default()
    };
    let mut quiet = |_: usize, _: usize, _: &str| {};
    let err = |e: blip_eval::EvalError| ValidateError::Input(e.to_string());
    Ok(match m.package.manifest.head {
        Head::Caption => (
            "CIDEr-D".into(),
            blip_eval::evaluate_captions(m, &data, &eopts, &mut quiet)
                .map_err(err)?
                .cider_d,
        ),
        Head::Retrieval => {
            let r = blip_eval::evaluate_retrieval(m, &data, &eopts, &mut quiet).map_err(err)?;
            let best = r.text_to_image_itm.unwrap_or(r.text_to_image_itc);
            ("text→image R@1".into(), best.r1)
        }
        _ => (
            "VQA accuracy".into(),
            blip_eval::evaluate_vqa(m, &data, &eopts, &mut quiet)
                .map_err(err)?
                .accuracy,
        ),
    })
}

/// Relative drop of the task metric from the `against` package to this one.
fn quality_gate(
    a: &mut BlipModel,
    b: &mut BlipModel,
    ds: &Path,
    opts: &ValidateOptions,
    gates: &mut Vec<Gate>,
) -> Result<()> {
    let (name, ours) = task_metric(a, ds, opts)?;
    let (_, theirs) = task_metric(b, ds, opts)?;
    let drop = if theirs > 0.0 {
        (theirs - ours) / theirs
    } else {
        0.0
    };
    gates.push(Gate::at_most(
        format!("quality: {name} relative drop"),
        drop,
        opts.thresholds.max_quality_drop,
        format!("{ours:.4} vs {theirs:.4} on {}", ds.display()),
    ));
    Ok(())
}

/// Every item run alone, then every batch size 2..=nmax from the start: `run(start, size)` gives
/// per-item results.
type BatchRuns<R> = (Vec<R>, Vec<Vec<R>>);

fn batch_runs<R>(
    nmax: usize,
    mut run: impl FnMut(usize, usize) -> Result<Vec<R>>,
) -> Result<BatchRuns<R>> {
    let mut one = Vec::with_capacity(nmax);
    for i in 0..nmax {
        one.extend(run(i, 1)?.into_iter().take(1));
    }
    let batches = (2..=nmax).map(|bs| run(0, bs)).collect::<Result<_>>()?;
    Ok((one, batches))
}

fn worst_diff((one, batches): &BatchRuns<Vec<f32>>) -> f64 {
    batches
        .iter()
        .flat_map(|b| b.iter().zip(one))
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f64::max)
}

fn same_rate<R: PartialEq>((one, batches): &BatchRuns<R>) -> (f64, usize) {
    let total: usize = batches.iter().map(Vec::len).sum();
    let same = batches
        .iter()
        .flat_map(|b| b.iter().zip(one))
        .filter(|(x, y)| x == y)
        .count();
    (same as f64 / total.max(1) as f64, total)
}

/// Batch sizes 1..=max_batch give batch 1's per-item results. Dynamic INT8 quantizes activations
/// with one scale per batch, so quantized packages are held to their own tolerances.
fn batch_gates(
    m: &mut BlipModel,
    images: &Pixels,
    opts: &ValidateOptions,
    gates: &mut Vec<Gate>,
) -> Result<()> {
    let t = &opts.thresholds;
    let (tol, exact) = if is_fp32(m) {
        (t.fp32_max_abs, 1.0)
    } else {
        (t.quantized_max_abs, t.min_caption_exact)
    };
    let nmax = opts.max_batch;
    let pixels: Vec<f32> = (0..nmax)
        .flat_map(|i| images.image(i).iter().copied())
        .collect();
    let per = pixels.len() / nmax;
    let px = |start: usize, bs: usize| &pixels[start * per..(start + bs) * per];
    let runs = batch_runs(nmax, |start, bs| {
        let v = m.vision(px(start, bs), bs)?;
        Ok(v.hidden
            .outer_iter()
            .map(|r| r.iter().copied().collect())
            .collect())
    })?;
    gates.push(Gate::at_most(
        format!("batch 1..{nmax}: vision states vs batch 1"),
        worst_diff(&runs),
        tol,
        "max abs diff over every item of every batch size",
    ));
    let texts: Vec<&str> = opts
        .texts
        .iter()
        .map(String::as_str)
        .cycle()
        .take(nmax)
        .collect();
    let questions: Vec<&str> = opts
        .questions
        .iter()
        .map(String::as_str)
        .cycle()
        .take(nmax)
        .collect();
    match m.package.manifest.head {
        Head::Retrieval => {
            let runs = batch_runs(nmax, |start, bs| {
                let e = m.embed_texts(&texts[start..start + bs])?;
                Ok(e.outer_iter().map(|r| r.to_vec()).collect())
            })?;
            gates.push(Gate::at_most(
                format!("batch 1..{nmax}: text embeddings vs batch 1 (padded)"),
                worst_diff(&runs),
                tol,
                "texts of different lengths share a padded batch",
            ));
        }
        Head::Caption => {
            let runs = batch_runs(nmax, |start, bs| {
                let caps = m.caption_pixels(px(start, bs), bs, &CaptionOptions::default())?;
                Ok(caps.into_iter().map(|c| c.ids).collect())
            })?;
            let (rate, total) = same_rate(&runs);
            gates.push(Gate::at_least(
                format!("batch 1..{nmax}: beam-3 captions equal batch 1's"),
                rate,
                exact,
                format!("{total} captions"),
            ));
        }
        Head::Vqa => {
            let vopts = VqaOptions {
                mask_question_padding: true,
                ..Default::default()
            };
            let runs = batch_runs(nmax, |start, bs| {
                let qs = &questions[start..start + bs];
                let answers = m.answer_pixels(px(start, bs), bs, qs, &vopts)?;
                Ok(answers.into_iter().map(|a| a.ids).collect())
            })?;
            let (rate, total) = same_rate(&runs);
            gates.push(Gate::at_least(
                format!("batch 1..{nmax}: answers equal batch 1's (question padding masked)"),
                rate,
                exact,
                format!("{total} answers"),
            ));
        }
    }
    Ok(())
}

/// The guide's edge inputs: each must run and give finite outputs.
fn edge_gates(m: &mut BlipModel, gates: &mut Vec<Gate>) {
    let edge = |name: &str, img: image::DynamicImage| ImageInput::Bytes {
        name: name.into(),
        data: png_bytes(&img),
    };
    let images = [
        (
            "1x1 image",
            edge("1x1.png", image::DynamicImage::new_rgb8(1, 1)),
        ),
        (
            "very wide image (4000x8)",
            edge("wide.png", image::DynamicImage::new_rgb8(4000, 8)),
        ),
        (
            "grayscale image",
            edge(
                "gray.png",
                image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(40, 30, |x, y| {
                    image::Luma([((x * 7 + y * 3) % 256) as u8])
                })),
            ),
        ),
    ];
    let head = m.package.manifest.head;
    for (what, img) in images {
        let result = (|| -> std::result::Result<String, String> {
            let px = m.pixel_values(&img).map_err(|e| e.to_string())?;
            let v = m.vision(&px, 1).map_err(|e| e.to_string())?;
            if !v.hidden.iter().all(|x| x.is_finite()) {
                return Err("non-finite vision states".into());
            }
            match head {
                Head::Caption => {
                    let c = m
                        .caption(std::slice::from_ref(&img), &CaptionOptions::default())
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .next()
                        .ok_or("no caption")?
                        .map_err(|e| e.to_string())?;
                    Ok(format!("caption {:?}", c.text))
                }
                Head::Vqa => {
                    let a = m
                        .answer(
                            std::slice::from_ref(&img),
                            &["what is it?"],
                            &VqaOptions::default(),
                        )
                        .map_err(|e| e.to_string())?;
                    Ok(format!("answer {:?}", a.first().map(|a| a.text.clone())))
                }
                _ => Ok("vision states finite".into()),
            }
        })();
        gates.push(Gate::runs(format!("edge: {what}"), result));
    }
    // Empty text: the tokenizer gives [CLS]/[ENC] + [SEP]; graphs must run on it.
    let result = match head {
        Head::Retrieval => m
            .embed_texts(&[""])
            .map(|e| format!("embedding of {} values", e.len())),
        Head::Vqa => m
            .answer(&[images_for_empty()], &[""], &VqaOptions::default())
            .map(|a| format!("answer {:?}", a.first().map(|a| a.text.clone()))),
        _ => m
            .caption(
                &[images_for_empty()],
                &CaptionOptions {
                    prompt: String::new(),
                    ..Default::default()
                },
            )
            .and_then(|c| c.into_iter().next().transpose().map(|c| c.map(|c| c.text)))
            .map(|c| format!("caption without prompt {c:?}")),
    };
    // The runtime refuses an empty text with an error that says so; anything else (a crash, an ORT
    // error) fails the gate.
    gates.push(Gate::runs(
        "edge: empty text answered or refused clearly",
        match result {
            Ok(r) => Ok(r),
            Err(e) if e.to_string().contains("empty") => Ok(format!("refused: {e}")),
            Err(e) => Err(e.to_string()),
        },
    ));
}

fn images_for_empty() -> ImageInput {
    generated_images(1).remove(0)
}

/// A long run of vision (and text) inferences: the RSS after it stays within a bound of the RSS
/// after warm-up (a leak of a few KB per call shows as MBs over thousands of calls).
fn long_run_gate(
    m: &mut BlipModel,
    images: &Pixels,
    opts: &ValidateOptions,
    gates: &mut Vec<Gate>,
) -> Result<()> {
    let pixels = images.image(0);
    let retrieval = m.package.manifest.head == Head::Retrieval;
    let warmup = (opts.long_run / 10).max(1);
    let mut start = 0u64;
    for i in 0..opts.long_run {
        if i == warmup {
            start = rss_bytes().unwrap_or(0);
        }
        let v = m.vision(pixels, 1)?;
        if retrieval {
            m.embed_texts(&[opts.texts[i % opts.texts.len().max(1)].as_str()])?;
        }
        drop(v);
    }
    let end = rss_bytes().unwrap_or(0);
    let name = format!("long run: {} inferences, RSS growth (MiB)", opts.long_run);
    if start == 0 || end == 0 {
        gates.push(Gate::info(name, 0.0, "RSS not available on this platform"));
    } else {
        let growth = (end as f64 - start as f64) / (1024.0 * 1024.0);
        gates.push(Gate::at_most(
            name,
            growth,
            opts.thresholds.max_rss_growth_mib,
            format!(
                "{:.1} MiB after warm-up, {:.1} MiB at the end",
                start as f64 / 1048576.0,
                end as f64 / 1048576.0
            ),
        ));
    }
    Ok(())
}
