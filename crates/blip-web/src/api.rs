//! The `Blip` class JS sees: loading a package from a URL (manifest, tokenizer, graphs; each
//! graph's sha256 checked; Cache Storage so a reload downloads no graph again) and BLIP's tasks,
//! all through `blip_tasks::Blip<WebGraphs>`. Options and results are JSON strings (see
//! `options`); the npm wrapper (web/index.js) parses them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use blip_package::{MANIFEST_FILE, Manifest, Package, Runtime};
use blip_preprocess::BlipTokenizer;
use blip_tasks::request;
use blip_tasks::{CandidateStates, ImageInput};
use js_sys::{Array, Uint8Array};
use ndarray::{Array2, Array3};
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;

use crate::engine::{WebGraphs, web_graphs};
use crate::options::{self, AnswerRequest, CaptionResult, RankAnswersRequest, RankImagesRequest};
use crate::shim;
use crate::verify::{self, ChecksumMismatch};

type Model = blip_tasks::Blip<WebGraphs>;

fn js_err(message: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&message.to_string()).into()
}

fn to_json(v: &impl Serialize) -> Result<String, JsValue> {
    serde_json::to_string(v).map_err(js_err)
}

/// sha256 of bytes held by JS, read into wasm memory a few MB at a time (a graph never needs to
/// exist twice in wasm's 4 GB).
fn sha256_js(bytes: &Uint8Array) -> String {
    const CHUNK: u32 = 4 << 20;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let len = bytes.length();
    let mut at = 0;
    while at < len {
        let end = (at + CHUNK).min(len);
        let part = &mut buf[..(end - at) as usize];
        bytes.subarray(at, end).copy_to(part);
        hasher.update(&*part);
        at = end;
    }
    hex::encode(hasher.finalize())
}

async fn download(
    url: &str,
    file: &str,
    total: u64,
    progress: &JsValue,
) -> Result<Uint8Array, JsValue> {
    let v = shim::download(url, file, total as f64, progress).await?;
    Ok(v.unchecked_into())
}

/// What a fetched file must hash to: a graph file's sha256 from the manifest (tokenizer and
/// external data files have no checksum of their own).
struct Expected<'a> {
    role: &'a str,
    sha256: &'a str,
}

/// A file from Cache Storage under `key` (a cached copy failing its checksum is dropped), else
/// downloaded, checked, and cached.
async fn fetch_checked(
    url: &str,
    key: &str,
    file: &str,
    total: u64,
    expected: Option<Expected<'_>>,
    progress: &JsValue,
) -> Result<Uint8Array, JsValue> {
    let cached = shim::cache_get(key, file, progress).await?;
    if !cached.is_null() && !cached.is_undefined() {
        let bytes: Uint8Array = cached.unchecked_into();
        match &expected {
            Some(e) if !sha256_js(&bytes).eq_ignore_ascii_case(e.sha256) => {
                shim::cache_delete(key).await?;
            }
            _ => return Ok(bytes),
        }
    }
    let bytes = download(url, file, total, progress).await?;
    if let Some(e) = expected {
        let actual = sha256_js(&bytes);
        if !actual.eq_ignore_ascii_case(e.sha256) {
            return Err(js_err(ChecksumMismatch {
                role: e.role.to_string(),
                url: url.to_string(),
                expected: e.sha256.to_string(),
                actual,
            }));
        }
    }
    shim::cache_put(key, &bytes).await?;
    Ok(bytes)
}

fn images_of(images: &Array) -> Result<Vec<ImageInput>, JsValue> {
    images
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let bytes = v.dyn_into::<Uint8Array>().map_err(|_| {
                js_err(format!(
                    "image {}: expected a Uint8Array of encoded image bytes",
                    i + 1
                ))
            })?;
            Ok(ImageInput::Bytes {
                name: format!("image {}", i + 1),
                data: bytes.to_vec(),
            })
        })
        .collect()
}

fn strings_of(json: &str, what: &str) -> Result<Vec<String>, JsValue> {
    serde_json::from_str(json)
        .map_err(|e| js_err(format!("{what}: expected a JSON array of strings: {e}")))
}

/// A package's graphs (as fetched and checked), each with its URL, bytes and external data.
type GraphFiles = Vec<(verify::GraphFile, String, Uint8Array, Option<Uint8Array>)>;

/// One onnxruntime-web session per graph, on `ep`.
async fn create_sessions(
    files: &GraphFiles,
    ep: &str,
) -> Result<HashMap<String, JsValue>, JsValue> {
    let mut sessions = HashMap::new();
    for (graph, url, bytes, data) in files {
        let session = shim::create_session(bytes, graph.data_file.clone(), data.clone(), ep)
            .await
            .map_err(|e| {
                js_err(format!(
                    "loading graph {} ({url}) on {ep}: {}",
                    graph.role,
                    shim::message(&e)
                ))
            })?;
        sessions.insert(graph.role.clone(), session);
    }
    Ok(sessions)
}

/// A BLIP package loaded in the browser.
#[wasm_bindgen(js_name = Blip)]
pub struct BrowserBlip {
    // Taken out for the duration of a call (calls are async and JS may start another meanwhile):
    // a second concurrent call gets a clear "busy" error instead of a RefCell panic.
    model: Rc<RefCell<Option<Model>>>,
    head: blip_package::Head,
    execution_provider: String,
    execution_provider_reason: String,
}

/// The execution provider for `manifest` (`preference`: auto | webgpu | wasm) and why.
async fn choose_execution_provider(
    manifest: &Manifest,
    preference: &str,
) -> Result<(String, String), JsValue> {
    let made_for_webgpu = Runtime::claimed(&manifest.runtimes).contains(&Runtime::Webgpu);
    let needs_f16 = manifest
        .graphs
        .values()
        .any(|g| g.precision == blip_package::Precision::Fp16);
    let chosen = shim::choose_execution_provider(preference, made_for_webgpu, needs_f16)
        .await
        .map_err(|e| js_err(shim::message(&e)))?;
    let pair = Array::from(&chosen);
    match (pair.get(0).as_string(), pair.get(1).as_string()) {
        (Some(ep), Some(reason)) => Ok((ep, reason)),
        _ => Err(js_err(
            "chooseExecutionProvider returned no [provider, reason]. This is a bug.",
        )),
    }
}

struct Lease {
    slot: Rc<RefCell<Option<Model>>>,
    model: Option<Model>,
}

impl Lease {
    fn take(slot: &Rc<RefCell<Option<Model>>>) -> Result<Lease, JsValue> {
        let model = slot
            .borrow_mut()
            .take()
            .ok_or_else(|| js_err("this Blip is busy with another call: await it first"))?;
        Ok(Lease {
            slot: slot.clone(),
            model: Some(model),
        })
    }

    fn get(&mut self) -> &mut Model {
        self.model.as_mut().unwrap_or_else(|| {
            unreachable!("a lease holds its model until dropped. This is a bug.")
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.slot.borrow_mut() = self.model.take();
    }
}

#[wasm_bindgen(js_class = Blip)]
impl BrowserBlip {
    /// Loads the package at `url` (a folder with blip.json). `on_progress` (optional) is called
    /// with `{file, loaded, total, cached}` as files arrive. `execution_provider`: auto (default:
    /// WebGPU when the package is made for it and the browser has it, else wasm), webgpu or wasm.
    pub async fn load(
        url: String,
        on_progress: JsValue,
        execution_provider: Option<String>,
    ) -> Result<BrowserBlip, JsValue> {
        let base = url.trim_end_matches('/').to_string();
        let manifest_url = verify::join(&base, MANIFEST_FILE);
        let text = download(&manifest_url, MANIFEST_FILE, 0, &on_progress).await?;
        let text = String::from_utf8(text.to_vec())
            .map_err(|e| js_err(format!("{manifest_url}: not UTF-8: {e}")))?;
        let manifest = Manifest::parse(&text, Path::new(&manifest_url)).map_err(js_err)?;
        let preference = execution_provider.as_deref().unwrap_or("auto");
        let (mut ep, mut ep_reason) = choose_execution_provider(&manifest, preference).await?;
        // The tokenizer has no checksum of its own: it is cached under the manifest's.
        let manifest_sha = verify::sha256_hex(text.as_bytes());
        let tok_url = verify::join(&base, &manifest.tokenizer);
        let tok_key = verify::cache_key(&tok_url, &manifest_sha);
        let tok_bytes = fetch_checked(
            &tok_url,
            &tok_key,
            &manifest.tokenizer,
            0,
            None,
            &on_progress,
        )
        .await?;
        let tokenizer =
            BlipTokenizer::from_bytes(&tok_bytes.to_vec(), &tok_url, manifest.tokens.clone())
                .map_err(js_err)?;
        let mut files = Vec::new();
        for graph in verify::graph_files(&manifest) {
            let url = verify::join(&base, &graph.file);
            let key = verify::cache_key(&url, &graph.sha256);
            let expected = Expected {
                role: &graph.role,
                sha256: &graph.sha256,
            };
            let bytes = fetch_checked(
                &url,
                &key,
                &graph.file,
                graph.bytes,
                Some(expected),
                &on_progress,
            )
            .await?;
            let data = match &graph.data_file {
                Some(file) => {
                    let data_url = verify::join(&base, file);
                    let data_key = verify::cache_key(&data_url, &graph.sha256);
                    Some(
                        fetch_checked(&data_url, &data_key, file, graph.bytes, None, &on_progress)
                            .await?,
                    )
                }
                None => None,
            };
            files.push((graph, url, bytes, data));
        }
        let sessions = match create_sessions(&files, &ep).await {
            // Auto takes wasm when WebGPU cannot run the package after all (e.g. the page loaded
            // onnxruntime-web's wasm-only build, which has no WebGPU backend).
            Err(e) if ep == "webgpu" && preference == "auto" => {
                ep = "wasm".into();
                ep_reason = format!("WebGPU failed, so wasm: {}", shim::message(&e));
                create_sessions(&files, &ep).await?
            }
            other => other?,
        };
        let package = Package {
            dir: base.into(),
            manifest,
        };
        let head = package.manifest.head;
        let graphs = web_graphs(&package, sessions);
        Ok(BrowserBlip {
            model: Rc::new(RefCell::new(Some(Model::new(package, tokenizer, graphs)))),
            head,
            execution_provider: ep,
            execution_provider_reason: ep_reason,
        })
    }

    /// The onnxruntime-web execution provider that runs this package: webgpu | wasm.
    #[wasm_bindgen(getter, js_name = executionProvider)]
    pub fn execution_provider(&self) -> String {
        self.execution_provider.clone()
    }

    /// Why that execution provider (e.g. "this browser offers no WebGPU adapter").
    #[wasm_bindgen(getter, js_name = executionProviderReason)]
    pub fn execution_provider_reason(&self) -> String {
        self.execution_provider_reason.clone()
    }

    /// caption | retrieval | vqa
    #[wasm_bindgen(getter)]
    pub fn head(&self) -> String {
        self.head.name().to_string()
    }

    /// The package manifest (blip.json) as JSON.
    #[wasm_bindgen(js_name = manifest)]
    pub fn manifest_json(&self) -> Result<String, JsValue> {
        let lease = Lease::take(&self.model)?;
        let model = lease.model.as_ref().map(|m| &m.package.manifest);
        to_json(&model)
    }

    /// Captions images (encoded bytes); `options` JSON: prompt, beams, sample, temperature, topK,
    /// topP, seed, maxLength, minLength, lengthPenalty, repetitionPenalty. Returns, per image,
    /// `{caption, tokens, score}` or `{error}`.
    pub async fn caption(&self, images: Array, options: String) -> Result<String, JsValue> {
        let req = options::caption_request(&options).map_err(js_err)?;
        let inputs = images_of(&images)?;
        let mut lease = Lease::take(&self.model)?;
        let model = lease.get();
        let opts = req
            .resolve(blip_tasks::ModelLimits::of(&model.package))
            .map_err(|e| js_err(options::request_error(e)))?;
        let results = model.caption(&inputs, &opts).await.map_err(js_err)?;
        let out: Vec<CaptionResult> = results.into_iter().map(CaptionResult::from).collect();
        to_json(&out)
    }

    /// ITC embeddings of images (retrieval packages): `[[f32; E]; n]`.
    #[wasm_bindgen(js_name = embedImages)]
    pub async fn embed_images(&self, images: Array) -> Result<String, JsValue> {
        let inputs = images_of(&images)?;
        let mut lease = Lease::take(&self.model)?;
        let (embeds, _) = lease.get().embed_images(&inputs).await.map_err(js_err)?;
        let embeds = blip_tasks::one_vector_per_image(embeds).map_err(js_err)?;
        to_json(&rows(&embeds))
    }

    /// ITC embeddings of texts (JSON array of strings).
    #[wasm_bindgen(js_name = embedTexts)]
    pub async fn embed_texts(&self, texts: String) -> Result<String, JsValue> {
        let texts = strings_of(&texts, "texts")?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut lease = Lease::take(&self.model)?;
        let embeds = lease.get().embed_texts(&refs).await.map_err(js_err)?;
        to_json(&rows(&embeds))
    }

    /// Image-text matching of one image with each text: `{text, matchProbability, itmLogits, itcSimilarity}`.
    pub async fn itm(&self, image: Uint8Array, texts: String) -> Result<String, JsValue> {
        let texts = strings_of(&texts, "texts")?;
        request::check_texts("texts", &texts, request::limits::MAX_TEXTS)
            .map_err(|e| js_err(options::request_error(e)))?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let input = ImageInput::Bytes {
            name: "image".into(),
            data: image.to_vec(),
        };
        let mut lease = Lease::take(&self.model)?;
        let model = lease.get();
        let pixels = model.pixel_values(&input).map_err(js_err)?;
        let scores = model.itm(&pixels, &refs).await.map_err(js_err)?;
        let out: Vec<options::ItmResult> = refs
            .iter()
            .zip(scores)
            .map(|(t, s)| options::ItmResult {
                text: t.to_string(),
                match_probability: s.match_probability,
                itm_logits: s.logits,
                itc_similarity: s.itc,
            })
            .collect();
        to_json(&out)
    }

    /// Ranks `images` for `text` as `blip-onnx search`: ITC, then ITM rerank of the top
    /// `rerank` (options JSON: rerank, embeddings from `embedImages` to skip re-embedding).
    #[wasm_bindgen(js_name = rankImages)]
    pub async fn rank_images(
        &self,
        text: String,
        images: Array,
        options: String,
    ) -> Result<String, JsValue> {
        let req = options::parse::<RankImagesRequest>(&options).map_err(js_err)?;
        let request::SearchOptions { k, rerank } = request::SearchRequest {
            text: text.clone(),
            k: req.k,
            rerank: req.rerank,
        }
        .resolve()
        .map_err(|e| js_err(options::request_error(e)))?;
        let inputs = images_of(&images)?;
        let mut lease = Lease::take(&self.model)?;
        let model = lease.get();
        let embeds = match req.embeddings {
            Some(rows) => {
                let dim = rows.first().map_or(0, Vec::len);
                if rows.len() != inputs.len() || rows.iter().any(|r| r.len() != dim) {
                    return Err(js_err(format!(
                        "embeddings: {} rows for {} images (each row as wide as the first)",
                        rows.len(),
                        inputs.len()
                    )));
                }
                // One vector per image, as `embedImages` returns them.
                Array3::from_shape_vec((rows.len(), 1, dim), rows.concat()).map_err(js_err)?
            }
            None => model.embed_images(&inputs).await.map_err(js_err)?.0,
        };
        let hits = model
            .rank_images(
                &text,
                embeds.view(),
                rerank,
                CandidateStates::Encode(&inputs),
            )
            .await
            .map_err(js_err)?;
        to_json(&options::hits(&hits[..k.min(hits.len())]))
    }

    /// Generated answers to questions (JSON array) about one image: `{question, answer, tokens}`.
    pub async fn answer(
        &self,
        image: Uint8Array,
        questions: String,
        options: String,
    ) -> Result<String, JsValue> {
        let opts = options::parse::<AnswerRequest>(&options)
            .and_then(|r| r.options())
            .map_err(js_err)?;
        let questions = strings_of(&questions, "questions")?;
        // The request layer's rules on the questions; the decoding options above are this door's
        // own extras over the same defaults.
        request::VqaRequest {
            questions: questions.clone(),
            answers: None,
            k: None,
            mask_question_padding: Some(opts.mask_question_padding),
        }
        .resolve()
        .map_err(|e| js_err(options::request_error(e)))?;
        let qs: Vec<&str> = questions.iter().map(String::as_str).collect();
        let input = ImageInput::Bytes {
            name: "image".into(),
            data: image.to_vec(),
        };
        let images = vec![input; qs.len()];
        let mut lease = Lease::take(&self.model)?;
        let answers = lease
            .get()
            .answer(&images, &qs, &opts)
            .await
            .map_err(js_err)?;
        let out: Vec<options::AnswerResult> = qs
            .iter()
            .zip(answers)
            .map(|(q, a)| options::AnswerResult::new(q, a))
            .collect();
        to_json(&out)
    }

    /// LAVIS rank mode: each question's best answer from `answers` (JSON array), with the scored candidates.
    #[wasm_bindgen(js_name = rankAnswers)]
    pub async fn rank_answers(
        &self,
        image: Uint8Array,
        questions: String,
        answers: String,
        options: String,
    ) -> Result<String, JsValue> {
        let req = options::parse::<RankAnswersRequest>(&options).map_err(js_err)?;
        let questions = strings_of(&questions, "questions")?;
        let answers = strings_of(&answers, "answers")?;
        let k = match (request::VqaRequest {
            questions: questions.clone(),
            answers: Some(answers.clone()),
            k: req.k,
            mask_question_padding: None,
        })
        .resolve()
        .map_err(|e| js_err(options::request_error(e)))?
        {
            request::VqaMode::Rank { k, .. } => k,
            request::VqaMode::Generate(_) => unreachable!("a request with answers ranks them"),
        };
        let qs: Vec<&str> = questions.iter().map(String::as_str).collect();
        let list: Vec<&str> = answers.iter().map(String::as_str).collect();
        let input = ImageInput::Bytes {
            name: "image".into(),
            data: image.to_vec(),
        };
        let images = vec![input; qs.len()];
        let mut lease = Lease::take(&self.model)?;
        let ranked = lease
            .get()
            .rank_answers(&images, &qs, &list, k, req.max_question_tokens)
            .await
            .map_err(js_err)?;
        let out: Vec<options::RankedAnswersResult> = qs
            .iter()
            .zip(&ranked)
            .map(|(q, r)| options::RankedAnswersResult::new(q, &list, r))
            .collect();
        to_json(&out)
    }
}

fn rows(a: &Array2<f32>) -> Vec<Vec<f32>> {
    a.rows().into_iter().map(|r| r.to_vec()).collect()
}
