//! The blocking native API: a package on ONNX Runtime with BLIP's tasks. [`BlipModel`] is the
//! engine-free task layer ([`blip_tasks::Blip`]) over [`OrtGraphs`]; its methods wait for the
//! task layer's futures, which native graphs complete at once.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use blip_package::Package;
use blip_preprocess::{BlipTokenizer, TextBatch};
use blip_tasks::generate::Step;
use blip_tasks::{
    Answer, Blip, CandidateStates, Caption, CaptionOptions, DecoderFeed, Graphs, Hit, ImageInput,
    ItmScore, LogitPositions, RankedAnswers, VisionOutput, VqaOptions, ready,
};
use ndarray::{Array2, Array3, ArrayView3};

use crate::engine::{OrtCache, OrtCross, OrtGraphs, open_graphs};
use crate::{OrtLibrary, Result, SessionOptions};

pub struct BlipModel(Blip<OrtGraphs>);

impl Deref for BlipModel {
    type Target = Blip<OrtGraphs>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for BlipModel {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl BlipModel {
    /// Loads a package and opens every graph it lists.
    pub fn open(dir: &Path, opts: &SessionOptions) -> Result<BlipModel> {
        let package = Package::open(dir)?;
        let library = OrtLibrary::init_with_threads(opts.intra_threads)?;
        // The tokenizer loads while the sessions are created (each on threads of their own).
        let (tokenizer, graphs) = std::thread::scope(|scope| {
            // Limited to the model's positions and checked against its vocabulary: texts that do
            // not fit are refused by name before inference.
            let tokenizer = scope.spawn(|| BlipTokenizer::for_package(&package));
            let graphs = open_graphs(&library, &package, opts);
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (tokenizer, graphs)
        });
        let (tokenizer, graphs) = (tokenizer?, graphs?);
        Ok(BlipModel(Blip::new(package, tokenizer, graphs)))
    }

    /// The engine-free task layer over this model's graphs (for async drivers).
    pub fn tasks(&mut self) -> &mut Blip<OrtGraphs> {
        &mut self.0
    }

    /// Decodes and preprocesses one image to `3 × S × S` floats.
    pub fn pixel_values(&self, input: &ImageInput) -> Result<Vec<f32>> {
        Ok(self.0.pixel_values(input)?)
    }

    /// ITC text embeddings (`[n, E]`, normalised) of a [CLS]-first batch.
    pub fn text_embeds(&mut self, batch: &TextBatch) -> Result<Array2<f32>> {
        Ok(ready(self.0.graphs.text_embeds(batch))?)
    }

    /// ITM logits `[n, 2]` for row-aligned ([ENC]-first) texts and image states.
    pub fn itm_logits(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array2<f32>> {
        Ok(ready(self.0.graphs.itm_logits(batch, image))?)
    }

    /// VQA question states `[n, L, D]` for ([ENC]-first) questions and row-aligned image states.
    pub fn question_states(
        &mut self,
        batch: &TextBatch,
        image: ArrayView3<'_, f32>,
    ) -> Result<Array3<f32>> {
        Ok(ready(self.0.graphs.question_states(batch, image))?)
    }

    /// Runs the vision encoder on `n` preprocessed images laid end to end.
    pub fn vision(&mut self, pixels: &[f32], n: usize) -> Result<VisionOutput> {
        Ok(ready(self.0.vision(pixels, n))?)
    }

    /// Captions `n` preprocessed images (`pixels`: `n × 3 × S × S`).
    pub fn caption_pixels(
        &mut self,
        pixels: &[f32],
        n: usize,
        opts: &CaptionOptions,
    ) -> Result<Vec<Caption>> {
        Ok(ready(self.0.caption_pixels(pixels, n, opts))?)
    }

    /// Captions images; an image that cannot be read gets its own error, the others their captions.
    pub fn caption(
        &mut self,
        images: &[ImageInput],
        opts: &CaptionOptions,
    ) -> Result<Vec<Result<Caption>>> {
        let per_image = ready(self.0.caption(images, opts))?;
        Ok(per_image
            .into_iter()
            .map(|r| r.map_err(Into::into))
            .collect())
    }

    /// ITC embeddings (`[n, V, E]`: V vectors per image) and hidden states of images
    /// (retrieval packages).
    pub fn embed_images(&mut self, images: &[ImageInput]) -> Result<(Array3<f32>, Array3<f32>)> {
        Ok(ready(self.0.embed_images(images))?)
    }

    /// ITC embeddings of texts (truncated to `max_text_tokens`).
    pub fn embed_texts(&mut self, texts: &[&str]) -> Result<Array2<f32>> {
        Ok(ready(self.0.embed_texts(texts))?)
    }

    /// ITM logits `[n, 2]` of (image hidden state i, text i) pairs.
    pub fn itm_pairs(
        &mut self,
        image_hidden: ArrayView3<'_, f32>,
        texts: &[&str],
    ) -> Result<Array2<f32>> {
        Ok(ready(self.0.itm_pairs(image_hidden, texts))?)
    }

    /// Ranks images for one text: ITC top-`k`, then ITM rerank of those `k` ([`Blip::rank_images`]).
    pub fn rank_images(
        &mut self,
        text: &str,
        image_embeds: ArrayView3<'_, f32>,
        k: usize,
        candidates: CandidateStates<'_>,
    ) -> Result<Vec<Hit>> {
        Ok(ready(self.0.rank_images(
            text,
            image_embeds,
            k,
            candidates,
        ))?)
    }

    /// Generated answers for (image i, question i) pairs.
    pub fn answer(
        &mut self,
        images: &[ImageInput],
        questions: &[&str],
        opts: &VqaOptions,
    ) -> Result<Vec<Answer>> {
        Ok(ready(self.0.answer(images, questions, opts))?)
    }

    /// Generated answers from preprocessed pixels (`n × 3 × S × S`).
    pub fn answer_pixels(
        &mut self,
        pixels: &[f32],
        n: usize,
        questions: &[&str],
        opts: &VqaOptions,
    ) -> Result<Vec<Answer>> {
        Ok(ready(self.0.answer_pixels(pixels, n, questions, opts))?)
    }

    /// Image-text matching of one preprocessed image with each text ([`Blip::itm`]).
    pub fn itm(&mut self, pixels: &[f32], texts: &[&str]) -> Result<Vec<ItmScore>> {
        Ok(ready(self.0.itm(pixels, texts))?)
    }

    /// Generated answers for (image `image_of[i]`, question i) pairs, each image encoded once
    /// ([`Blip::answer_pixels_of`]).
    pub fn answer_pixels_of(
        &mut self,
        pixels: &[f32],
        n: usize,
        image_of: &[usize],
        questions: &[&str],
        opts: &VqaOptions,
    ) -> Result<Vec<Answer>> {
        Ok(ready(
            self.0
                .answer_pixels_of(pixels, n, image_of, questions, opts),
        )?)
    }

    /// Rank mode for (image `image_of[i]`, question i) pairs, each image encoded once
    /// ([`Blip::rank_answers_pixels_of`]).
    #[allow(clippy::too_many_arguments)]
    pub fn rank_answers_pixels_of(
        &mut self,
        pixels: &[f32],
        n: usize,
        image_of: &[usize],
        questions: &[&str],
        answers: &[&str],
        k: usize,
        max_question_tokens: usize,
    ) -> Result<Vec<RankedAnswers>> {
        Ok(ready(self.0.rank_answers_pixels_of(
            pixels,
            n,
            image_of,
            questions,
            answers,
            k,
            max_question_tokens,
        ))?)
    }

    /// LAVIS rank mode over an answer list ([`Blip::rank_answers`]).
    pub fn rank_answers(
        &mut self,
        images: &[ImageInput],
        questions: &[&str],
        answers: &[&str],
        k: usize,
        max_question_tokens: usize,
    ) -> Result<Vec<RankedAnswers>> {
        Ok(ready(self.0.rank_answers(
            images,
            questions,
            answers,
            k,
            max_question_tokens,
        ))?)
    }

    /// Rank mode from preprocessed pixels.
    pub fn rank_answers_pixels(
        &mut self,
        pixels: &[f32],
        n: usize,
        questions: &[&str],
        answers: &[&str],
        k: usize,
        max_question_tokens: usize,
    ) -> Result<Vec<RankedAnswers>> {
        Ok(ready(self.0.rank_answers_pixels(
            pixels,
            n,
            questions,
            answers,
            k,
            max_question_tokens,
        ))?)
    }

    /// All-position decoder logits `[rows, t, V]` from an empty cache ([`Blip::decoder_logits`]).
    pub fn decoder_logits(
        &mut self,
        states: ArrayView3<'_, f32>,
        enc_mask: &[i64],
        ids: &[i64],
        mask: &[i64],
        t: usize,
    ) -> Result<Array3<f32>> {
        Ok(ready(
            self.0.decoder_logits(states, enc_mask, ids, mask, t),
        )?)
    }

    /// A KV-cached decoder cross-attending to every position of `states` (`[n, E, D]`), one row per
    /// state, to drive decoding step by step ([`Step`]: benchmarks, tests).
    pub fn cached_decoder(&mut self, states: ArrayView3<'_, f32>) -> Result<CachedDecoder<'_>> {
        let rows = states.shape()[0];
        let graphs = &mut self.0.graphs;
        let cross = ready(graphs.cross_kv(states, None, 1))?;
        let cache = ready(graphs.new_cache(rows))?;
        Ok(CachedDecoder {
            graphs,
            cross,
            cache,
            rows,
        })
    }
}

/// The decoder with its cross K/V and KV cache, one step per call.
pub struct CachedDecoder<'m> {
    graphs: &'m mut OrtGraphs,
    cross: OrtCross,
    cache: OrtCache,
    rows: usize,
}

impl Step for CachedDecoder<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn vocab(&self) -> usize {
        self.graphs.decoder_shape().vocab
    }

    fn step(
        &mut self,
        tokens: &[i64],
        t: usize,
        reorder: Option<&[usize]>,
    ) -> blip_tasks::Result<Vec<f32>> {
        let feed = DecoderFeed {
            tokens,
            t,
            attention_mask: None,
            reorder,
            logits: LogitPositions::Last,
        };
        ready(self.graphs.decode(&self.cross, &mut self.cache, feed))
    }
}
