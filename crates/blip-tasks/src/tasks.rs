//! BLIP's tasks over a loaded package, with the reference procedures: captioning (prompted, any
//! decoding strategy), ITC embeddings, ITM, retrieval (ITC top-k → ITM rerank, score = ITM logit +
//! ITC similarity, as BLIP's evaluation), and VQA (generation, or LAVIS's rank mode over an answer list).

use blip_package::{Head, Package};
use blip_preprocess::{BlipTokenizer, FirstToken, ImagePreprocessor};
use ndarray::{Array2, Array3, ArrayView3, Axis, s};

use crate::generate::{Generated, Generation, GenerationConfig, Strategy};
use crate::graphs::{DecoderFeed, Graphs, LogitPositions, VisionOutput};
use crate::input::{ImageInput, unique_inputs};
use crate::itc::{itc_similarities, itc_similarity};
use crate::{Result, TaskError};

/// Captioning settings. Defaults are BLIP's COCO evaluation: prompt "a picture of ", beam 3,
/// 20 tokens at most, 5 at least (lengths count the prompt, as in BLIP / HF).
#[derive(Debug, Clone)]
pub struct CaptionOptions {
    pub prompt: String,
    pub strategy: Strategy,
    pub max_length: usize,
    pub min_length: usize,
    pub repetition_penalty: f32,
    /// Decode without the KV cache (re-feeding the sequence): for checking the cached path only.
    pub no_cache: bool,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        CaptionOptions {
            prompt: "a picture of ".into(),
            strategy: Strategy::Beam {
                num_beams: 3,
                length_penalty: 1.0,
                early_stopping: false,
            },
            max_length: 20,
            min_length: 5,
            repetition_penalty: 1.0,
            no_cache: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    pub text: String,
    /// Generated ids, prompt included, ending with [SEP] when the caption finished.
    pub ids: Vec<i64>,
    pub score: Option<f32>,
}

/// VQA settings; defaults are BLIP's: beam 3, max 10, min 1, questions truncated to 35 tokens.
#[derive(Debug, Clone)]
pub struct VqaOptions {
    pub strategy: Strategy,
    pub max_length: usize,
    pub min_length: usize,
    pub max_question_tokens: usize,
    /// Mask the question padding in the decoder's cross-attention. BLIP and transformers attend to
    /// every position (padding included), so a batched answer can depend on the other questions'
    /// lengths; `false` keeps that reference behaviour.
    pub mask_question_padding: bool,
}

impl Default for VqaOptions {
    fn default() -> Self {
        VqaOptions {
            strategy: Strategy::Beam {
                num_beams: 3,
                length_penalty: 1.0,
                early_stopping: false,
            },
            max_length: 10,
            min_length: 1,
            max_question_tokens: 35,
            mask_question_padding: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub ids: Vec<i64>,
}

/// Rank mode result for one question.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedAnswers {
    /// Index into the answer list of the best answer.
    pub best: usize,
    /// (answer index, score) of the first-token top-k candidates, in first-token order.
    pub candidates: Vec<(usize, f32)>,
}

/// The caption text of a generated sequence `ids` that began with a prompt of `prompt_len`
/// tokens: BLIP strips the prompt from the decoded text (`caption[len(prompt):]`). Also the text
/// of a partial sequence (the streamed pieces of a caption).
pub fn caption_text(
    tokenizer: &blip_preprocess::BlipTokenizer,
    ids: &[i64],
    prompt_len: usize,
    prompt: &str,
) -> Result<String> {
    let full = tokenizer.decode(ids)?;
    let p = prompt.trim();
    Ok(match full.strip_prefix(p) {
        Some(rest) if !p.is_empty() => rest.trim().to_string(),
        _ if p.is_empty() => full.trim().to_string(),
        _ => tokenizer
            .decode(&ids[prompt_len.min(ids.len())..])?
            .trim()
            .to_string(),
    })
}

/// One image-text pair scored by [`Blip::itm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItmScore {
    /// ITM logits `[no match, match]`.
    pub logits: [f32; 2],
    /// Softmax of the logits: the probability that the text matches the image.
    pub match_probability: f32,
    /// ITC similarity (dot product of the L2-normalised embeddings).
    pub itc: f32,
}

/// Probability that a text matches an image: softmax of the ITM logits `[no match, match]`.
pub fn match_probability(logits: [f32; 2]) -> f32 {
    let m = logits[0].max(logits[1]);
    let (a, b) = ((logits[0] - m).exp(), (logits[1] - m).exp());
    b / (a + b)
}

/// One retrieval hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub itc: f32,
    /// Raw ITM logit of "match" (None when not reranked).
    pub itm: Option<f32>,
    /// itm + itc when reranked, else itc.
    pub score: f32,
}

/// Where a retrieval rerank gets the candidates' image states.
pub enum CandidateStates<'a> {
    /// Encode the candidates from their images (`images[i]` is indexed image `i`).
    Encode(&'a [ImageInput]),
    /// States stored with the index: called with the candidates' indices, returns their states
    /// (`[k, tokens, D]`, in that order).
    Stored(&'a mut dyn FnMut(&[usize]) -> Result<Array3<f32>>),
    /// Called with the candidates' indices, returns their preprocessed pixels (`k × 3 × S × S`),
    /// which the vision encoder then encodes (images the caller holds decoded).
    Pixels(&'a mut dyn FnMut(&[usize]) -> Result<Vec<f32>>),
}

/// One package's tokenizer, image transform and graphs on an engine, with BLIP's tasks.
pub struct Blip<G: Graphs> {
    pub package: Package,
    pub tokenizer: BlipTokenizer,
    pub images: ImagePreprocessor,
    pub graphs: G,
    images_encoded: u64,
}

impl<G: Graphs> Blip<G> {
    pub fn new(package: Package, tokenizer: BlipTokenizer, graphs: G) -> Self {
        let images = ImagePreprocessor::new(&package.manifest.preprocess);
        Blip {
            package,
            tokenizer,
            images,
            graphs,
            images_encoded: 0,
        }
    }

    pub fn head(&self) -> Head {
        self.package.manifest.head
    }

    /// How many images the vision encoder has encoded so far (a repeated image in one call counts once).
    pub fn images_encoded(&self) -> u64 {
        self.images_encoded
    }

    /// Decodes and preprocesses one image to `3 × S × S` floats.
    pub fn pixel_values(&self, input: &ImageInput) -> Result<Vec<f32>> {
        Ok(input.pixel_values(&self.images)?)
    }

    /// Runs the vision encoder on `n` preprocessed images laid end to end.
    pub async fn vision(&mut self, pixels: &[f32], n: usize) -> Result<VisionOutput> {
        self.images_encoded += n as u64;
        self.graphs.vision(pixels, n).await
    }

    /// A generated length must fit the decoder's position embeddings.
    fn check_max_length(&self, field: &str, max_length: usize) -> Result<()> {
        let positions = self.package.manifest.model.max_position_embeddings;
        if max_length > positions {
            return Err(TaskError::Input(format!(
                "{field} {max_length} is more than the model's {positions} positions"
            )));
        }
        Ok(())
    }

    fn generation_config(
        &self,
        strategy: &Strategy,
        max_length: usize,
        min_length: usize,
        repetition_penalty: f32,
    ) -> GenerationConfig {
        let t = &self.package.manifest.tokens;
        GenerationConfig {
            strategy: strategy.clone(),
            max_length,
            min_length,
            repetition_penalty,
            eos: t.eos,
            pad: t.pad,
        }
    }

    /// Drives `generation` to its end over the decoder, cross-attending to `states`.
    async fn run_generation(
        &mut self,
        mut generation: Generation,
        states: ArrayView3<'_, f32>,
        enc_mask: Option<&[i64]>,
        no_cache: bool,
    ) -> Result<Generated> {
        let n = states.shape()[0];
        let cross = self
            .graphs
            .cross_kv(states, enc_mask, generation.rows() / n.max(1))
            .await?;
        if no_cache {
            return self.refeed(generation, &cross).await;
        }
        let mut cache = self.graphs.new_cache(generation.rows()).await?;
        while let Some(input) = generation.next_input() {
            let feed = DecoderFeed {
                tokens: &input.tokens,
                t: input.t,
                attention_mask: None,
                reorder: input.reorder.as_deref(),
                logits: LogitPositions::Last,
            };
            let logits = self.graphs.decode(&cross, &mut cache, feed).await?;
            generation.push_logits(&logits)?;
        }
        Ok(generation.finish())
    }

    /// Reference decoding without a cache: the whole sequence is fed at every step (to check the
    /// cached path against).
    async fn refeed(&mut self, mut generation: Generation, cross: &G::Cross) -> Result<Generated> {
        let mut history: Vec<Vec<i64>> = vec![Vec::new(); generation.rows()];
        while let Some(input) = generation.next_input() {
            if let Some(src) = &input.reorder {
                history = src.iter().map(|&r| history[r].clone()).collect();
            }
            for (row, chunk) in history.iter_mut().zip(input.tokens.chunks(input.t.max(1))) {
                row.extend_from_slice(chunk);
            }
            let len = history.first().map_or(0, Vec::len);
            let flat: Vec<i64> = history.iter().flatten().copied().collect();
            let mut cache = self.graphs.new_cache(history.len()).await?;
            let feed = DecoderFeed {
                tokens: &flat,
                t: len,
                attention_mask: None,
                reorder: None,
                logits: LogitPositions::Last,
            };
            let logits = self.graphs.decode(cross, &mut cache, feed).await?;
            generation.push_logits(&logits)?;
        }
        Ok(generation.finish())
    }

    /// The decoding of `n` captions with `opts` (not started) and its prompt ids; checks the
    /// options before any graph runs.
    pub fn caption_generation(
        &self,
        n: usize,
        opts: &CaptionOptions,
    ) -> Result<(Generation, Vec<i64>)> {
        self.check_max_length("max_length", opts.max_length)?;
        let prompt = self.tokenizer.prompt_ids(&opts.prompt)?;
        crate::request::check_prompt_tokens(prompt.len(), opts.max_length)
            .map_err(|e| TaskError::Input(e.to_string()))?;
        let cfg = self.generation_config(
            &opts.strategy,
            opts.max_length,
            opts.min_length,
            opts.repetition_penalty,
        );
        let vocab = self.package.manifest.model.vocab_size;
        Ok((Generation::new(&cfg, n, &prompt, vocab), prompt))
    }

    /// Captions `n` preprocessed images (`pixels`: `n × 3 × S × S`).
    pub async fn caption_pixels(
        &mut self,
        pixels: &[f32],
        n: usize,
        opts: &CaptionOptions,
    ) -> Result<Vec<Caption>> {
        let (generation, prompt) = self.caption_generation(n, opts)?;
        let vision = self.vision(pixels, n).await?;
        let generated = self
            .run_generation(generation, vision.hidden.view(), None, opts.no_cache)
            .await?;
        self.captions_of(generated, &prompt, opts)
    }

    /// Caption texts of generated sequences (the prompt stripped, as BLIP does).
    pub fn captions_of(
        &self,
        generated: Generated,
        prompt: &[i64],
        opts: &CaptionOptions,
    ) -> Result<Vec<Caption>> {
        let mut out = Vec::with_capacity(generated.sequences.len());
        for (i, ids) in generated.sequences.iter().enumerate() {
            out.push(Caption {
                text: caption_text(&self.tokenizer, ids, prompt.len(), &opts.prompt)?,
                ids: ids.clone(),
                score: generated.scores.as_ref().map(|s| s[i]),
            });
        }
        Ok(out)
    }

    /// Loads every image; returns the pixels of those that decoded and, per input, its slot or error.
    fn load_images(&self, images: &[ImageInput]) -> (Vec<f32>, Vec<Result<usize>>) {
        let mut pixels = Vec::new();
        let mut slots = Vec::with_capacity(images.len());
        let mut ok = 0;
        for img in images {
            match self.pixel_values(img) {
                Ok(p) => {
                    pixels.extend_from_slice(&p);
                    slots.push(Ok(ok));
                    ok += 1;
                }
                Err(e) => slots.push(Err(e)),
            }
        }
        (pixels, slots)
    }

    /// Captions images; an image that cannot be read gets its own error, the others their captions.
    pub async fn caption(
        &mut self,
        images: &[ImageInput],
        opts: &CaptionOptions,
    ) -> Result<Vec<Result<Caption>>> {
        let (unique, map) = unique_inputs(images);
        let (pixels, slots) = self.load_images(&unique);
        let n = slots.iter().filter(|s| s.is_ok()).count();
        let captions = if n > 0 {
            self.caption_pixels(&pixels, n, opts).await?
        } else {
            Vec::new()
        };
        // A repeated image gets a copy of its distinct copy's result.
        let per_unique: Vec<std::result::Result<Caption, String>> = slots
            .into_iter()
            .map(|s| match s {
                Ok(i) => Ok(captions[i].clone()),
                Err(e) => Err(e.to_string()),
            })
            .collect();
        Ok(map
            .iter()
            .map(|&u| per_unique[u].clone().map_err(TaskError::Input))
            .collect())
    }

    /// ITC embeddings (`[n, V, E]`, see [`VisionOutput::embeds`]) and hidden states of images
    /// (retrieval packages); repeated images are encoded once.
    pub async fn embed_images(
        &mut self,
        images: &[ImageInput],
    ) -> Result<(Array3<f32>, Array3<f32>)> {
        let (unique, map) = unique_inputs(images);
        let pixels = self.pixels_of(&unique)?;
        let v = self.vision(&pixels, unique.len()).await?;
        let embeds = v.embeds.ok_or_else(|| {
            TaskError::Input(format!(
                "package head {} has no image embeddings",
                self.head()
            ))
        })?;
        Ok((embeds.select(Axis(0), &map), v.hidden.select(Axis(0), &map)))
    }

    /// ITC embeddings of texts (truncated to `max_text_tokens`).
    pub async fn embed_texts(&mut self, texts: &[&str]) -> Result<Array2<f32>> {
        let max = self.package.manifest.tokens.max_text_tokens;
        let batch = self
            .tokenizer
            .encode_batch(texts, FirstToken::Cls, Some(max))?;
        self.graphs.text_embeds(&batch).await
    }

    /// ITM logits `[n, 2]` of (image hidden state i, text i) pairs.
    pub async fn itm_pairs(
        &mut self,
        image_hidden: ArrayView3<'_, f32>,
        texts: &[&str],
    ) -> Result<Array2<f32>> {
        let max = self.package.manifest.tokens.max_text_tokens;
        let batch = self
            .tokenizer
            .encode_batch(texts, FirstToken::Enc, Some(max))?;
        self.graphs.itm_logits(&batch, image_hidden).await
    }

    /// Image-text matching of one preprocessed image (`3 × S × S`) with each text: the ITM logits,
    /// the match probability and the ITC similarity per text. The image is encoded once.
    pub async fn itm(&mut self, pixels: &[f32], texts: &[&str]) -> Result<Vec<ItmScore>> {
        let vision = self.vision(pixels, 1).await?;
        let embeds = vision.embeds.ok_or_else(|| {
            TaskError::Input(format!(
                "package head {} has no image embeddings (ITM needs a retrieval package)",
                self.package.manifest.head
            ))
        })?;
        let rows = vec![0; texts.len()];
        let logits = self
            .itm_pairs(vision.hidden.select(Axis(0), &rows).view(), texts)
            .await?;
        let text = self.embed_texts(texts).await?;
        Ok((0..texts.len())
            .map(|i| {
                let logits = [logits[[i, 0]], logits[[i, 1]]];
                ItmScore {
                    logits,
                    match_probability: match_probability(logits),
                    itc: itc_similarity(embeds.index_axis(Axis(0), 0), text.row(i)),
                }
            })
            .collect())
    }

    /// Ranks images for one text: ITC top-`k` by similarity ([`itc_similarity`] of each image's
    /// vectors, `image_embeds [n, V, E]`), then ITM rerank of those `k` (score = ITM "match"
    /// logit + ITC similarity, as BLIP's evaluation). `k = 0` skips the rerank.
    pub async fn rank_images(
        &mut self,
        text: &str,
        image_embeds: ArrayView3<'_, f32>,
        k: usize,
        candidates: CandidateStates<'_>,
    ) -> Result<Vec<Hit>> {
        let t = self.embed_texts(&[text]).await?;
        let sims = itc_similarities(image_embeds, t.view(), "this package's text")?
            .column(0)
            .to_owned();
        let mut order: Vec<usize> = (0..sims.len()).collect();
        order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
        let mut hits: Vec<Hit> = order
            .iter()
            .map(|&i| Hit {
                index: i,
                itc: sims[i],
                itm: None,
                score: sims[i],
            })
            .collect();
        let k = k.min(hits.len());
        if k == 0 {
            return Ok(hits);
        }
        let cand: Vec<usize> = order[..k].to_vec();
        let hidden = match candidates {
            CandidateStates::Stored(states_of) => states_of(&cand)?,
            CandidateStates::Pixels(pixels_of) => {
                let pixels = pixels_of(&cand)?;
                self.vision(&pixels, k).await?.hidden
            }
            CandidateStates::Encode(images) => {
                let inputs = cand
                    .iter()
                    .map(|&i| {
                        images.get(i).cloned().ok_or_else(|| {
                            TaskError::Input(format!(
                                "candidate {i} has no image ({} images given)",
                                images.len()
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.embed_images(&inputs).await?.1
            }
        };
        if hidden.shape()[0] != k {
            return Err(TaskError::Input(format!(
                "{} candidate states for {k} candidates",
                hidden.shape()[0]
            )));
        }
        let texts = vec![text; k];
        let logits = self.itm_pairs(hidden.view(), &texts).await?;
        for (j, hit) in hits.iter_mut().take(k).enumerate() {
            let itm = logits[[j, 1]];
            hit.itm = Some(itm);
            hit.score = itm + hit.itc;
        }
        hits[..k].sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        Ok(hits)
    }

    fn pixels_of(&self, images: &[ImageInput]) -> Result<Vec<f32>> {
        let mut pixels = Vec::new();
        for img in images {
            pixels.extend(self.pixel_values(img)?);
        }
        Ok(pixels)
    }

    /// Question states for (image `rows[i]`, question i) pairs; `pixels` holds `n` distinct images.
    async fn questions(
        &mut self,
        pixels: &[f32],
        n: usize,
        rows: &[usize],
        questions: &[&str],
        max_tokens: usize,
    ) -> Result<(Array3<f32>, Vec<i64>)> {
        if rows.len() != questions.len() || rows.iter().any(|&r| r >= n) {
            return Err(TaskError::Input(format!(
                "{} images but {} questions",
                rows.len(),
                questions.len()
            )));
        }
        let vision = self.vision(pixels, n).await?;
        let hidden = vision.hidden.select(Axis(0), rows);
        let batch = self
            .tokenizer
            .encode_batch(questions, FirstToken::Enc, Some(max_tokens))?;
        let states = self.graphs.question_states(&batch, hidden.view()).await?;
        Ok((states, batch.mask))
    }

    /// Generated answers for (image i, question i) pairs.
    pub async fn answer(
        &mut self,
        images: &[ImageInput],
        questions: &[&str],
        opts: &VqaOptions,
    ) -> Result<Vec<Answer>> {
        let (unique, map) = unique_inputs(images);
        let pixels = self.pixels_of(&unique)?;
        self.answer_rows(&pixels, unique.len(), &map, questions, opts)
            .await
    }

    /// Generated answers from preprocessed pixels (`n × 3 × S × S`).
    pub async fn answer_pixels(
        &mut self,
        pixels: &[f32],
        n: usize,
        questions: &[&str],
        opts: &VqaOptions,
    ) -> Result<Vec<Answer>> {
        let rows: Vec<usize> = (0..n).collect();
        self.answer_rows(pixels, n, &rows, questions, opts).await
    }

    /// Generated answers for (image `image_of[i]`, question i) pairs from `n` preprocessed images:
    /// each image is encoded once, however many questions ask about it.
    pub async fn answer_pixels_of(
        &mut self,
        pixels: &[f32],
        n: usize,
        image_of: &[usize],
        questions: &[&str],
        opts: &VqaOptions,
    ) -> Result<Vec<Answer>> {
        self.answer_rows(pixels, n, image_of, questions, opts).await
    }

    /// The answer decoding of (image i, question i) pairs from `n` preprocessed images (not
    /// started), with the question states it cross-attends to and their mask (`None`: attend to
    /// every position, as BLIP and HF do).
    pub async fn answer_generation(
        &mut self,
        pixels: &[f32],
        n: usize,
        questions: &[&str],
        opts: &VqaOptions,
    ) -> Result<(Generation, Array3<f32>, Option<Vec<i64>>)> {
        let rows: Vec<usize> = (0..n).collect();
        self.answer_start(pixels, n, &rows, questions, opts).await
    }

    async fn answer_start(
        &mut self,
        pixels: &[f32],
        n: usize,
        rows: &[usize],
        questions: &[&str],
        opts: &VqaOptions,
    ) -> Result<(Generation, Array3<f32>, Option<Vec<i64>>)> {
        self.check_max_length("max_length", opts.max_length)?;
        let (states, q_mask) = self
            .questions(pixels, n, rows, questions, opts.max_question_tokens)
            .await?;
        let cfg = self.generation_config(&opts.strategy, opts.max_length, opts.min_length, 1.0);
        let bos = [self.package.manifest.tokens.bos];
        let vocab = self.package.manifest.model.vocab_size;
        let generation = Generation::new(&cfg, states.shape()[0], &bos, vocab);
        Ok((
            generation,
            states,
            opts.mask_question_padding.then_some(q_mask),
        ))
    }

    async fn answer_rows(
        &mut self,
        pixels: &[f32],
        n: usize,
        rows: &[usize],
        questions: &[&str],
        opts: &VqaOptions,
    ) -> Result<Vec<Answer>> {
        let (generation, states, mask) =
            self.answer_start(pixels, n, rows, questions, opts).await?;
        let generated = self
            .run_generation(generation, states.view(), mask.as_deref(), false)
            .await?;
        self.answers_of(generated)
    }

    /// Answer texts of generated sequences.
    pub fn answers_of(&self, generated: Generated) -> Result<Vec<Answer>> {
        generated
            .sequences
            .into_iter()
            .map(|ids| {
                Ok(Answer {
                    text: self.tokenizer.decode(&ids)?.trim().to_string(),
                    ids,
                })
            })
            .collect()
    }

    /// LAVIS rank mode: the `k` answers whose first token is likeliest are scored by their full
    /// likelihood (BLIP's loss: cross-entropy with label smoothing 0.1, summed over answer tokens).
    pub async fn rank_answers(
        &mut self,
        images: &[ImageInput],
        questions: &[&str],
        answers: &[&str],
        k: usize,
        max_question_tokens: usize,
    ) -> Result<Vec<RankedAnswers>> {
        let (unique, map) = unique_inputs(images);
        let pixels = self.pixels_of(&unique)?;
        self.rank_rows(
            &pixels,
            unique.len(),
            &map,
            questions,
            answers,
            k,
            max_question_tokens,
        )
        .await
    }

    /// Rank mode from preprocessed pixels.
    pub async fn rank_answers_pixels(
        &mut self,
        pixels: &[f32],
        n: usize,
        questions: &[&str],
        answers: &[&str],
        k: usize,
        max_question_tokens: usize,
    ) -> Result<Vec<RankedAnswers>> {
        let rows: Vec<usize> = (0..n).collect();
        self.rank_rows(pixels, n, &rows, questions, answers, k, max_question_tokens)
            .await
    }

    /// Rank mode for (image `image_of[i]`, question i) pairs from `n` preprocessed images: each
    /// image is encoded once, however many questions ask about it.
    #[allow(clippy::too_many_arguments)]
    pub async fn rank_answers_pixels_of(
        &mut self,
        pixels: &[f32],
        n: usize,
        image_of: &[usize],
        questions: &[&str],
        answers: &[&str],
        k: usize,
        max_question_tokens: usize,
    ) -> Result<Vec<RankedAnswers>> {
        self.rank_rows(
            pixels,
            n,
            image_of,
            questions,
            answers,
            k,
            max_question_tokens,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn rank_rows(
        &mut self,
        pixels: &[f32],
        n: usize,
        rows: &[usize],
        questions: &[&str],
        answers: &[&str],
        k: usize,
        max_question_tokens: usize,
    ) -> Result<Vec<RankedAnswers>> {
        if answers.is_empty() {
            return Err(TaskError::Input("the answer list is empty".into()));
        }
        let (states, q_mask) = self
            .questions(pixels, n, rows, questions, max_question_tokens)
            .await?;
        let nq = states.shape()[0];
        let k = k.clamp(1, answers.len());
        let ans = self
            .tokenizer
            .encode_batch(answers, FirstToken::Dec, None)?;
        let vocab = self.package.manifest.model.vocab_size;
        // First step: logits after [DEC] for every question.
        let bos = vec![self.package.manifest.tokens.bos; nq];
        let first = self
            .decoder_logits(states.view(), &q_mask, &bos, &vec![1; nq], 1)
            .await?;
        let mut cand_rows = Vec::new();
        let mut per_q = Vec::with_capacity(nq);
        for q in 0..nq {
            let row = first.slice(s![q, 0, ..]);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let denom: f32 = row.iter().map(|x| (x - max).exp()).sum();
            let probs: Vec<f32> = (0..answers.len())
                .map(|a| (row[ans.row_ids(a)[1] as usize] - max).exp() / denom)
                .collect();
            let mut order: Vec<usize> = (0..answers.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            order.truncate(k);
            cand_rows.extend(order.iter().copied());
            per_q.push(order);
        }
        // Full answers, k per question, against the question repeated k times.
        let ids: Vec<i64> = cand_rows
            .iter()
            .flat_map(|&a| ans.row_ids(a).iter().copied())
            .collect();
        let mask: Vec<i64> = cand_rows
            .iter()
            .flat_map(|&a| ans.mask[a * ans.cols..(a + 1) * ans.cols].iter().copied())
            .collect();
        let logits = self
            .shared_decoder_logits(states.view(), &q_mask, k, &ids, &mask, ans.cols)
            .await?;
        let mut out = Vec::with_capacity(nq);
        for (q, order) in per_q.iter().enumerate() {
            let mut candidates = Vec::with_capacity(k);
            for (j, &a) in order.iter().enumerate() {
                let r = q * k + j;
                let mut score = 0.0f32;
                for t in 1..ans.cols {
                    let target = ids[r * ans.cols + t];
                    if target == self.package.manifest.tokens.pad {
                        continue;
                    }
                    let row = logits.slice(s![r, t - 1, ..]);
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
                    let nll = lse - row[target as usize];
                    let smooth = lse - row.iter().sum::<f32>() / vocab as f32;
                    score -= 0.9 * nll + 0.1 * smooth;
                }
                candidates.push((a, score));
            }
            let best = candidates
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.1.total_cmp(&y.1.1).then(y.0.cmp(&x.0)))
                .map(|(_, c)| c.0)
                .unwrap_or(0);
            out.push(RankedAnswers { best, candidates });
        }
        Ok(out)
    }

    /// All-position decoder logits `[rows, t, V]` for `ids` (`rows × t`, padding mask `mask`) from an
    /// empty cache, cross-attending to `states` with `enc_mask`.
    pub async fn decoder_logits(
        &mut self,
        states: ArrayView3<'_, f32>,
        enc_mask: &[i64],
        ids: &[i64],
        mask: &[i64],
        t: usize,
    ) -> Result<Array3<f32>> {
        self.shared_decoder_logits(states, enc_mask, 1, ids, mask, t)
            .await
    }

    /// [`Blip::decoder_logits`] with each state read by `repeat` consecutive rows (which share its
    /// cross K/V).
    async fn shared_decoder_logits(
        &mut self,
        states: ArrayView3<'_, f32>,
        enc_mask: &[i64],
        repeat: usize,
        ids: &[i64],
        mask: &[i64],
        t: usize,
    ) -> Result<Array3<f32>> {
        let rows = states.shape()[0] * repeat.max(1);
        let cross = self.graphs.cross_kv(states, Some(enc_mask), repeat).await?;
        let mut cache = self.graphs.new_cache(rows).await?;
        let feed = DecoderFeed {
            tokens: ids,
            t,
            attention_mask: Some(mask),
            reorder: None,
            logits: LogitPositions::All,
        };
        let logits = self.graphs.decode(&cross, &mut cache, feed).await?;
        let vocab = self.package.manifest.model.vocab_size;
        Array3::from_shape_vec((rows, t, vocab), logits).map_err(|e| TaskError::Engine {
            graph: blip_package::DECODER.into(),
            message: format!("all-position logits: {e}"),
        })
    }
}
