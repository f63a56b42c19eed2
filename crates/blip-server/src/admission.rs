//! Admission by time and memory.
//!
//! Time: the engine measures, per head and task, the seconds one unit of work takes (an image, a
//! question, a text batch …; [`units`]), as an exponential average of its own runs. A request's
//! estimated cost is its units at that rate; the queue's backlog is the sum over the requests
//! admitted and not yet answered. A request whose backlog plus own cost passes its deadline is
//! refused at once (429, `Retry-After` = the backlog), instead of being queued to time out.
//!
//! Memory: every admitted request holds its decoded inputs until it is answered, and the engine
//! holds one batch's working set (vision states, cross-attention K/V, KV caches). The engine's
//! batch is capped so that its working set fits half of `--memory-budget`; requests are refused
//! when the inputs they would hold pass the other half.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blip_package::Head;
use blip_package::ModelDims;

use crate::error::ApiError;
use crate::metrics as m;

/// How much work a request is, in its task's units (the engine's rates are seconds per unit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Units {
    pub task: &'static str,
    pub units: f64,
}

/// Units of each kind of work: a caption image scaled by its decoder rows × steps against
/// BLIP's default (3 beams × 20 tokens); a generated answer per question; rank mode's questions ×
/// kept answers (a decoder pass each, 16 per unit); ITM and text embeddings per 16 texts; a search
/// per 16 reranked candidates.
pub fn units(task: &'static str, items: usize, rows: usize, steps: usize) -> Units {
    let items = items as f64;
    let units = match task {
        "caption" => items * (rows.max(1) * steps.max(1)) as f64 / 60.0,
        "vqa" => items * (rows.max(1) as f64 / 16.0).max(1.0),
        "itm" | "embed_texts" => 1.0 + items / 16.0,
        "search" => 1.0 + rows as f64 / 16.0,
        _ => items.max(1.0),
    };
    Units { task, units }
}

/// Seconds per unit, per (head, task), learned from the engine's runs.
#[derive(Default)]
pub struct Rates {
    seconds_per_unit: Mutex<HashMap<(&'static str, &'static str), f64>>,
}

impl Rates {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<(&'static str, &'static str), f64>> {
        match self.seconds_per_unit.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records a run of `u` that took `seconds` (exponential average, recent runs weigh 30 %).
    pub fn observe(&self, head: Head, u: Units, seconds: f64) {
        if !(u.units > 0.0 && seconds.is_finite() && seconds >= 0.0) {
            return;
        }
        let rate = seconds / u.units;
        self.table()
            .entry((head.name(), u.task))
            .and_modify(|r| *r = 0.7 * *r + 0.3 * rate)
            .or_insert(rate);
    }

    /// Estimated seconds of `u` on `head`; the warm-up probe's rate stands in for a task not run
    /// yet, and nothing is estimated before the probe.
    pub fn estimate(&self, head: Head, u: Units) -> Option<f64> {
        let t = self.table();
        t.get(&(head.name(), u.task))
            .or_else(|| t.get(&(head.name(), "probe")))
            .map(|r| r * u.units)
    }
}

/// What the admitted requests hold: estimated seconds of work not yet answered, and input bytes.
pub struct Ledger {
    backlog_micros: AtomicU64,
    held_bytes: AtomicU64,
    /// Bytes the admitted requests' inputs may hold together (half of --memory-budget).
    pub input_budget: u64,
}

/// A request's share of the ledger, returned when it is answered (dropped).
pub struct Ticket {
    ledger: Arc<Ledger>,
    micros: u64,
    bytes: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.ledger
            .backlog_micros
            .fetch_sub(self.micros, Ordering::SeqCst);
        self.ledger
            .held_bytes
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl Ledger {
    pub fn new(input_budget: u64) -> Ledger {
        Ledger {
            backlog_micros: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            input_budget,
        }
    }

    /// Seconds of admitted work not yet answered (the estimate a new request waits behind).
    pub fn backlog(&self) -> f64 {
        self.backlog_micros.load(Ordering::SeqCst) as f64 / 1e6
    }

    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::SeqCst)
    }

    /// Admits a request of `seconds` (None: not estimable yet) holding `bytes`, or refuses it.
    pub fn admit(
        ledger: &Arc<Ledger>,
        seconds: Option<f64>,
        bytes: u64,
        deadline: Duration,
    ) -> Result<Ticket, ApiError> {
        let refuse = |reason: &str, message: String, retry: f64| {
            metrics::counter!(m::REJECTED, "reason" => reason.to_string()).increment(1);
            let mut e = ApiError::overloaded(message);
            e.retry_after = Some(retry.ceil().clamp(1.0, 3600.0) as u32);
            e
        };
        let held = ledger.held_bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if held > ledger.input_budget && held != bytes {
            ledger.held_bytes.fetch_sub(bytes, Ordering::SeqCst);
            return Err(refuse(
                "memory",
                format!(
                    "overloaded: admitted requests hold {} MB of inputs; this one ({} MB) would pass \
                     the input half of --memory-budget ({} MB); retry shortly",
                    (held - bytes) / 1_000_000,
                    bytes.div_ceil(1_000_000),
                    ledger.input_budget / 1_000_000
                ),
                1.0,
            ));
        }
        let micros = seconds.map_or(0, |s| (s * 1e6) as u64);
        let backlog = ledger.backlog_micros.fetch_add(micros, Ordering::SeqCst);
        let wait = (backlog + micros) as f64 / 1e6;
        // An empty queue always admits: the estimate alone never refuses the only request.
        if backlog > 0 && wait > deadline.as_secs_f64() {
            ledger.backlog_micros.fetch_sub(micros, Ordering::SeqCst);
            ledger.held_bytes.fetch_sub(bytes, Ordering::SeqCst);
            return Err(refuse(
                "deadline",
                format!(
                    "overloaded: the queue holds about {:.1} s of work and this request about \
                     {:.1} s more, past its {:.0} s deadline (--request-timeout); retry later",
                    backlog as f64 / 1e6,
                    micros as f64 / 1e6,
                    deadline.as_secs_f64()
                ),
                wait - deadline.as_secs_f64(),
            ));
        }
        Ok(Ticket {
            ledger: ledger.clone(),
            micros,
            bytes,
        })
    }
}

/// Bytes one image holds from its admission to its answer: its pixels (f32, 3 × S × S) and its
/// encoded upload (at most the pixels again, for typical PNG/JPEG sizes).
pub fn input_bytes_per_image(image_size: usize) -> u64 {
    2 * (3 * image_size * image_size * 4) as u64
}

/// Bytes the engine holds per image of a caption batch: the vision encoder's widest activations
/// (attention scores of every head, the MLP), its hidden states, the decoder's cross-attention
/// K/V for every layer (shared by the beams) and the beams' KV caches and logits.
pub fn working_bytes_per_image(dims: &ModelDims, beams: usize, steps: usize) -> u64 {
    let t = dims.image_tokens;
    let f = 4u64;
    let vision = (t * t * dims.vision_heads + t * 4 * dims.vision_hidden_size) as u64 * f;
    let hidden = (t * dims.vision_hidden_size) as u64 * f;
    let cross = (2 * dims.text_layers * t * dims.text_hidden_size) as u64 * f;
    let cache = (beams * steps * 2 * dims.text_layers * dims.text_hidden_size
        + beams * dims.vocab_size) as u64
        * f;
    vision + hidden + cross + cache
}

/// The default --memory-budget: half of this machine's memory (MemTotal), or 2 GB when it
/// cannot be read.
pub fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(2_000_000_000, |kb| kb * 1024 / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_past_its_deadline_is_refused_and_the_only_one_never() {
        let ledger = Arc::new(Ledger::new(1_000));
        let deadline = Duration::from_secs(10);
        let first = Ledger::admit(&ledger, Some(30.0), 10, deadline).expect("alone: admitted");
        let e = Ledger::admit(&ledger, Some(1.0), 10, deadline)
            .err()
            .expect("behind 30 s of work: refused");
        assert_eq!(e.status.as_u16(), 429);
        assert_eq!(e.retry_after, Some(21));
        assert!(e.message.contains("30.0 s of work"), "{}", e.message);
        drop(first);
        assert_eq!(ledger.backlog(), 0.0);
        assert_eq!(ledger.held_bytes(), 0);
        let _ok = Ledger::admit(&ledger, Some(1.0), 10, deadline).expect("queue drained");
    }

    #[test]
    fn inputs_past_the_budget_are_refused() {
        let ledger = Arc::new(Ledger::new(100));
        let deadline = Duration::from_secs(10);
        let _a = Ledger::admit(&ledger, None, 60, deadline).unwrap();
        let e = Ledger::admit(&ledger, None, 60, deadline).err().unwrap();
        assert!(e.message.contains("--memory-budget"), "{}", e.message);
        assert_eq!(ledger.held_bytes(), 60);
    }

    #[test]
    fn rates_learn_and_fall_back_to_the_probe() {
        let r = Rates::default();
        let cap = units("caption", 2, 3, 20);
        assert_eq!(cap.units, 2.0);
        assert_eq!(r.estimate(Head::Caption, cap), None);
        r.observe(Head::Caption, units("probe", 1, 1, 1), 0.5);
        assert_eq!(r.estimate(Head::Caption, cap), Some(1.0));
        r.observe(Head::Caption, cap, 3.0);
        assert_eq!(r.estimate(Head::Caption, cap), Some(3.0));
        r.observe(Head::Caption, cap, 1.0);
        let e = r.estimate(Head::Caption, cap).unwrap();
        assert!((e - 2.4).abs() < 1e-9, "{e}");
    }
}
