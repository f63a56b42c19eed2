//! Task quality of a package on COCO-style data: captioning (BLEU-4, CIDEr-D, exact match),
//! retrieval (text→image and image→text R@1/5/10, with and without ITM rerank) and VQA (VQAv2
//! accuracy). The dataset is a folder with COCO caption annotations and/or VQAv2 question and
//! annotation files; any COCO-format set works (e.g. the Karpathy test split with a real checkpoint).

pub mod caption_metrics;
pub mod vqa_metric;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use blip_runtime::{BlipModel, CaptionOptions, ImageInput, VqaOptions};
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Runtime(#[from] blip_runtime::RuntimeError),
    #[error("{path}: {message}")]
    Dataset { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, EvalError>;

fn dataset_err(path: &Path, message: impl std::fmt::Display) -> EvalError {
    EvalError::Dataset {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    // A FIFO or device named like an annotation file would block or never end.
    let meta = std::fs::metadata(path).map_err(|e| dataset_err(path, e))?;
    if !meta.is_file() {
        return Err(dataset_err(path, "not a regular file"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| dataset_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| dataset_err(path, e))
}

#[derive(Debug, Clone, Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct CocoCaption {
    image_id: i64,
    caption: String,
}

#[derive(Debug, Clone, Deserialize)]
struct CocoCaptions {
    images: Vec<CocoImage>,
    annotations: Vec<CocoCaption>,
}

#[derive(Debug, Clone, Deserialize)]
struct VqaQuestion {
    image_id: i64,
    question: String,
    question_id: i64,
}

#[derive(Debug, Clone, Deserialize)]
struct VqaQuestions {
    questions: Vec<VqaQuestion>,
}

#[derive(Debug, Clone, Deserialize)]
struct VqaAnswer {
    answer: String,
}

#[derive(Debug, Clone, Deserialize)]
struct VqaAnnotation {
    question_id: i64,
    answers: Vec<VqaAnswer>,
    #[serde(default)]
    answer_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct VqaAnnotations {
    annotations: Vec<VqaAnnotation>,
}

/// Where a dataset's files are. `Dataset::locate` fills it from the folder layout
/// (`captions.json`, `vqa_questions.json`, `vqa_annotations.json`, `images/`).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub captions: Option<PathBuf>,
    pub questions: Option<PathBuf>,
    pub annotations: Option<PathBuf>,
    pub images: PathBuf,
}

impl Dataset {
    pub fn locate(dir: &Path) -> Dataset {
        let some = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        let images = dir.join("images");
        Dataset {
            captions: some("captions.json"),
            questions: some("vqa_questions.json"),
            annotations: some("vqa_annotations.json"),
            images: if images.is_dir() {
                images
            } else {
                dir.to_path_buf()
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub caption: CaptionOptions,
    pub vqa: VqaOptions,
    /// ITM rerank depth for retrieval (BLIP evaluates with 128 on COCO; 0 skips the rerank rows).
    pub rerank_k: usize,
    /// Evaluate the first N images only (0: all).
    pub max_images: usize,
    pub batch_size: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            caption: CaptionOptions::default(),
            vqa: VqaOptions::default(),
            rerank_k: 16,
            max_images: 0,
            batch_size: 16,
        }
    }
}

/// Progress callback: (done, total, what).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptionReport {
    pub images: usize,
    pub bleu: [f64; 4],
    pub cider_d: f64,
    /// Share of images whose caption equals one of its references (after tokenization).
    pub exact_match: f64,
    /// image file → generated caption.
    pub predictions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecallRow {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetrievalReport {
    pub images: usize,
    pub texts: usize,
    pub text_to_image_itc: RecallRow,
    pub image_to_text_itc: RecallRow,
    pub rerank_k: usize,
    pub text_to_image_itm: Option<RecallRow>,
    pub image_to_text_itm: Option<RecallRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VqaReport {
    pub questions: usize,
    pub accuracy: f64,
    pub by_answer_type: BTreeMap<String, f64>,
    /// question id → answer.
    pub predictions: BTreeMap<i64, String>,
}

fn captions_file(ds: &Dataset) -> Result<(PathBuf, CocoCaptions)> {
    if !ds.images.is_dir() {
        return Err(dataset_err(&ds.images, "dataset folder not found"));
    }
    let path = ds
        .captions
        .clone()
        .ok_or_else(|| dataset_err(&ds.images, "no COCO captions file (captions.json)"))?;
    let c: CocoCaptions = read_json(&path)?;
    if c.images.is_empty() {
        return Err(dataset_err(&path, "no images"));
    }
    if c.annotations.is_empty() {
        return Err(dataset_err(&path, "no annotations (captions)"));
    }
    let ids: std::collections::BTreeSet<i64> = c.images.iter().map(|i| i.id).collect();
    if !c.annotations.iter().any(|a| ids.contains(&a.image_id)) {
        let sample = |v: Vec<i64>| {
            v.iter()
                .take(5)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(dataset_err(
            &path,
            format!(
                "none of the {} annotations' image_id matches an image's id (images: {}…; annotations refer to {}…)",
                c.annotations.len(),
                sample(ids.iter().copied().collect()),
                sample(c.annotations.iter().map(|a| a.image_id).collect())
            ),
        ));
    }
    Ok((path, c))
}

fn limit<T>(v: &mut Vec<T>, n: usize) {
    if n > 0 {
        v.truncate(n);
    }
}

/// Generated captions of every image vs its references.
pub fn evaluate_captions(
    m: &mut BlipModel,
    ds: &Dataset,
    opts: &EvalOptions,
    progress: Progress<'_>,
) -> Result<CaptionReport> {
    let (path, mut coco) = captions_file(ds)?;
    limit(&mut coco.images, opts.max_images);
    let mut refs: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for a in &coco.annotations {
        refs.entry(a.image_id).or_default().push(a.caption.clone());
    }
    let mut predictions = BTreeMap::new();
    let (mut hyps, mut ref_tokens) = (Vec::new(), Vec::new());
    let total = coco.images.len();
    for (done, chunk) in coco.images.chunks(opts.batch_size.max(1)).enumerate() {
        let inputs: Vec<ImageInput> = chunk
            .iter()
            .map(|i| ImageInput::Path(ds.images.join(&i.file_name)))
            .collect();
        let caps = m.caption(&inputs, &opts.caption)?;
        for (img, cap) in chunk.iter().zip(caps) {
            let text = cap?.text;
            let rs = refs
                .get(&img.id)
                .ok_or_else(|| dataset_err(&path, format!("image {} has no captions", img.id)))?;
            hyps.push(caption_metrics::tokenize(&text));
            ref_tokens.push(
                rs.iter()
                    .map(|r| caption_metrics::tokenize(r))
                    .collect::<Vec<_>>(),
            );
            predictions.insert(img.file_name.clone(), text);
        }
        progress(((done + 1) * opts.batch_size).min(total), total, "captions");
    }
    let exact = hyps
        .iter()
        .zip(&ref_tokens)
        .filter(|(h, rs)| rs.contains(h))
        .count() as f64
        / total as f64;
    let (cider_d, _) = caption_metrics::cider_d(&hyps, &ref_tokens);
    Ok(CaptionReport {
        images: total,
        bleu: caption_metrics::bleu(&hyps, &ref_tokens),
        cider_d,
        exact_match: exact,
        predictions,
    })
}

/// R@1/5/10 from each query's rank of its best correct item (0 = first).
fn recall(ranks: &[usize]) -> RecallRow {
    let at = |k: usize| ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len().max(1) as f64;
    RecallRow {
        r1: at(1),
        r5: at(5),
        r10: at(10),
    }
}

/// Position of the first `true` of `correct` when `scores` is sorted descending (ties: lower index first).
fn best_rank(scores: &[f32], correct: impl Fn(usize) -> bool) -> usize {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
        .iter()
        .position(|&i| correct(i))
        .unwrap_or(scores.len())
}

/// Scores with the top `k` of each row replaced by ITM logit + ITC similarity (BLIP's evaluation),
/// everything else pushed below them.
fn rerank_rows(
    sims: &Array2<f32>,
    k: usize,
    mut itm: impl FnMut(usize, &[usize]) -> Result<Vec<f32>>,
) -> Result<Array2<f32>> {
    let mut out = Array2::from_elem(sims.dim(), f32::NEG_INFINITY);
    for (r, row) in sims.axis_iter(Axis(0)).enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        order.truncate(k);
        let logits = itm(r, &order)?;
        for (c, l) in order.iter().zip(logits) {
            out[[r, *c]] = l + row[*c];
        }
    }
    Ok(out)
}

/// Text→image and image→text recall over every caption of every image.
pub fn evaluate_retrieval(
    m: &mut BlipModel,
    ds: &Dataset,
    opts: &EvalOptions,
    progress: Progress<'_>,
) -> Result<RetrievalReport> {
    let (path, mut coco) = captions_file(ds)?;
    limit(&mut coco.images, opts.max_images);
    let index: BTreeMap<i64, usize> = coco
        .images
        .iter()
        .enumerate()
        .map(|(i, im)| (im.id, i))
        .collect();
    let texts: Vec<(usize, &str)> = coco
        .annotations
        .iter()
        .filter_map(|a| index.get(&a.image_id).map(|&i| (i, a.caption.as_str())))
        .collect();
    if texts.is_empty() {
        return Err(dataset_err(
            &path,
            format!(
                "no caption belongs to the {} images evaluated (--max-images keeps the first ones)",
                coco.images.len()
            ),
        ));
    }
    let n = coco.images.len();
    let mut img_emb = Vec::new();
    let mut hidden = Vec::new();
    for (done, chunk) in coco.images.chunks(opts.batch_size.max(1)).enumerate() {
        let inputs: Vec<ImageInput> = chunk
            .iter()
            .map(|i| ImageInput::Path(ds.images.join(&i.file_name)))
            .collect();
        let (e, h) = m.embed_images(&inputs)?;
        img_emb.push(e);
        hidden.push(h);
        progress(((done + 1) * opts.batch_size).min(n), n, "image embeddings");
    }
    let views: Vec<_> = img_emb.iter().map(|a| a.view()).collect();
    let img_emb = ndarray::concatenate(Axis(0), &views).map_err(|e| dataset_err(&ds.images, e))?;
    let views: Vec<_> = hidden.iter().map(|a| a.view()).collect();
    let hidden = ndarray::concatenate(Axis(0), &views).map_err(|e| dataset_err(&ds.images, e))?;
    let mut txt_emb = Vec::new();
    for chunk in texts.chunks(64) {
        let t: Vec<&str> = chunk.iter().map(|(_, s)| *s).collect();
        txt_emb.push(m.embed_texts(&t)?);
    }
    let views: Vec<_> = txt_emb.iter().map(|a| a.view()).collect();
    let txt_emb = ndarray::concatenate(Axis(0), &views).map_err(|e| dataset_err(&ds.images, e))?;
    let i2t = blip_runtime::itc_similarities(img_emb.view(), txt_emb.view(), "text")
        .map_err(blip_runtime::RuntimeError::from)?;
    let t2i = i2t.t().to_owned(); // texts × images
    let image_of = |t: usize| texts[t].0;
    let t2i_ranks = |s: &Array2<f32>| -> Vec<usize> {
        s.axis_iter(Axis(0))
            .enumerate()
            .map(|(t, row)| {
                best_rank(row.as_slice().unwrap_or(&row.to_vec()), |i| {
                    i == image_of(t)
                })
            })
            .collect()
    };
    let i2t_ranks = |s: &Array2<f32>| -> Vec<usize> {
        s.axis_iter(Axis(0))
            .enumerate()
            .map(|(i, row)| best_rank(&row.to_vec(), |t| image_of(t) == i))
            .collect()
    };
    let mut report = RetrievalReport {
        images: n,
        texts: texts.len(),
        text_to_image_itc: recall(&t2i_ranks(&t2i)),
        image_to_text_itc: recall(&i2t_ranks(&i2t)),
        rerank_k: opts.rerank_k,
        text_to_image_itm: None,
        image_to_text_itm: None,
    };
    if opts.rerank_k > 0 {
        let k = opts.rerank_k.min(n);
        let total = texts.len() + n;
        let mut done = 0;
        let reranked = rerank_rows(&t2i, k, |t, imgs| {
            let states = hidden.select(Axis(0), imgs);
            let pairs: Vec<&str> = vec![texts[t].1; imgs.len()];
            let logits = m.itm_pairs(states.view(), &pairs)?;
            done += 1;
            progress(done, total, "ITM rerank");
            Ok(logits.column(1).to_vec())
        })?;
        report.text_to_image_itm = Some(recall(&t2i_ranks(&reranked)));
        let k = opts.rerank_k.min(texts.len());
        let reranked = rerank_rows(&i2t, k, |i, ts| {
            let states = hidden.select(Axis(0), &vec![i; ts.len()]);
            let pairs: Vec<&str> = ts.iter().map(|&t| texts[t].1).collect();
            let logits = m.itm_pairs(states.view(), &pairs)?;
            done += 1;
            progress(done, total, "ITM rerank");
            Ok(logits.column(1).to_vec())
        })?;
        report.image_to_text_itm = Some(recall(&i2t_ranks(&reranked)));
    }
    Ok(report)
}

/// Generated answers to every question vs the human answers.
pub fn evaluate_vqa(
    m: &mut BlipModel,
    ds: &Dataset,
    opts: &EvalOptions,
    progress: Progress<'_>,
) -> Result<VqaReport> {
    let qpath = ds
        .questions
        .clone()
        .ok_or_else(|| dataset_err(&ds.images, "no VQA questions file (vqa_questions.json)"))?;
    let apath = ds
        .annotations
        .clone()
        .ok_or_else(|| dataset_err(&ds.images, "no VQA annotations file (vqa_annotations.json)"))?;
    let questions: VqaQuestions = read_json(&qpath)?;
    let annotations: VqaAnnotations = read_json(&apath)?;
    let answers: BTreeMap<i64, &VqaAnnotation> = annotations
        .annotations
        .iter()
        .map(|a| (a.question_id, a))
        .collect();
    // Image files: from the captions file when there is one, else COCO's naming by id.
    let files: BTreeMap<i64, String> = match &ds.captions {
        Some(p) => read_json::<CocoCaptions>(p)?
            .images
            .into_iter()
            .map(|i| (i.id, i.file_name))
            .collect(),
        None => BTreeMap::new(),
    };
    let mut qs = questions.questions;
    if opts.max_images > 0 {
        let keep: std::collections::BTreeSet<i64> =
            files.keys().take(opts.max_images).copied().collect();
        qs.retain(|q| keep.contains(&q.image_id));
    }
    let total = qs.len();
    if total == 0 {
        return Err(dataset_err(
            &qpath,
            if opts.max_images > 0 {
                "no question is about the images evaluated (--max-images keeps the first ones)"
            } else {
                "no questions"
            },
        ));
    }
    let mut predictions = BTreeMap::new();
    let mut per_type: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut sum = 0.0;
    for (done, chunk) in qs.chunks(opts.batch_size.max(1)).enumerate() {
        let inputs: Vec<ImageInput> = chunk
            .iter()
            .map(|q| {
                let name = files
                    .get(&q.image_id)
                    .cloned()
                    .unwrap_or_else(|| format!("{:012}.jpg", q.image_id));
                ImageInput::Path(ds.images.join(name))
            })
            .collect();
        let texts: Vec<&str> = chunk.iter().map(|q| q.question.as_str()).collect();
        let got = m.answer(&inputs, &texts, &opts.vqa)?;
        for (q, a) in chunk.iter().zip(got) {
            let ann = answers.get(&q.question_id).ok_or_else(|| {
                dataset_err(
                    &apath,
                    format!("question {} has no annotation", q.question_id),
                )
            })?;
            let humans: Vec<String> = ann.answers.iter().map(|x| x.answer.clone()).collect();
            let acc = vqa_metric::accuracy(&a.text, &humans);
            sum += acc;
            let t = per_type
                .entry(ann.answer_type.clone().unwrap_or_else(|| "all".into()))
                .or_default();
            t.0 += acc;
            t.1 += 1;
            predictions.insert(q.question_id, a.text);
        }
        progress(((done + 1) * opts.batch_size).min(total), total, "answers");
    }
    Ok(VqaReport {
        questions: total,
        accuracy: sum / total.max(1) as f64,
        by_answer_type: per_type
            .into_iter()
            .map(|(k, (s, n))| (k, s / n.max(1) as f64))
            .collect(),
        predictions,
    })
}
