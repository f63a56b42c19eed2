//! The bookkeeping of a decoder's self-attention cache, shared by every engine: which cached
//! positions of each row are real, and so the attention mask and position ids of the next run.
//! The engines keep only the tensors (ONNX Runtime values natively, `ort.Tensor`s in the
//! browser); the rules for padding, positions, beam reordering and row selection live here once.

use crate::TaskError;

/// Rows of a self-attention cache. Rows joined from different requests have different lengths:
/// the shorter ones are left-padded to `past_len`, and `mask` (`rows × past_len`) hides the
/// padding; each row's next position id is its own real length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheRows {
    past_len: usize,
    /// Real cached positions per row (its next position id).
    lens: Vec<usize>,
    mask: Vec<i64>,
}

/// What one decoder run is fed besides its tokens: the attention mask over the cache and the
/// fed positions (`rows × (past_len + t)`), and the position ids of the fed tokens (`rows × t`).
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderStep {
    pub attention_mask: Vec<i64>,
    pub positions: Vec<i64>,
}

/// Whether `src` keeps every row where it is (a beam reorder that moves nothing).
pub fn is_identity(src: &[usize]) -> bool {
    src.iter().enumerate().all(|(i, &r)| i == r)
}

impl CacheRows {
    /// An empty cache of `rows` rows.
    pub fn new(rows: usize) -> CacheRows {
        CacheRows {
            past_len: 0,
            lens: vec![0; rows],
            mask: Vec::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Cached positions per row, padding included (the cache tensors' length).
    pub fn past_len(&self) -> usize {
        self.past_len
    }

    /// Real cached positions per row.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Several caches' rows, in order, each left-padded to the longest (the engine stacks its
    /// tensors the same way: padding in front, to `past_len()` of the result).
    pub fn join(parts: &[&CacheRows]) -> CacheRows {
        let past_len = parts.iter().map(|c| c.past_len).max().unwrap_or(0);
        let rows: usize = parts.iter().map(|c| c.rows()).sum();
        let mut lens = Vec::with_capacity(rows);
        let mut mask = Vec::with_capacity(rows * past_len);
        for c in parts {
            lens.extend_from_slice(&c.lens);
            for r in 0..c.rows() {
                mask.extend(std::iter::repeat_n(0, past_len - c.past_len));
                mask.extend_from_slice(&c.mask[r * c.past_len..(r + 1) * c.past_len]);
            }
        }
        CacheRows {
            past_len,
            lens,
            mask,
        }
    }

    /// The rows `rows` (in that order), for the engine gathering the same rows of its tensors.
    pub fn select(&self, rows: &[usize]) -> Result<CacheRows, TaskError> {
        self.check_rows("select", rows)?;
        Ok(CacheRows {
            past_len: self.past_len,
            lens: rows.iter().map(|&r| self.lens[r]).collect(),
            mask: rows
                .iter()
                .flat_map(|&r| self.mask[r * self.past_len..(r + 1) * self.past_len].to_vec())
                .collect(),
        })
    }

    /// Beam search moved histories between rows: row `i` now holds what row `src[i]` held.
    pub fn reorder(&mut self, src: &[usize]) -> Result<(), TaskError> {
        if src.len() != self.rows() {
            return Err(TaskError::Input(format!(
                "reorder {src:?} for a cache of {} rows",
                self.rows()
            )));
        }
        *self = self.select(src)?;
        Ok(())
    }

    /// The mask and positions of a run feeding `t` tokens per row: `fed` (the task's mask over
    /// cache and fed tokens) when given, else the cache's own padding then the fed tokens.
    pub fn step(&self, t: usize, fed: Option<&[i64]>) -> Result<DecoderStep, TaskError> {
        let (rows, past_len) = (self.rows(), self.past_len);
        let attention_mask = match fed {
            Some(m) if m.len() == rows * (past_len + t) => m.to_vec(),
            Some(m) => {
                return Err(TaskError::Input(format!(
                    "decoder attention mask has {} values for {rows} × {}",
                    m.len(),
                    past_len + t
                )));
            }
            None => (0..rows)
                .flat_map(|r| {
                    let cached = &self.mask[r * past_len..(r + 1) * past_len];
                    cached.iter().copied().chain(std::iter::repeat_n(1, t))
                })
                .collect(),
        };
        // Each row continues from its own length (rows joined from other requests differ).
        let positions = self
            .lens
            .iter()
            .flat_map(|&len| (len..len + t).map(|p| p as i64))
            .collect();
        Ok(DecoderStep {
            attention_mask,
            positions,
        })
    }

    /// After a run of `step`: the fed tokens are cached.
    pub fn advance(&mut self, t: usize, step: DecoderStep) {
        self.past_len += t;
        for len in self.lens.iter_mut() {
            *len += t;
        }
        self.mask = step.attention_mask;
    }

    fn check_rows(&self, what: &str, rows: &[usize]) -> Result<(), TaskError> {
        match rows.iter().find(|&&r| r >= self.rows()) {
            Some(r) => Err(TaskError::Input(format!(
                "{what} row {r} of a cache of {} rows",
                self.rows()
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two requests' caches of different lengths: the shorter is left-padded and masked, each
    /// row continues from its own length, and selecting and reordering keep each row's own.
    #[test]
    fn joined_rows_keep_their_own_lengths_masks_and_positions() {
        let mut a = CacheRows::new(1);
        let s = a.step(3, None).unwrap();
        assert_eq!(s.positions, vec![0, 1, 2]);
        assert_eq!(s.attention_mask, vec![1, 1, 1]);
        a.advance(3, s);
        let mut b = CacheRows::new(2);
        // A fed mask (a padded prompt in the second row) is kept for the later steps.
        let s = b.step(2, Some(&[1, 1, 0, 1])).unwrap();
        b.advance(2, s);
        let mut joined = CacheRows::join(&[&a, &b]);
        assert_eq!(joined.past_len(), 3);
        assert_eq!(joined.lens(), &[3, 2, 2]);
        let s = joined.step(1, None).unwrap();
        assert_eq!(s.positions, vec![3, 2, 2]);
        assert_eq!(s.attention_mask, vec![1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1]);
        joined.advance(1, s);
        assert_eq!(joined.lens(), &[4, 3, 3]);

        let picked = joined.select(&[2, 0]).unwrap();
        assert_eq!(picked.lens(), &[3, 4]);
        assert_eq!(picked.step(1, None).unwrap().positions, vec![3, 4]);
        assert_eq!(
            picked.step(1, None).unwrap().attention_mask,
            vec![0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
        );

        let mut beams = joined.clone();
        beams.reorder(&[1, 1, 0]).unwrap();
        assert_eq!(beams.lens(), &[3, 3, 4]);
        assert!(beams.reorder(&[0, 1]).is_err());
        assert!(beams.select(&[3]).is_err());
        assert!(joined.step(1, Some(&[1; 5])).is_err());
        assert!(is_identity(&[0, 1, 2]) && !is_identity(&[1, 0]));
    }
}
