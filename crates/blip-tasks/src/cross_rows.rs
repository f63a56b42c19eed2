//! Which image's cross-attention K/V each decoder row reads. The decoder graph keeps K/V once per
//! image (42.5 MB at base/384²) and groups the query rows of each image side by side, so the
//! beams of one image stream its K/V once per step instead of each holding a copy. Engines keep a
//! [`CrossRows`] beside their K/V and feed [`CrossRows::feed`] to the decoder.

use crate::{Result, TaskError};

/// The image of every decoder row. Every image has at least one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossRows {
    image_of_row: Vec<usize>,
    images: usize,
}

/// The decoder's `cross_groups` (`[images, group]`, row-major) and `cross_slots` (`[rows]`) inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossFeed {
    pub groups: Vec<i64>,
    pub group: usize,
    pub slots: Vec<i64>,
}

impl CrossRows {
    /// `images` images, each read by `repeat` consecutive rows (the beams of one input).
    pub fn repeated(images: usize, repeat: usize) -> CrossRows {
        let repeat = repeat.max(1);
        CrossRows {
            image_of_row: (0..images)
                .flat_map(|i| std::iter::repeat_n(i, repeat))
                .collect(),
            images,
        }
    }

    pub fn rows(&self) -> usize {
        self.image_of_row.len()
    }

    pub fn images(&self) -> usize {
        self.images
    }

    /// The rows and images of `parts`, in order (a request joining a decode batch).
    pub fn joined<'a>(parts: impl IntoIterator<Item = &'a CrossRows>) -> CrossRows {
        let mut out = CrossRows {
            image_of_row: Vec::new(),
            images: 0,
        };
        for p in parts {
            let base = out.images;
            out.image_of_row
                .extend(p.image_of_row.iter().map(|&i| base + i));
            out.images += p.images;
        }
        out
    }

    /// Keeps `rows` (in that order); returns the new mapping and the images still read, in order
    /// (the engine gathers those images' K/V). Images left without a row are dropped.
    pub fn select(&self, rows: &[usize]) -> Result<(CrossRows, Vec<usize>)> {
        let mut kept: Vec<usize> = Vec::new();
        let mut new_index = vec![usize::MAX; self.images];
        let mut image_of_row = Vec::with_capacity(rows.len());
        for &r in rows {
            let image = *self.image_of_row.get(r).ok_or_else(|| {
                TaskError::Input(format!(
                    "cross K/V row {r} selected from {} rows",
                    self.rows()
                ))
            })?;
            if new_index[image] == usize::MAX {
                new_index[image] = kept.len();
                kept.push(image);
            }
            image_of_row.push(new_index[image]);
        }
        Ok((
            CrossRows {
                image_of_row,
                images: kept.len(),
            },
            kept,
        ))
    }

    /// Whether `select` kept every image in its place (no K/V to gather).
    pub fn keeps_all(&self, kept: &[usize]) -> bool {
        kept.len() == self.images && kept.iter().enumerate().all(|(i, &k)| i == k)
    }

    /// The decoder inputs: each image's rows side by side (a short group repeats its first row;
    /// the copies' outputs are never read), and each row's flattened place among them.
    pub fn feed(&self) -> CrossFeed {
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); self.images];
        for (r, &i) in self.image_of_row.iter().enumerate() {
            members[i].push(r);
        }
        let group = members.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut groups = Vec::with_capacity(self.images * group);
        let mut slots = vec![0i64; self.rows()];
        for (i, rows) in members.iter().enumerate() {
            let first = rows.first().copied().unwrap_or(0);
            for j in 0..group {
                let r = rows.get(j).copied().unwrap_or(first);
                groups.push(r as i64);
                if j < rows.len() {
                    slots[r] = (i * group + j) as i64;
                }
            }
        }
        CrossFeed {
            groups,
            group,
            slots,
        }
    }
}

/// The encoder mask (`n × e`) that `Graphs::cross_kv` keeps beside its K/V: `mask` once checked,
/// or every position attended to.
pub fn encoder_mask(mask: Option<&[i64]>, n: usize, e: usize) -> Result<Vec<i64>> {
    match mask {
        Some(m) if m.len() == n * e => Ok(m.to_vec()),
        Some(m) => Err(TaskError::Input(format!(
            "encoder mask has {} values for {n} × {e} states",
            m.len()
        ))),
        None => Ok(vec![1; n * e]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beams_of_an_image_share_one_group() {
        let rows = CrossRows::repeated(2, 3);
        assert_eq!((rows.rows(), rows.images()), (6, 2));
        let f = rows.feed();
        assert_eq!(f.group, 3);
        assert_eq!(f.groups, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(f.slots, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn mixed_groups_pad_with_their_first_row_and_slots_point_back() {
        // A greedy request (1 row) joined before a beam-3 request.
        let rows = CrossRows::joined([&CrossRows::repeated(1, 1), &CrossRows::repeated(1, 3)]);
        let f = rows.feed();
        assert_eq!(f.group, 3);
        assert_eq!(f.groups, vec![0, 0, 0, 1, 2, 3]);
        assert_eq!(f.slots, vec![0, 3, 4, 5]);
        // Every row reads its own image's slot, and that slot holds the row.
        for (r, &s) in f.slots.iter().enumerate() {
            assert_eq!(f.groups[s as usize], r as i64);
        }
    }

    #[test]
    fn select_drops_images_without_rows_and_renumbers() {
        let rows = CrossRows::repeated(3, 2);
        let (left, kept) = rows.select(&[4, 5, 0]).unwrap();
        assert_eq!(kept, vec![2, 0]);
        assert_eq!(
            left,
            CrossRows::joined([&CrossRows::repeated(1, 2), &CrossRows::repeated(1, 1)])
        );
        assert!(!rows.keeps_all(&kept));
        let (same, kept) = rows.select(&[0, 1, 2, 3, 4, 5]).unwrap();
        assert!(rows.keeps_all(&kept));
        assert_eq!(same, rows);
        assert!(rows.select(&[6]).is_err());
    }
}
