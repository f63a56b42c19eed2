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
use std::io::Read;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::PreprocessError;

/// Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Encoded files larger than this are refused before they are read (a 12-bit-per-channel
/// 8K photo is well under it).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;

/// Bytes read to recognise the format before the whole file is read.
const SNIFF_BYTES: usize = 32;

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
    /// Encoded images with more bytes are refused before they are read.
    pub max_file_bytes: u64,
}

impl ImagePreprocessor {
    pub fn new(p: &blip_package::Preprocess) -> Self {
        ImagePreprocessor {
            size: p.image_size as u32,
            rescale: p.rescale as f32,
            mean: p.mean.map(|v| v as f32),
            std: p.std.map(|v| v as f32),
            max_pixels: DEFAULT_MAX_PIXELS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }

    /// Decodes a file (PNG, JPEG, WebP, GIF, BMP), applies its EXIF orientation, converts to RGB.
    /// The file is read by [`ImagePreprocessor::read_path`].
    pub fn load_path(&self, path: &Path) -> Result<RgbImage, PreprocessError> {
        let bytes = self.read_path(path)?;
        self.load_bytes(&bytes, &path.display().to_string())
    }

    /// An image file's bytes, for [`ImagePreprocessor::load_bytes`]. The file must be a regular
    /// file under `max_file_bytes` whose first bytes are an image format's signature; it is read
    /// whole only after those checks.
    pub fn read_path(&self, path: &Path) -> Result<Vec<u8>, PreprocessError> {
        let name = path.display().to_string();
        let err = |message: String| PreprocessError::Image {
            name: name.clone(),
            message,
        };
        // metadata, not open: opening a FIFO for reading would block until a writer appears.
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.is_dir() {
            return Err(err("not a regular file (a folder)".into()));
        }
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        self.check_file_size(meta.len(), &name)?;
        let mut file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut bytes = Vec::with_capacity(SNIFF_BYTES);
        (&mut file)
            .take(SNIFF_BYTES as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| err(e.to_string()))?;
        sniff(&bytes).map_err(|m| err(m.into()))?;
        // The size is checked again on the bytes themselves: the file may have grown since.
        file.take(self.max_file_bytes + 1 - bytes.len() as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| err(e.to_string()))?;
        self.check_file_size(bytes.len() as u64, &name)?;
        Ok(bytes)
    }

    fn check_file_size(&self, len: u64, name: &str) -> Result<(), PreprocessError> {
        if len > self.max_file_bytes {
            return Err(PreprocessError::FileTooLarge {
                name: name.to_string(),
                bytes: len,
                max_bytes: self.max_file_bytes,
            });
        }
        Ok(())
    }

    /// Decodes an encoded image held in memory; `name` is used in error messages.
    pub fn load_bytes(&self, bytes: &[u8], name: &str) -> Result<RgbImage, PreprocessError> {
        let err = |message: String| PreprocessError::Image {
            name: name.to_string(),
            message,
        };
        self.check_file_size(bytes.len() as u64, name)?;
        let format = sniff(bytes).map_err(|m| err(m.into()))?;
        if format == ImageFormat::Jpeg {
            jpeg_complete(bytes).map_err(|m| err(format!("corrupt or truncated image: {m}")))?;
        }
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
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

/// The format of an encoded image from its signature (never from the file name).
fn sniff(head: &[u8]) -> Result<ImageFormat, &'static str> {
    if head.is_empty() {
        return Err("empty file");
    }
    match image::guess_format(head) {
        Ok(
            f @ (ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp),
        ) => Ok(f),
        _ => Err("not a recognised image format (PNG, JPEG, WebP, GIF, BMP)"),
    }
}

/// A JPEG must reach its end-of-image marker: the decoder fills a cut-off scan with grey and
/// reports success, so truncation is detected here, by walking the marker segments (skipping
/// APPn payloads such as EXIF thumbnails by their lengths) and the entropy-coded scans.
fn jpeg_complete(b: &[u8]) -> Result<(), String> {
    let truncated = |at: usize| {
        Err(format!(
            "JPEG data ends at byte {} without its end-of-image marker (the file is cut off)",
            at.min(b.len())
        ))
    };
    let mut i = 2; // after SOI (checked by sniff)
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while b.get(i) == Some(&0xFF) && b.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let (Some(&0xFF), Some(&m)) = (b.get(i), b.get(i + 1)) else {
            return match b.get(i) {
                None => truncated(i),
                Some(_) => Err(format!("JPEG marker expected at byte {i}")),
            };
        };
        i += 2;
        match m {
            0xD9 => return Ok(()),
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (b.get(i), b.get(i + 1)) else {
            return truncated(i);
        };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        if len < 2 {
            return Err(format!("JPEG segment at byte {i} has length {len}"));
        }
        i += len;
        if i > b.len() {
            return truncated(i);
        }
        if m == 0xDA {
            // Entropy-coded data runs to the next marker that is not a stuffed 0xFF00 or a restart.
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (Some(&0xFF), Some(&n)) if n == 0x00 || (0xD0..=0xD7).contains(&n) => i += 2,
                    (Some(&0xFF), Some(&0xFF)) => i += 1,
                    (Some(&0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return truncated(i),
                }
            }
        }
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
