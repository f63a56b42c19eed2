//! Position-embedding interpolation to a new image size, as salesforce/BLIP's `interpolate_pos_embed`
//! (and transformers' `interpolate_pos_encoding`): the patch grid is resized with torch's bicubic
//! (`align_corners=False`, A = -0.75, border-clamped taps); the [CLS] row is kept.

const A: f32 = -0.75;

fn cubic1(x: f32) -> f32 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn cubic2(x: f32) -> f32 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// Source taps and weights for one output coordinate.
fn taps(out_index: usize, in_size: usize, out_size: usize) -> ([usize; 4], [f32; 4]) {
    let scale = in_size as f32 / out_size as f32;
    let real = scale * (out_index as f32 + 0.5) - 0.5;
    let base = real.floor();
    let t = real - base;
    let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
    let mut idx = [0usize; 4];
    for (k, slot) in idx.iter_mut().enumerate() {
        let i = base as i64 - 1 + k as i64;
        *slot = i.clamp(0, in_size as i64 - 1) as usize;
    }
    (idx, w)
}

/// `pos`: `[1 + g_in², dim]` row-major → `[1 + g_out², dim]`.
pub fn interpolate(pos: &[f32], dim: usize, g_in: usize, g_out: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity((1 + g_out * g_out) * dim);
    out.extend_from_slice(&pos[..dim]);
    let grid = &pos[dim..];
    let cols: Vec<_> = (0..g_out).map(|o| taps(o, g_in, g_out)).collect();
    let mut row_tmp = vec![0f32; 4 * dim];
    for oy in 0..g_out {
        let (ys, wy) = taps(oy, g_in, g_out);
        for (xs, wx) in &cols {
            // Interpolate along x in each of the 4 source rows, then along y (torch's order).
            for (r, &y) in ys.iter().enumerate() {
                let acc = &mut row_tmp[r * dim..(r + 1) * dim];
                acc.fill(0.0);
                for (k, &x) in xs.iter().enumerate() {
                    let src = &grid[(y * g_in + x) * dim..(y * g_in + x + 1) * dim];
                    for (a, s) in acc.iter_mut().zip(src) {
                        *a += wx[k] * s;
                    }
                }
            }
            for c in 0..dim {
                out.push((0..4).map(|r| wy[r] * row_tmp[r * dim + c]).sum());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let pos: Vec<f32> = (0..(1 + 9) * 2).map(|i| i as f32 * 0.1).collect();
        let out = interpolate(&pos, 2, 3, 3);
        for (a, b) in pos.iter().zip(&out) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn constant_grid_stays_constant_and_weights_sum_to_one() {
        let mut pos = vec![7.0f32; 2];
        pos.extend(std::iter::repeat_n(1.5f32, 16 * 2));
        let out = interpolate(&pos, 2, 4, 7);
        assert_eq!(out.len(), (1 + 49) * 2);
        assert_eq!(&out[..2], &[7.0, 7.0]);
        for v in &out[2..] {
            assert!((v - 1.5).abs() < 1e-5, "{v}");
        }
    }
}
