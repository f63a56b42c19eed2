//! The engine thread: one OS thread owns the loaded packages (`BlipModel`s) and takes work over a
//! channel, so graph runs never block the async runtime. The [`Batcher`] assembles a batch from the
//! queue (up to `--max-batch-images` images, waiting at most `--max-batch-wait-ms` for more), drops
//! entries whose client has gone or whose deadline has passed, and hands the batch to a
//! [`Scheduler`], which decides how it runs. [`RequestLevel`] is today's scheduler: images of
//! concurrent embed requests share one vision-encoder run, caption requests with identical decoding
//! settings are decoded together; an iteration-level (continuous batching) scheduler can replace
//! it without touching the queue or the HTTP side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blip_index::Store;
use blip_package::Head;
use blip_runtime::Blip;
use blip_runtime::{
    Answer, BlipModel, Caption, CaptionOptions, DecodeBatch, Generated, Graphs, OrtGraphs,
    RankedAnswers, RuntimeError, SessionOptions, VqaOptions, ready,
};
use ndarray::{Array2, Array3, Axis};
use tokio::sync::oneshot;

use crate::admission;
use crate::metrics as m;

/// Preprocessed images laid end to end (`n × 3 × S × S`).
#[derive(Debug, Clone)]
pub struct Pixels {
    pub data: Vec<f32>,
    pub n: usize,
}

/// The request layer's VQA modes are the engine's jobs as they are.
pub use blip_runtime::request::VqaMode;

/// What a job asks of the engine.
pub enum Work {
    Caption {
        pixels: Pixels,
        opts: CaptionOptions,
        /// The prompt's token count, from the route's check (for the generated-tokens metric;
        /// the engine does not tokenize the prompt a second time for it).
        prompt_tokens: usize,
    },
    /// ITC embeddings and hidden states of images (retrieval head).
    EmbedImages {
        pixels: Pixels,
    },
    EmbedTexts {
        texts: Vec<String>,
    },
    /// One image against several texts: ITM logits and ITC similarities.
    Itm {
        pixels: Pixels,
        texts: Vec<String>,
    },
    /// One image, several questions.
    Vqa {
        pixels: Pixels,
        questions: Vec<String>,
        mode: VqaMode,
    },
    Search {
        text: String,
        k: usize,
        rerank: usize,
        store: Arc<Store>,
    },
    /// A real forward pass of every loaded package on a synthetic image (readiness).
    Probe,
}

impl Work {
    fn task(&self) -> &'static str {
        match self {
            Work::Caption { .. } => "caption",
            Work::EmbedImages { .. } => "embed_images",
            Work::EmbedTexts { .. } => "embed_texts",
            Work::Itm { .. } => "itm",
            Work::Vqa { .. } => "vqa",
            Work::Search { .. } => "search",
            Work::Probe => "probe",
        }
    }

    /// This work in its task's units (the rates admission estimates with).
    pub fn units(&self) -> admission::Units {
        match self {
            Work::Caption { pixels, opts, .. } => admission::units(
                "caption",
                pixels.n,
                decoder_rows(&opts.strategy),
                opts.max_length,
            ),
            Work::EmbedImages { pixels } => admission::units("embed_images", pixels.n, 0, 0),
            Work::EmbedTexts { texts } => admission::units("embed_texts", texts.len(), 0, 0),
            Work::Itm { texts, .. } => admission::units("itm", texts.len(), 0, 0),
            Work::Vqa {
                questions, mode, ..
            } => admission::units("vqa", questions.len(), mode.decoder_rows(), 0),
            Work::Search { rerank, .. } => admission::units("search", 1, *rerank, 0),
            Work::Probe => admission::units("probe", 1, 0, 0),
        }
    }

    fn images(&self) -> usize {
        match self {
            Work::Caption { pixels, .. }
            | Work::EmbedImages { pixels }
            | Work::Itm { pixels, .. }
            | Work::Vqa { pixels, .. } => pixels.n,
            _ => 0,
        }
    }

    /// Jobs worth waiting for: their images can share a vision run with others'.
    fn batchable(&self) -> bool {
        matches!(self, Work::Caption { .. } | Work::EmbedImages { .. })
    }
}

pub enum Done {
    Captions(Vec<Caption>),
    ImageEmbeds {
        /// `[n, V, E]`: V vectors per image (BLIP 1, BLIP-2 the learned queries).
        embeds: Array3<f32>,
        hidden: Array3<f32>,
    },
    TextEmbeds(Array2<f32>),
    Itm(Vec<blip_runtime::ItmScore>),
    Answers(Vec<Answer>),
    Ranked(Vec<RankedAnswers>),
    Hits(blip_index::Ranked),
    Probed,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no loaded package has the {} head", .0.name())]
    NoHead(Head),
    #[error("deadline passed while queued")]
    Deadline,
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Index(#[from] blip_index::IndexError),
    #[error("the engine stopped")]
    Stopped,
}

pub type Reply = Result<Done, EngineError>;

pub struct Job {
    pub head: Head,
    pub work: Work,
    pub deadline: Instant,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Reply>,
}

impl Job {
    fn answer(self, r: Reply) {
        // The receiver may have gone (client disconnected after the check): nothing to do.
        let _ = self.reply.send(r);
    }
}

/// The loaded packages, one per head.
pub struct Models {
    models: Vec<(Head, BlipModel)>,
    /// Seconds per unit of each task, learned from these runs (admission reads them).
    rates: Arc<admission::Rates>,
    /// Seconds per image of merged runs by batch size (the batcher reads them).
    batch_costs: Arc<BatchCosts>,
}

/// Decoder rows per image of a decoding strategy (beams; 1 for greedy and sampling).
pub fn decoder_rows(strategy: &blip_runtime::Strategy) -> usize {
    match strategy {
        blip_runtime::Strategy::Beam { num_beams, .. } => *num_beams,
        _ => 1,
    }
}

impl Models {
    pub fn get(&mut self, head: Head) -> Result<&mut BlipModel, EngineError> {
        self.models
            .iter_mut()
            .find(|(h, _)| *h == head)
            .map(|(_, m)| m)
            .ok_or(EngineError::NoHead(head))
    }

    fn run(&mut self, head: Head, work: Work) -> Reply {
        let model = self.get(head)?;
        let task = work.task();
        let units = work.units();
        let start = Instant::now();
        let done = match work {
            Work::Caption {
                pixels,
                opts,
                prompt_tokens: prompt,
            } => {
                let captions = model.caption_pixels(&pixels.data, pixels.n, &opts)?;
                let tokens: usize = captions
                    .iter()
                    .map(|c| c.ids.len().saturating_sub(prompt))
                    .sum();
                metrics::counter!(m::GENERATED_TOKENS, "head" => head.name())
                    .increment(tokens as u64);
                Done::Captions(captions)
            }
            Work::EmbedImages { pixels } => {
                let v = model.vision(&pixels.data, pixels.n)?;
                let embeds = v.embeds.ok_or_else(|| {
                    RuntimeError::Input(format!(
                        "package head {} has no image embeddings",
                        model.head()
                    ))
                })?;
                Done::ImageEmbeds {
                    embeds,
                    hidden: v.hidden,
                }
            }
            Work::EmbedTexts { texts } => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                Done::TextEmbeds(model.embed_texts(&refs)?)
            }
            Work::Itm { pixels, texts } => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                Done::Itm(model.itm(&pixels.data, &refs)?)
            }
            Work::Vqa {
                pixels,
                questions,
                mode,
            } => {
                let qs: Vec<&str> = questions.iter().map(String::as_str).collect();
                // Every question asks about the one image, which is encoded once.
                let image_of = vec![0; qs.len()];
                let data = &pixels.data;
                match mode {
                    VqaMode::Generate(opts) => {
                        let answers =
                            model.answer_pixels_of(data, pixels.n, &image_of, &qs, &opts)?;
                        let tokens: usize = answers.iter().map(|a| a.ids.len()).sum();
                        metrics::counter!(m::GENERATED_TOKENS, "head" => head.name())
                            .increment(tokens as u64);
                        Done::Answers(answers)
                    }
                    VqaMode::Rank { answers, k } => {
                        let list: Vec<&str> = answers.iter().map(String::as_str).collect();
                        Done::Ranked(model.rank_answers_pixels_of(
                            data,
                            pixels.n,
                            &image_of,
                            &qs,
                            &list,
                            k,
                            VqaOptions::default().max_question_tokens,
                        )?)
                    }
                }
            }
            Work::Search {
                text,
                k,
                rerank,
                store,
            } => Done::Hits(
                ready(blip_index::rank_store(
                    &mut **model,
                    &store,
                    &text,
                    k,
                    rerank,
                ))
                .map_err(RuntimeError::from)?,
            ),
            Work::Probe => {
                probe(model)?;
                Done::Probed
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        metrics::histogram!(m::INFERENCE_DURATION, "head" => head.name(), "task" => task)
            .record(seconds);
        self.rates.observe(head, units, seconds);
        Ok(done)
    }
}

/// A real forward pass on a mid-grey image: the vision encoder, and the head's first text graph.
fn probe(model: &mut BlipModel) -> Result<(), RuntimeError> {
    let s = model.package.manifest.preprocess.image_size;
    let pixels = vec![0.0f32; 3 * s * s];
    let v = model.vision(&pixels, 1)?;
    match model.package.manifest.head {
        Head::Retrieval => {
            model.embed_texts(&["a"])?;
        }
        Head::Caption => {
            let opts = CaptionOptions {
                max_length: model.tokenizer.prompt_ids("")?.len() + 2,
                min_length: 0,
                prompt: String::new(),
                strategy: blip_runtime::Strategy::Greedy,
                ..Default::default()
            };
            model.caption_pixels(&pixels, 1, &opts)?;
        }
        Head::Vqa => {
            let _ = v;
        }
    }
    Ok(())
}

/// How a batch of admitted, live jobs is run. Swappable: a continuous-batching scheduler keeps its
/// own running decode state between calls.
pub trait Scheduler: Send {
    fn run(&mut self, models: &mut Models, batch: Vec<Job>);

    /// Work left between calls (a running decode batch): the engine then takes what has arrived
    /// without waiting and calls [`Scheduler::run`] again, with an empty batch if nothing has.
    fn busy(&self) -> bool {
        false
    }
}

/// Which scheduler the server runs (`--scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchedulerKind {
    /// Requests batched whole: captions with identical settings decode together, start to end.
    Request,
    /// Continuous batching: every caption decodes in one running batch, requests joining and
    /// leaving at step boundaries, whatever their settings.
    Iteration,
}

impl SchedulerKind {
    pub fn build(self) -> Box<dyn Scheduler> {
        match self {
            SchedulerKind::Request => Box::new(RequestLevel),
            SchedulerKind::Iteration => Box::new(IterationLevel::default()),
        }
    }
}

/// A caption request decoding in a running batch.
struct RunningCaption {
    job: Job,
    opts: CaptionOptions,
    prompt: Vec<i64>,
}

/// Iteration-level ("continuous") batching of captions: new caption requests' images share one
/// vision run, each request's prompt step runs alone, then its rows join the head's running decode
/// batch; every call runs one decoder step of that batch, so a request never waits for another to
/// finish. Everything else runs as in [`RequestLevel`].
#[derive(Default)]
pub struct IterationLevel {
    running: Vec<(Head, DecodeBatch<OrtGraphs, RunningCaption>)>,
}

impl Scheduler for IterationLevel {
    fn busy(&self) -> bool {
        self.running.iter().any(|(_, b)| !b.is_empty())
    }

    fn run(&mut self, models: &mut Models, batch: Vec<Job>) {
        let (captions, rest): (Vec<Job>, Vec<Job>) = batch
            .into_iter()
            .partition(|j| matches!(j.work, Work::Caption { .. }));
        RequestLevel.run(models, rest);
        let mut heads: Vec<(Head, Vec<Job>)> = Vec::new();
        for job in captions.into_iter().filter_map(live) {
            match heads.iter_mut().find(|(h, _)| *h == job.head) {
                Some((_, jobs)) => jobs.push(job),
                None => heads.push((job.head, vec![job])),
            }
        }
        for (head, jobs) in heads {
            self.admit(models, head, jobs);
        }
        for (head, batch) in self.running.iter_mut() {
            if batch.is_empty() {
                continue;
            }
            let Ok(model) = models.get(*head) else {
                continue;
            };
            metrics::histogram!(m::BATCH_SIZE, "head" => head.name(), "task" => "decode_step")
                .record(batch.rows() as f64);
            metrics::histogram!(m::BATCH_REQUESTS, "head" => head.name(), "task" => "decode_step")
                .record(batch.len() as f64);
            let tasks = model.tasks();
            match ready(batch.step(&mut tasks.graphs)) {
                Ok(finished) => {
                    for (d, generated) in finished {
                        answer_captions(tasks, *head, d, generated);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for d in batch.abort() {
                        d.job
                            .answer(Err(EngineError::Runtime(RuntimeError::Inference {
                                graph: "decoder".into(),
                                message: msg.clone(),
                            })));
                    }
                }
            }
        }
    }
}

impl IterationLevel {
    /// Encodes the new requests' images in one vision run and joins each request to the head's
    /// running decode batch (after its prompt step).
    fn admit(&mut self, models: &mut Models, head: Head, jobs: Vec<Job>) {
        let model = match models.get(head) {
            Ok(m) => m,
            Err(_) => {
                for job in jobs {
                    job.answer(Err(EngineError::NoHead(head)));
                }
                return;
            }
        };
        let mut data = Vec::new();
        let mut counts = Vec::with_capacity(jobs.len());
        for j in &jobs {
            if let Some(p) = pixels_of(&j.work) {
                data.extend_from_slice(&p.data);
                counts.push(p.n);
            }
        }
        let n: usize = counts.iter().sum();
        metrics::histogram!(m::BATCH_SIZE, "head" => head.name(), "task" => "caption")
            .record(n as f64);
        metrics::histogram!(m::BATCH_REQUESTS, "head" => head.name(), "task" => "caption")
            .record(jobs.len() as f64);
        let start = Instant::now();
        let vision = match model.vision(&data, n) {
            Ok(v) => v,
            Err(e) => {
                let msg = e.to_string();
                for job in jobs {
                    job.answer(Err(EngineError::Runtime(RuntimeError::Inference {
                        graph: "vision_encoder".into(),
                        message: msg.clone(),
                    })));
                }
                return;
            }
        };
        metrics::histogram!(m::INFERENCE_DURATION, "head" => head.name(), "task" => "vision")
            .record(start.elapsed().as_secs_f64());
        let batch = match self.running.iter().position(|(h, _)| *h == head) {
            Some(i) => &mut self.running[i].1,
            None => {
                self.running.push((head, DecodeBatch::new()));
                let last = self.running.len() - 1;
                &mut self.running[last].1
            }
        };
        let tasks = model.tasks();
        let mut offset = 0;
        for (job, count) in jobs.into_iter().zip(counts) {
            let rows: Vec<usize> = (offset..offset + count).collect();
            offset += count;
            let opts = match &job.work {
                Work::Caption { opts, .. } => opts.clone(),
                _ => continue,
            };
            let fail = |job: Job, e: blip_runtime::TaskError| {
                job.answer(Err(EngineError::Runtime(e.into())));
            };
            let (generation, prompt) = match tasks.caption_generation(count, &opts) {
                Ok(g) => g,
                Err(e) => {
                    fail(job, e);
                    continue;
                }
            };
            let states = vision.hidden.select(Axis(0), &rows);
            let beams = generation.rows() / count.max(1);
            let cross = match ready(tasks.graphs.cross_kv(states.view(), None, beams)) {
                Ok(c) => c,
                Err(e) => {
                    fail(job, e);
                    continue;
                }
            };
            let d = RunningCaption { job, opts, prompt };
            match ready(batch.join(&mut tasks.graphs, d, generation, cross)) {
                Ok(Some((d, generated))) => answer_captions(tasks, head, d, generated),
                Ok(None) => {}
                Err((d, e)) => {
                    fail(d.job, e);
                    if !batch.is_intact() {
                        for d in batch.abort() {
                            d.job
                                .answer(Err(EngineError::Runtime(RuntimeError::Inference {
                                    graph: "decoder".into(),
                                    message: "the running decode batch failed".into(),
                                })));
                        }
                    }
                }
            }
        }
    }
}

/// Answers a finished caption request.
fn answer_captions(
    tasks: &mut Blip<OrtGraphs>,
    head: Head,
    d: RunningCaption,
    generated: Generated,
) {
    let tokens: usize = generated
        .sequences
        .iter()
        .map(|s| s.len().saturating_sub(d.prompt.len()))
        .sum();
    metrics::counter!(m::GENERATED_TOKENS, "head" => head.name()).increment(tokens as u64);
    let reply = tasks
        .captions_of(generated, &d.prompt, &d.opts)
        .map(Done::Captions)
        .map_err(|e| EngineError::Runtime(e.into()));
    d.job.answer(reply);
}

/// Request-level batching: embed-image jobs of one head share one vision run; caption jobs of one
/// head with identical decoding settings share one `caption_pixels` run; the rest run one by one.
pub struct RequestLevel;

impl Scheduler for RequestLevel {
    fn run(&mut self, models: &mut Models, batch: Vec<Job>) {
        let mut captions: Vec<(Head, String, Vec<Job>)> = Vec::new();
        let mut embeds: Vec<(Head, Vec<Job>)> = Vec::new();
        let mut single = Vec::new();
        for job in batch {
            match &job.work {
                Work::Caption { opts, .. } => {
                    // Debug prints every field (floats exactly), so equal keys mean equal settings.
                    let key = format!("{opts:?}");
                    match captions
                        .iter_mut()
                        .find(|(h, k, _)| *h == job.head && *k == key)
                    {
                        Some((_, _, jobs)) => jobs.push(job),
                        None => captions.push((job.head, key, vec![job])),
                    }
                }
                Work::EmbedImages { .. } => match embeds.iter_mut().find(|(h, _)| *h == job.head) {
                    Some((_, jobs)) => jobs.push(job),
                    None => embeds.push((job.head, vec![job])),
                },
                _ => single.push(job),
            }
        }
        for (head, _, jobs) in captions {
            run_merged(models, head, jobs, |jobs, pixels| {
                // Equal settings, so equal prompts: the first job's count holds for all.
                let (opts, prompt_tokens) = match &jobs[0].work {
                    Work::Caption {
                        opts,
                        prompt_tokens,
                        ..
                    } => (opts.clone(), *prompt_tokens),
                    _ => (CaptionOptions::default(), 0),
                };
                Work::Caption {
                    pixels,
                    opts,
                    prompt_tokens,
                }
            });
        }
        for (head, jobs) in embeds {
            run_merged(models, head, jobs, |_, pixels| Work::EmbedImages { pixels });
        }
        for job in single {
            if let Some(job) = live(job) {
                let head = job.head;
                let (job, work) = take_work(job);
                job.answer(models.run(head, work));
            }
        }
    }
}

fn take_work(mut job: Job) -> (Job, Work) {
    let work = std::mem::replace(&mut job.work, Work::Probe);
    (job, work)
}

fn pixels_of(work: &Work) -> Option<&Pixels> {
    match work {
        Work::Caption { pixels, .. } | Work::EmbedImages { pixels } => Some(pixels),
        _ => None,
    }
}

/// Runs jobs of one kind as one graph call over all their images, then splits the result back.
fn run_merged(
    models: &mut Models,
    head: Head,
    jobs: Vec<Job>,
    make: impl Fn(&[Job], Pixels) -> Work,
) {
    let jobs: Vec<Job> = jobs.into_iter().filter_map(live).collect();
    if jobs.is_empty() {
        return;
    }
    let mut data = Vec::new();
    let mut counts = Vec::with_capacity(jobs.len());
    for j in &jobs {
        if let Some(p) = pixels_of(&j.work) {
            data.extend_from_slice(&p.data);
            counts.push(p.n);
        }
    }
    let n: usize = counts.iter().sum();
    let task = jobs[0].work.task();
    metrics::histogram!(m::BATCH_SIZE, "head" => head.name(), "task" => task).record(n as f64);
    metrics::histogram!(m::BATCH_REQUESTS, "head" => head.name(), "task" => task)
        .record(jobs.len() as f64);
    let work = make(&jobs, Pixels { data, n });
    let start = Instant::now();
    let result = models.run(head, work);
    if result.is_ok() {
        models.batch_costs.observe(n, start.elapsed().as_secs_f64());
    }
    let mut offset = 0;
    match result {
        Ok(Done::Captions(all)) => {
            for (job, c) in jobs.into_iter().zip(counts) {
                job.answer(Ok(Done::Captions(all[offset..offset + c].to_vec())));
                offset += c;
            }
        }
        Ok(Done::ImageEmbeds { embeds, hidden }) => {
            for (job, c) in jobs.into_iter().zip(counts) {
                let rows: Vec<usize> = (offset..offset + c).collect();
                job.answer(Ok(Done::ImageEmbeds {
                    embeds: embeds.select(Axis(0), &rows),
                    hidden: hidden.select(Axis(0), &rows),
                }));
                offset += c;
            }
        }
        Ok(_) => {
            for job in jobs {
                job.answer(Err(EngineError::Stopped));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for job in jobs {
                job.answer(Err(match &e {
                    EngineError::Runtime(RuntimeError::Input(_)) => {
                        EngineError::Runtime(RuntimeError::Input(msg.clone()))
                    }
                    EngineError::NoHead(h) => EngineError::NoHead(*h),
                    _ => EngineError::Runtime(RuntimeError::Inference {
                        graph: "batch".into(),
                        message: msg.clone(),
                    }),
                }));
            }
        }
    }
}

/// The job if its client still waits and its deadline has not passed; otherwise it is answered
/// (504) or dropped, and counted.
fn live(job: Job) -> Option<Job> {
    // Deadline first: a handler that timed out has also dropped its receiver.
    if Instant::now() >= job.deadline {
        metrics::counter!(m::DROPPED, "reason" => "deadline").increment(1);
        job.answer(Err(EngineError::Deadline));
        return None;
    }
    if job.reply.is_closed() {
        metrics::counter!(m::DROPPED, "reason" => "disconnected").increment(1);
        return None;
    }
    metrics::histogram!(m::QUEUE_DURATION, "head" => job.head.name(), "task" => job.work.task())
        .record(job.enqueued.elapsed().as_secs_f64());
    Some(job)
}

/// Seconds per image of merged runs, by batch size (powers of two), learned from the runs: the
/// batcher makes batches only as large as they pay. Until a size has been measured, batches
/// grow to the configured bound; once sizes are measured, the batch is capped at the cheapest
/// per image (a larger size must be 5 % cheaper to win), one size up is tried while it has not
/// been measured, and every 32nd batch may grow to the bound again, so the table follows the
/// machine's load.
#[derive(Default)]
pub struct BatchCosts {
    per_image: std::sync::Mutex<std::collections::BTreeMap<usize, f64>>,
    batches: std::sync::atomic::AtomicU64,
}

impl BatchCosts {
    fn table(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<usize, f64>> {
        match self.per_image.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records a merged run of `images` that took `seconds` (exponential average per size).
    pub fn observe(&self, images: usize, seconds: f64) {
        if images == 0 || !seconds.is_finite() {
            return;
        }
        let per = seconds / images as f64;
        self.table()
            .entry(images.next_power_of_two())
            .and_modify(|c| *c = 0.7 * *c + 0.3 * per)
            .or_insert(per);
    }

    /// Images the next batch may take, at most `max`.
    pub fn limit(&self, max: usize) -> usize {
        let n = self.batches.fetch_add(1, Ordering::Relaxed);
        let table = self.table();
        if table.is_empty() || n % 32 == 31 {
            return max;
        }
        let mut best = (0usize, f64::INFINITY);
        for (&size, &cost) in table.iter() {
            // Sizes ascend: a larger one wins only when clearly cheaper per image.
            if cost < best.1 * 0.95 || best.0 == 0 {
                best = (size, cost);
            }
        }
        let up = best.0 * 2;
        let limit = if up <= max.next_power_of_two() && !table.contains_key(&up) {
            up
        } else {
            best.0
        };
        limit.clamp(1, max.max(1))
    }
}

/// Assembles batches from the queue, oldest first.
pub struct Batcher {
    pub max_images: usize,
    pub max_wait: Duration,
    pub costs: Arc<BatchCosts>,
}

impl Batcher {
    /// The next batch, or None when every sender has gone.
    fn next(&self, rx: &mpsc::Receiver<Job>) -> Option<Vec<Job>> {
        let first = rx.recv().ok()?;
        let mut images = first.work.images();
        let wait = first.work.batchable();
        let mut batch = vec![first];
        let until = Instant::now() + self.max_wait;
        let limit = self.costs.limit(self.max_images);
        metrics::gauge!(m::BATCH_LIMIT).set(limit as f64);
        while images < limit {
            let next = if wait {
                let left = until.saturating_duration_since(Instant::now());
                rx.recv_timeout(left).ok()
            } else {
                rx.try_recv().ok()
            };
            match next {
                Some(j) => {
                    images += j.work.images();
                    batch.push(j);
                }
                None => break,
            }
        }
        metrics::gauge!(m::QUEUE_SIZE).decrement(batch.len() as f64);
        Some(batch)
    }
}

impl Batcher {
    /// What has arrived, without waiting (up to the image bound).
    fn arrived(&self, rx: &mpsc::Receiver<Job>) -> Vec<Job> {
        let mut batch = Vec::new();
        let mut images = 0;
        while images < self.max_images {
            match rx.try_recv() {
                Ok(j) => {
                    images += j.work.images();
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        metrics::gauge!(m::QUEUE_SIZE).decrement(batch.len() as f64);
        batch
    }
}

/// The handle the HTTP side holds: sends jobs to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
}

impl EngineHandle {
    /// Queues `work` for the package with `head`; the reply comes on the returned receiver.
    pub fn submit(
        &self,
        head: Head,
        work: Work,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Reply>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            head,
            work,
            deadline,
            enqueued: Instant::now(),
            reply,
        };
        self.tx.send(job).map_err(|_| EngineError::Stopped)?;
        metrics::gauge!(m::QUEUE_SIZE).increment(1.0);
        Ok(rx)
    }
}

/// The engine thread itself, kept so that shutdown can wait for it: a process that exits while
/// the thread is inside ONNX Runtime (loading or warming up a package) tears ORT's globals down
/// under it and dies of SIGSEGV instead of exiting 0.
pub struct EngineThread {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl EngineThread {
    /// Asks the thread to skip whatever loading is left, then waits for it to finish. The queue
    /// loop ends by itself once every [`EngineHandle`] is dropped; the caller drops its own first.
    pub fn stop_and_join(self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| "the engine thread panicked".to_string())
    }
}

/// Starts the engine thread: it opens every package, runs the probe once (warm-up), reports
/// through `loaded`, then serves the queue until every [`EngineHandle`] is dropped.
pub fn start(
    packages: Vec<(Head, std::path::PathBuf)>,
    opts: SessionOptions,
    batcher: Batcher,
    mut scheduler: Box<dyn Scheduler>,
    rates: Arc<admission::Rates>,
    loaded: oneshot::Sender<Result<(), String>>,
) -> std::io::Result<(EngineHandle, EngineThread)> {
    let (tx, rx) = mpsc::channel::<Job>();
    let batch_costs = batcher.costs.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let stopped = move || stopping.load(Ordering::SeqCst);
    let thread = std::thread::Builder::new()
        .name("blip-engine".into())
        .spawn(move || {
            let mut models = Models {
                models: Vec::new(),
                rates,
                batch_costs,
            };
            for (head, dir) in packages {
                if stopped() {
                    return;
                }
                match BlipModel::open(&dir, &opts) {
                    Ok(model) => models.models.push((head, model)),
                    Err(e) => {
                        let _ = loaded.send(Err(format!("loading {}: {e}", dir.display())));
                        return;
                    }
                }
            }
            let heads: Vec<Head> = models.models.iter().map(|(h, _)| *h).collect();
            for head in heads {
                if stopped() {
                    return;
                }
                if let Err(e) = models.run(head, Work::Probe) {
                    let _ =
                        loaded.send(Err(format!("warm-up of the {} package: {e}", head.name())));
                    return;
                }
            }
            let _ = loaded.send(Ok(()));
            loop {
                // A scheduler with a running decode batch takes what has arrived and steps on.
                let batch = if scheduler.busy() {
                    batcher.arrived(&rx)
                } else {
                    match batcher.next(&rx) {
                        Some(b) => b,
                        None => break,
                    }
                };
                scheduler.run(&mut models, batch);
            }
        })?;
    Ok((EngineHandle { tx }, EngineThread { thread, stop }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_grow_only_where_they_pay() {
        let c = BatchCosts::default();
        // Nothing measured: the configured bound.
        assert_eq!(c.limit(16), 16);
        // Per image, 1 costs 1.0 s, 2 cost 0.9 s: try 4.
        c.observe(1, 1.0);
        c.observe(2, 1.8);
        assert_eq!(c.limit(16), 4);
        // 4 cost 1.2 s per image: 2 is the cheapest, 4 is measured, so 2.
        c.observe(4, 4.8);
        assert_eq!(c.limit(16), 2);
        // A size only 2 % cheaper does not win over a smaller one.
        let d = BatchCosts::default();
        d.observe(1, 1.0);
        d.observe(2, 1.96);
        assert_eq!(d.limit(2), 1);
        // Compute-bound (no size cheaper): one image at a time, never above the bound.
        let e = BatchCosts::default();
        for n in [1, 2, 4, 8, 16] {
            e.observe(n, n as f64);
        }
        assert_eq!(e.limit(16), 1);
        assert_eq!(e.limit(0), 1);
        // Every 32nd batch may grow to the bound again (the table follows the load).
        let limits: Vec<usize> = (0..40).map(|_| e.limit(16)).collect();
        assert_eq!(limits.iter().filter(|&&l| l == 16).count(), 1, "{limits:?}");
    }
}
