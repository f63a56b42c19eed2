//! Image → `pixel_values`, as BLIP's eval transform / transformers' `BlipImageProcessor` with Pillow:
//! decode, RGB, square bicubic resize (no crop), rescale 1/255, CLIP mean/std, CHW float32.
//!
//! The resize matches Pillow's BICUBIC to ±1 level: `fast_image_resize`'s CatmullRom is the same
//! kernel, but Pillow resizes in two separable passes with u8 rounding in between, in an order that
//! depends on the shapes (Pillow ≥ 13), so we run the two passes ourselves in Pillow's order.

use std::io::Cursor;
use std::path::Path;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use crate::PreprocessError;

/// Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// A decoded RGB8 image.
#[derive(Debug, Clone)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Settings of the image transform (from the package manifest).
#[derive(Debug, Clone)]
pub struct ImagePreprocessor {
    pub size: u32,
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Images with more pixels are refused before decoding.
    pub max_pixels: u64,
}

impl ImagePreprocessor {
    pub fn new(p: &blip_package::Preprocess) -> Self {
        ImagePreprocessor {
            size: p.image_size as u32,
            rescale: p.rescale as f32,
            mean: p.mean.map(|v| v as f32),
            std: p.std.map(|v| v as f32),
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }

    /// Decodes a file (PNG, JPEG, WebP, GIF, BMP), applies its EXIF orientation, converts to RGB.
    pub fn load_path(&self, path: &Path) -> Result<RgbImage, PreprocessError> {
        let bytes = std::fs::read(path).map_err(|e| PreprocessError::Image {
            name: path.display().to_string(),
            message: e.to_string(),
        })?;
        self.load_bytes(&bytes, &path.display().to_string())
    }

    /// Decodes an encoded image held in memory; `name` is used in error messages.
    pub fn load_bytes(&self, bytes: &[u8], name: &str) -> Result<RgbImage, PreprocessError> {
        let err = |message: String| PreprocessError::Image {
            name: name.to_string(),
            message,
        };
        if bytes.is_empty() {
            return Err(err("empty file".into()));
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| err(e.to_string()))?;
        if reader.format().is_none() {
            return Err(err(
                "not a recognised image format (PNG, JPEG, WebP, GIF, BMP)".into(),
            ));
        }
        let mut limits = Limits::default();
        // Decoder buffers for the largest allowed image at 16 bits per channel with alpha.
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8).max(64 << 20));
        reader.limits(limits);
        let mut decoder = reader
            .into_decoder()
            .map_err(|e| err(format!("corrupt or truncated image: {e}")))?;
        let (w, h) = decoder.dimensions();
        if w == 0 || h == 0 {
            return Err(err(format!("image has zero size ({w}x{h})")));
        }
        if (w as u64) * (h as u64) > self.max_pixels {
            return Err(PreprocessError::TooLarge {
                name: name.to_string(),
                width: w,
                height: h,
                max_pixels: self.max_pixels,
            });
        }
        let orientation = decoder.orientation().map_err(|e| err(e.to_string()))?;
        let mut img = DynamicImage::from_decoder(decoder)
            .map_err(|e| err(format!("corrupt or truncated image: {e}")))?;
        img.apply_orientation(orientation);
        let rgb = img.to_rgb8();
        Ok(RgbImage {
            width: rgb.width(),
            height: rgb.height(),
            data: rgb.into_raw(),
        })
    }

    /// Square `size × size` bicubic resize, matching Pillow's `Image.resize((s, s), BICUBIC)`.
    pub fn resize(&self, img: &RgbImage) -> Result<Vec<u8>, PreprocessError> {
        resize_like_pillow(img, self.size, self.size)
    }

    /// RGB8 `size × size` → normalised CHW float32.
    pub fn normalize(&self, rgb: &[u8]) -> Vec<f32> {
        let n = (self.size * self.size) as usize;
        let mut out = vec![0f32; 3 * n];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = (px[c] as f32 * self.rescale - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// Decoded image → `pixel_values` for one image (`3 × size × size`).
    pub fn pixel_values(&self, img: &RgbImage) -> Result<Vec<f32>, PreprocessError> {
        Ok(self.normalize(&self.resize(img)?))
    }
}

fn fir_image(w: u32, h: u32, data: Vec<u8>) -> Result<Image<'static>, PreprocessError> {
    Image::from_vec_u8(w, h, data, PixelType::U8x3)
        .map_err(|e| PreprocessError::Resize(e.to_string()))
}

/// One separable pass (only width or only height changes), CatmullRom = Pillow's bicubic kernel.
fn pass(
    resizer: &mut Resizer,
    src: &Image<'_>,
    w: u32,
    h: u32,
) -> Result<Image<'static>, PreprocessError> {
    let mut dst = Image::new(w, h, PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    resizer
        .resize(src, &mut dst, &opts)
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    Ok(dst)
}

/// Bicubic resize in Pillow's pass order: Pillow 13 goes vertical first iff
/// `in_h - out_h > 0 && in_h - out_h > 2 * (in_w - out_w)`, else horizontal first; a pass whose axis
/// keeps its size is skipped. Each pass rounds to u8, as Pillow does.
pub fn resize_like_pillow(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
) -> Result<Vec<u8>, PreprocessError> {
    let (in_w, in_h) = (img.width, img.height);
    if (in_w, in_h) == (out_w, out_h) {
        return Ok(img.data.clone());
    }
    let mut resizer = Resizer::new();
    let src = fir_image(in_w, in_h, img.data.clone())?;
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    let vertical_first = dh > 0 && dh > 2 * dw;
    let out = if vertical_first {
        let mid = if in_h != out_h {
            pass(&mut resizer, &src, in_w, out_h)?
        } else {
            src
        };
        if in_w != out_w {
            pass(&mut resizer, &mid, out_w, out_h)?
        } else {
            mid
        }
    } else {
        let mid = if in_w != out_w {
            pass(&mut resizer, &src, out_w, in_h)?
        } else {
            src
        };
        if in_h != out_h {
            pass(&mut resizer, &mid, out_w, out_h)?
        } else {
            mid
        }
    };
    Ok(out.into_vec())
}
