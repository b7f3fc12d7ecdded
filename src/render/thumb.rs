//! Frame thumbnails: a small JPEG the renderer makes from the image it has just checked,
//! stored as a blob of its own and named by the frame's signed result (`Done::thumb`), so
//! it travels with the frame to the submitter and the replica holders and any dashboard
//! can show it without the full frame.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, ImageReader};

/// Thumbnails are at most this wide...
pub const MAX_WIDTH: u32 = 240;
/// ...and this tall (a very tall frame keeps its aspect ratio within it).
pub const MAX_HEIGHT: u32 = 960;
/// Largest thumbnail accepted from a peer. One made here is a few KiB.
pub const MAX_BYTES: u64 = 256 * 1024;
/// JPEG quality of thumbnails.
const QUALITY: u8 = 80;

/// Where the thumbnail of the frame at `frame_path` is written: next to it,
/// `frame_0001.thumb.jpg`.
pub fn path_for(frame_path: &Path) -> PathBuf {
    let stem = frame_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    frame_path.with_file_name(format!("{stem}.thumb.jpg"))
}

/// A JPEG of `img` scaled to fit [`MAX_WIDTH`] × [`MAX_HEIGHT`] (never enlarged). Float
/// images (OpenEXR) hold linear light: they are brought to sRGB first, as Blender's own
/// image viewer shows them, rather than cut to 8 bits as they are.
pub fn jpeg(img: &DynamicImage) -> Result<Vec<u8>, String> {
    // `thumbnail` would enlarge a small frame.
    let small = if img.width() <= MAX_WIDTH && img.height() <= MAX_HEIGHT {
        img.clone()
    } else {
        img.thumbnail(MAX_WIDTH, MAX_HEIGHT)
    };
    let rgb = match small {
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
            let f = small.to_rgb32f();
            let mut out = image::RgbImage::new(f.width(), f.height());
            for (o, p) in out.pixels_mut().zip(f.pixels()) {
                *o = image::Rgb(p.0.map(linear_to_srgb8));
            }
            out
        }
        other => other.to_rgb8(),
    };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, QUALITY)
        .encode_image(&rgb)
        .map_err(|e| format!("cannot encode the thumbnail: {e}"))?;
    Ok(bytes)
}

/// Writes the thumbnail of `img` (the frame at `frame_path`) next to the frame. `None` when
/// it cannot be made: a frame needs no thumbnail to count.
pub fn write_for(img: &DynamicImage, frame_path: &Path) -> Option<PathBuf> {
    let path = path_for(frame_path);
    match jpeg(img).and_then(|b| std::fs::write(&path, b).map_err(|e| e.to_string())) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::debug!("no thumbnail for {}: {e}", frame_path.display());
            None
        }
    }
}

/// Checks bytes a peer sent as a thumbnail: a JPEG within [`MAX_BYTES`] whose size fits
/// [`MAX_WIDTH`] × [`MAX_HEIGHT`]. Only the header is read.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!("it is {} bytes, over {MAX_BYTES}", bytes.len()));
    }
    let reader = ImageReader::with_format(std::io::Cursor::new(bytes), ImageFormat::Jpeg);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("it is no JPEG: {e}"))?;
    if w == 0 || h == 0 || w > MAX_WIDTH || h > MAX_HEIGHT {
        return Err(format!("it is {w}x{h}, over {MAX_WIDTH}x{MAX_HEIGHT}"));
    }
    Ok(())
}

/// The sRGB transfer function, to 8 bits (NaN and negatives are black, above 1 white).
fn linear_to_srgb8(v: f32) -> u8 {
    let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let s = if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    };
    (s * 255.0 + 0.5) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thumbnail_fits_the_box_keeps_the_aspect_ratio_and_passes_the_check() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            1920,
            1080,
            image::Rgb([200, 40, 10]),
        ));
        let b = jpeg(&img).unwrap();
        check(&b).unwrap();
        let t = image::load_from_memory(&b).unwrap();
        assert_eq!((t.width(), t.height()), (240, 135));
        let p = t.to_rgb8().get_pixel(10, 10).0;
        assert!(p[0] > 180 && p[1] < 70, "{p:?}");
        // Small frames are not enlarged.
        let tiny = DynamicImage::ImageRgb8(image::RgbImage::new(32, 18));
        let t = image::load_from_memory(&jpeg(&tiny).unwrap()).unwrap();
        assert_eq!((t.width(), t.height()), (32, 18));
    }

    #[test]
    fn float_frames_are_shown_in_srgb() {
        // Linear 0.214 is sRGB 0.5 (about 128 of 255).
        let img = DynamicImage::ImageRgb32F(image::Rgb32FImage::from_pixel(
            64,
            64,
            image::Rgb([0.214, 0.214, 0.214]),
        ));
        let t = image::load_from_memory(&jpeg(&img).unwrap()).unwrap();
        let p = t.to_rgb8().get_pixel(32, 32).0;
        assert!((120..=136).contains(&p[0]), "{p:?}");
        assert_eq!(linear_to_srgb8(f32::NAN), 0);
        assert_eq!(linear_to_srgb8(7.0), 255);
    }

    #[test]
    fn the_check_refuses_what_no_renderer_makes() {
        assert!(check(b"not a jpeg").is_err());
        let big = DynamicImage::ImageRgb8(image::RgbImage::new(400, 100));
        let mut b = Vec::new();
        big.write_to(&mut std::io::Cursor::new(&mut b), ImageFormat::Jpeg)
            .unwrap();
        assert!(check(&b).unwrap_err().contains("400x100"));
        let png = crate::render::simulate::frame_png(b"j", 1, None);
        assert!(check(&png).is_err());
        assert!(check(&vec![0xFF; (MAX_BYTES + 1) as usize]).is_err());
    }

    #[test]
    fn the_thumbnail_lies_next_to_its_frame() {
        assert_eq!(
            path_for(Path::new("/w/out-0/frame_0007.exr")),
            Path::new("/w/out-0/frame_0007.thumb.jpg")
        );
    }
}
