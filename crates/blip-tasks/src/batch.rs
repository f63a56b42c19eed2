//! Iteration-level ("continuous") batching: the decode steps of many requests run as one decoder
//! batch, and requests join and leave it at step boundaries. A request's first step (its prompt)
//! runs alone, as TGI's prefill does, then its rows join the running batch; rows of different
//! lengths share a run through the engine's padded, masked cache.

use crate::generate::{Generated, Generation};
use crate::graphs::{DecoderFeed, Graphs, LogitPositions};
use crate::{Result, TaskError};

struct Entry<T> {
    tag: T,
    generation: Generation,
}

/// Requests decoding together; `T` tags each request for its caller.
pub struct DecodeBatch<G: Graphs, T> {
    entries: Vec<Entry<T>>,
    cross: Option<G::Cross>,
    cache: Option<G::Cache>,
}

impl<G: Graphs, T> Default for DecodeBatch<G, T> {
    fn default() -> Self {
        DecodeBatch {
            entries: Vec::new(),
            cross: None,
            cache: None,
        }
    }
}

impl<G: Graphs, T> DecodeBatch<G, T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests still decoding.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decoder rows of one step (requests × beams).
    pub fn rows(&self) -> usize {
        self.entries.iter().map(|e| e.generation.rows()).sum()
    }

    /// The running rows' cross K/V (`None` while empty).
    pub fn cross(&self) -> Option<&G::Cross> {
        self.cross.as_ref()
    }

    /// Runs the first step of `generation` (its prompt) over `cross` (its rows' cross K/V, from
    /// [`Graphs::cross_kv`]) and adds it to the batch; returns it at once when that step ended it.
    /// On an error the request gets its tag back; when the error came from joining the running
    /// rows (an engine failure), their state is gone too: see [`DecodeBatch::is_intact`].
    pub async fn join(
        &mut self,
        graphs: &mut G,
        tag: T,
        generation: Generation,
        cross: G::Cross,
    ) -> std::result::Result<Option<(T, Generated)>, (T, TaskError)> {
        match self.prefill(graphs, generation, cross).await {
            Ok(None) => Ok(None),
            Ok(Some(Ok(generated))) => Ok(Some((tag, generated))),
            Ok(Some(Err(generation))) => {
                self.entries.push(Entry { tag, generation });
                Ok(None)
            }
            Err(e) => Err((tag, e)),
        }
    }

    /// The prompt step; `Some(Ok)`: finished at once, `Some(Err)`: joined the running rows, to be
    /// added as an entry.
    async fn prefill(
        &mut self,
        graphs: &mut G,
        mut generation: Generation,
        cross: G::Cross,
    ) -> Result<Option<std::result::Result<Generated, Generation>>> {
        let Some(input) = generation.next_input() else {
            return Ok(Some(Ok(generation.finish())));
        };
        if input.reorder.is_some() {
            return Err(TaskError::Input(
                "a request joins a decode batch before its first step".into(),
            ));
        }
        let mut cache = graphs.new_cache(generation.rows()).await?;
        let feed = DecoderFeed {
            tokens: &input.tokens,
            t: input.t,
            attention_mask: None,
            reorder: None,
            logits: LogitPositions::Last,
        };
        let logits = graphs.decode(&cross, &mut cache, feed).await?;
        generation.push_logits(&logits)?;
        if generation.next_input().is_none() {
            return Ok(Some(Ok(generation.finish())));
        }
        let (cross, cache) = match (self.cross.take(), self.cache.take()) {
            (Some(run_cross), Some(run_cache)) => {
                let joined = graphs.join_cross(vec![run_cross, cross]).await?;
                (joined, graphs.join_caches(vec![run_cache, cache]).await?)
            }
            _ => (cross, cache),
        };
        self.cross = Some(cross);
        self.cache = Some(cache);
        Ok(Some(Err(generation)))
    }

    /// Whether the running requests still have their decoder state (false after an engine
    /// failure in [`DecodeBatch::join`] or [`DecodeBatch::step`]: then [`DecodeBatch::abort`]).
    pub fn is_intact(&self) -> bool {
        self.entries.is_empty() || (self.cross.is_some() && self.cache.is_some())
    }

    /// Empties the batch, returning its requests' tags: after a failed [`DecodeBatch::step`] every
    /// request in it has failed.
    pub fn abort(&mut self) -> Vec<T> {
        self.cross = None;
        self.cache = None;
        self.entries.drain(..).map(|e| e.tag).collect()
    }

    /// One decoder run for every request in the batch; returns the requests it finished (they
    /// leave the batch). On an error the batch's state is gone: call [`DecodeBatch::abort`].
    pub async fn step(&mut self, graphs: &mut G) -> Result<Vec<(T, Generated)>> {
        let (Some(cross), Some(mut cache)) = (self.cross.take(), self.cache.take()) else {
            return Ok(Vec::new());
        };
        let mut tokens = Vec::with_capacity(self.rows());
        let mut reorder = Vec::with_capacity(self.rows());
        let mut offset = 0;
        for e in &self.entries {
            let rows = e.generation.rows();
            let input = e.generation.next_input().ok_or_else(|| {
                TaskError::Input("a finished request stayed in the decode batch".into())
            })?;
            if input.t != 1 {
                return Err(TaskError::Input(format!(
                    "a batched step feeds 1 token a row, not {}",
                    input.t
                )));
            }
            tokens.extend_from_slice(&input.tokens);
            match &input.reorder {
                Some(src) => reorder.extend(src.iter().map(|&r| offset + r)),
                None => reorder.extend(offset..offset + rows),
            }
            offset += rows;
        }
        let feed = DecoderFeed {
            tokens: &tokens,
            t: 1,
            attention_mask: None,
            reorder: Some(&reorder),
            logits: LogitPositions::Last,
        };
        let logits = graphs.decode(&cross, &mut cache, feed).await?;
        let vocab = logits.len() / offset.max(1);
        let mut at = 0;
        for e in self.entries.iter_mut() {
            let n = e.generation.rows() * vocab;
            e.generation.push_logits(&logits[at..at + n])?;
            at += n;
        }
        // Finished requests leave; the survivors' rows are kept in order.
        let mut keep = Vec::new();
        let mut row = 0;
        let mut finished = Vec::new();
        let mut running = Vec::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            let rows = e.generation.rows();
            if e.generation.next_input().is_some() {
                keep.extend(row..row + rows);
                running.push(e);
            } else {
                finished.push((e.tag, e.generation.finish()));
            }
            row += rows;
        }
        self.entries = running;
        if !self.entries.is_empty() {
            if keep.len() == row {
                self.cross = Some(cross);
                self.cache = Some(cache);
            } else {
                self.cross = Some(graphs.select_cross_rows(cross, &keep).await?);
                self.cache = Some(graphs.select_cache_rows(cache, &keep).await?);
            }
        }
        Ok(finished)
    }
}
