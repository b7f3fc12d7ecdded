//! Output checks: a frame counts only when its image exists, decodes, has the size the
//! job asked for, and is not entirely black or transparent (unless the job allows it).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use image::{DynamicImage, ImageBuffer, ImageReader, Limits, Pixel};

/// Largest decoded image accepted, in bytes (an 8K RGBA float frame is about 570 MiB).
const MAX_DECODED_BYTES: u64 = 4 << 30;

/// Checks the image at `path` and returns its `(width, height)`.
///
/// Fails (with a one-line reason naming the file) when the file is missing or empty, does
/// not decode as PNG, JPEG, TIFF or OpenEXR, differs from `expected` in size, or, unless
/// `allow_blank`, every pixel is black (all colour channels zero, give or take one step
/// of Blender's 8-bit dither) or every pixel is fully transparent (alpha zero). A multilayer EXR, which the `image` crate cannot decode, is
/// checked from its header only: size, no pixel check.
pub fn verify_image(
    path: &Path,
    expected: Option<(u32, u32)>,
    allow_blank: bool,
) -> Result<(u32, u32), String> {
    check_image(path, expected, allow_blank).map(|c| c.size)
}

/// What [`check_image`] found.
pub struct Checked {
    /// `(width, height)`.
    pub size: (u32, u32),
    /// The decoded pixels (`None` for a multilayer EXR, checked from its header).
    pub image: Option<DynamicImage>,
}

/// [`verify_image`], keeping the decoded image (for the frame's thumbnail).
pub fn check_image(
    path: &Path,
    expected: Option<(u32, u32)>,
    allow_blank: bool,
) -> Result<Checked, String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let meta = std::fs::metadata(path).map_err(|e| format!("output {name} is missing: {e}"))?;
    if !meta.is_file() {
        return Err(format!("output {name} is not a regular file"));
    }
    if meta.len() == 0 {
        return Err(format!("output {name} is empty"));
    }

    let (size, blank, image) = match decode(path) {
        Ok(img) => {
            let size = (img.width(), img.height());
            let blank = if allow_blank { None } else { blankness(&img) };
            (size, blank, Some(img))
        }
        Err(decode_err) => match exr_header_size(path) {
            // The `image` crate reads only plain RGB(A) EXR: check a multilayer one's header.
            Ok(Some(size)) => (size, None, None),
            _ => {
                return Err(format!(
                    "output {name} does not decode as an image: {decode_err}"
                ));
            }
        },
    };
    if size.0 == 0 || size.1 == 0 {
        return Err(format!("output {name} has no pixels"));
    }
    if let Some((w, h)) = expected
        && (w, h) != size
    {
        return Err(format!(
            "output {name} is {}x{}, expected {w}x{h}",
            size.0, size.1
        ));
    }
    if let Some(what) = blank {
        return Err(format!(
            "output {name} is entirely {what} (if the frame is meant to be, submit with --allow-blank)"
        ));
    }
    Ok(Checked { size, image })
}

fn decode(path: &Path) -> Result<DynamicImage, String> {
    let mut reader = ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| e.to_string())
}

/// `Some("black")` or `Some("transparent")` when the whole image is so.
///
/// "Black" allows one step of 8-bit noise: no colour channel above 1/255 of full scale,
/// because Blender's default dither leaves the pixels of a black 8-bit frame at 0 or 1.
/// "Transparent" likewise means no alpha above 1/255.
fn blankness(img: &DynamicImage) -> Option<&'static str> {
    const F: f32 = 1.0 / 255.0;
    match img {
        DynamicImage::ImageLuma8(b) => scan(b, 1),
        DynamicImage::ImageLumaA8(b) => scan(b, 1),
        DynamicImage::ImageRgb8(b) => scan(b, 1),
        DynamicImage::ImageRgba8(b) => scan(b, 1),
        DynamicImage::ImageLuma16(b) => scan(b, 257),
        DynamicImage::ImageLumaA16(b) => scan(b, 257),
        DynamicImage::ImageRgb16(b) => scan(b, 257),
        DynamicImage::ImageRgba16(b) => scan(b, 257),
        DynamicImage::ImageRgb32F(b) => scan(b, F),
        DynamicImage::ImageRgba32F(b) => scan(b, F),
        other => scan(&other.to_rgba32f(), F),
    }
}

/// See [`blankness`]; `floor` is the largest value still counted as zero.
fn scan<P: Pixel>(
    buf: &ImageBuffer<P, Vec<P::Subpixel>>,
    floor: P::Subpixel,
) -> Option<&'static str> {
    let has_alpha = P::HAS_ALPHA;
    let colour = usize::from(P::CHANNEL_COUNT) - usize::from(has_alpha);
    let (mut any_colour, mut any_opaque) = (false, !has_alpha);
    for p in buf.pixels() {
        let ch = p.channels();
        any_colour |= ch[..colour].iter().any(|&c| above(c, floor));
        if has_alpha {
            any_opaque |= above(ch[colour], floor);
        }
        if any_colour && any_opaque {
            return None;
        }
    }
    if !any_colour {
        Some("black")
    } else {
        Some("transparent")
    }
}

/// `c > floor`, with NaN counted as above (visible).
fn above<T: PartialOrd>(c: T, floor: T) -> bool {
    !matches!(
        c.partial_cmp(&floor),
        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    )
}

/// Size and channel names from the first header of an OpenEXR file.
#[derive(Debug, PartialEq)]
struct ExrHeader {
    size: (u32, u32),
    channels: Vec<String>,
}

impl ExrHeader {
    /// Only layered channels (`ViewLayer.Combined.R`): the `image` crate cannot decode it.
    fn is_multilayer(&self) -> bool {
        !self.channels.is_empty() && self.channels.iter().all(|c| c.contains('.'))
    }
}

/// The size of a multilayer OpenEXR file, from its header; `None` for anything else.
fn exr_header_size(path: &Path) -> std::io::Result<Option<(u32, u32)>> {
    let mut head = Vec::new();
    BufReader::new(File::open(path)?)
        .take(1 << 20)
        .read_to_end(&mut head)?;
    Ok(parse_exr_header(&head)
        .filter(ExrHeader::is_multilayer)
        .map(|h| h.size))
}

fn parse_exr_header(b: &[u8]) -> Option<ExrHeader> {
    if b.get(..4)? != [0x76, 0x2f, 0x31, 0x01] {
        return None;
    }
    let cstr = |pos: &mut usize| -> Option<&[u8]> {
        let rest = b.get(*pos..)?;
        let end = rest.iter().position(|&c| c == 0)?;
        *pos += end + 1;
        Some(&rest[..end])
    };
    let mut pos = 8; // magic + version/flags
    let (mut size, mut channels) = (None, Vec::new());
    loop {
        let name = cstr(&mut pos)?;
        if name.is_empty() {
            return Some(ExrHeader {
                size: size?,
                channels,
            });
        }
        let ty = cstr(&mut pos)?;
        let len = i32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        let start = pos;
        pos = pos.checked_add(usize::try_from(len).ok()?)?;
        let value = b.get(start..pos)?;
        match (name, ty) {
            (b"dataWindow", b"box2i") if value.len() == 16 => {
                let v = |i: usize| -> Option<i64> {
                    Some(i32::from_le_bytes(value.get(i * 4..i * 4 + 4)?.try_into().ok()?).into())
                };
                let (x0, y0, x1, y1) = (v(0)?, v(1)?, v(2)?, v(3)?);
                size = Some((
                    u32::try_from(x1 - x0 + 1).ok()?,
                    u32::try_from(y1 - y0 + 1).ok()?,
                ));
            }
            (b"channels", b"chlist") => {
                // name\0, then pixel type, pLinear + 3 reserved, x/y sampling: 16 bytes.
                let mut cpos = 0;
                while let Some(end) = value.get(cpos..)?.iter().position(|&c| c == 0) {
                    if end == 0 {
                        break;
                    }
                    channels.push(String::from_utf8_lossy(&value[cpos..cpos + end]).into_owned());
                    cpos += end + 1 + 16;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb, Rgb32FImage, RgbImage, Rgba, RgbaImage};
    use std::path::PathBuf;

    fn save(dir: &Path, name: &str, img: DynamicImage, fmt: ImageFormat) -> PathBuf {
        let p = dir.join(name);
        img.save_with_format(&p, fmt).unwrap();
        p
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 3) as u8, (y * 5) as u8, 40]))
    }

    #[test]
    fn good_images_in_every_format() {
        let d = tempfile::tempdir().unwrap();
        let img = DynamicImage::ImageRgb8(gradient(64, 48));
        for (name, fmt) in [
            ("a.png", ImageFormat::Png),
            ("a.jpg", ImageFormat::Jpeg),
            ("a.tif", ImageFormat::Tiff),
        ] {
            let p = save(d.path(), name, img.clone(), fmt);
            assert_eq!(
                verify_image(&p, Some((64, 48)), false),
                Ok((64, 48)),
                "{name}"
            );
        }
        let f = Rgb32FImage::from_fn(64, 48, |x, _| Rgb([x as f32 / 64.0, 0.5, 0.25]));
        let p = save(
            d.path(),
            "a.exr",
            DynamicImage::ImageRgb32F(f),
            ImageFormat::OpenExr,
        );
        assert_eq!(verify_image(&p, Some((64, 48)), false), Ok((64, 48)));
        assert_eq!(verify_image(&p, None, false), Ok((64, 48)));
    }

    #[test]
    fn missing_empty_garbage_and_wrong_size() {
        let d = tempfile::tempdir().unwrap();
        let e = verify_image(&d.path().join("frame_0003.png"), None, false).unwrap_err();
        assert!(e.starts_with("output frame_0003.png is missing"), "{e}");

        let p = d.path().join("frame_0004.png");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(
            verify_image(&p, None, false).unwrap_err(),
            "output frame_0004.png is empty"
        );

        std::fs::write(&p, b"\x89PNG\r\n\x1a\nthis is cut short").unwrap();
        let e = verify_image(&p, None, false).unwrap_err();
        assert!(e.contains("does not decode"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let p = save(
            d.path(),
            "frame_0005.png",
            DynamicImage::ImageRgb8(gradient(32, 24)),
            ImageFormat::Png,
        );
        assert_eq!(
            verify_image(&p, Some((64, 48)), false).unwrap_err(),
            "output frame_0005.png is 32x24, expected 64x48"
        );
    }

    #[test]
    fn black_and_transparent_rejected_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        let black = DynamicImage::ImageRgb8(RgbImage::new(16, 16));
        let p = save(d.path(), "frame_0003.png", black, ImageFormat::Png);
        assert_eq!(
            verify_image(&p, Some((16, 16)), false).unwrap_err(),
            "output frame_0003.png is entirely black (if the frame is meant to be, submit with --allow-blank)"
        );
        assert_eq!(verify_image(&p, Some((16, 16)), true), Ok((16, 16)));

        // Colour everywhere but alpha 0 everywhere.
        let clear = RgbaImage::from_pixel(16, 16, Rgba([200, 10, 10, 0]));
        let p = save(
            d.path(),
            "frame_0004.png",
            DynamicImage::ImageRgba8(clear),
            ImageFormat::Png,
        );
        assert_eq!(
            verify_image(&p, None, false).unwrap_err(),
            "output frame_0004.png is entirely transparent (if the frame is meant to be, submit with --allow-blank)"
        );
        assert!(verify_image(&p, None, true).is_ok());

        // Blender's dither leaves black 8-bit frames at 0 or 1: still black.
        let dithered =
            RgbImage::from_fn(16, 16, |x, y| Rgb([((x + y) % 2) as u8, (x % 2) as u8, 0]));
        let p = save(
            d.path(),
            "frame_0006.png",
            DynamicImage::ImageRgb8(dithered),
            ImageFormat::Png,
        );
        assert!(
            verify_image(&p, None, false)
                .unwrap_err()
                .contains("entirely black")
        );

        // One visible pixel is enough.
        let mut one = RgbaImage::new(16, 16);
        one.put_pixel(7, 9, Rgba([0, 0, 2, 255]));
        let p = save(
            d.path(),
            "frame_0005.png",
            DynamicImage::ImageRgba8(one),
            ImageFormat::Png,
        );
        assert!(verify_image(&p, None, false).is_ok());

        // Black float EXR, and 16-bit black PNG.
        let f = Rgb32FImage::new(8, 8);
        let p = save(
            d.path(),
            "b.exr",
            DynamicImage::ImageRgb32F(f),
            ImageFormat::OpenExr,
        );
        assert!(
            verify_image(&p, None, false)
                .unwrap_err()
                .contains("entirely black")
        );
        let b16 = DynamicImage::ImageRgb16(ImageBuffer::new(8, 8));
        let p = save(d.path(), "b16.png", b16, ImageFormat::Png);
        assert!(
            verify_image(&p, None, false)
                .unwrap_err()
                .contains("entirely black")
        );
    }

    /// Builds an EXR header the way Blender's multilayer files look: no plain R/G/B.
    fn multilayer_exr_header(w: i32, h: i32) -> Vec<u8> {
        let mut b = vec![0x76, 0x2f, 0x31, 0x01, 2, 0, 0, 0];
        let mut attr = |name: &str, ty: &str, value: &[u8]| {
            b.extend(name.as_bytes());
            b.push(0);
            b.extend(ty.as_bytes());
            b.push(0);
            b.extend((value.len() as i32).to_le_bytes());
            b.extend(value);
        };
        let mut chans = Vec::new();
        for c in ["ViewLayer.Combined.A", "ViewLayer.Combined.B"] {
            chans.extend(c.as_bytes());
            chans.extend([0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        }
        chans.push(0);
        attr("channels", "chlist", &chans);
        attr("compression", "compression", &[3]);
        let window: Vec<u8> = [0, 0, w - 1, h - 1]
            .iter()
            .flat_map(|v: &i32| v.to_le_bytes())
            .collect();
        attr("dataWindow", "box2i", &window);
        attr("displayWindow", "box2i", &window);
        b.push(0);
        b
    }

    #[test]
    fn multilayer_exr_checked_from_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("frame_0001.exr");
        std::fs::write(&p, multilayer_exr_header(320, 180)).unwrap();
        assert_eq!(verify_image(&p, Some((320, 180)), false), Ok((320, 180)));
        assert!(verify_image(&p, Some((64, 48)), false).is_err());
        assert_eq!(parse_exr_header(b"\x76\x2f\x31\x01"), None);
        assert_eq!(parse_exr_header(b"not an exr at all"), None);
        let h = parse_exr_header(&multilayer_exr_header(8, 4)).unwrap();
        assert_eq!(h.size, (8, 4));
        assert_eq!(h.channels, ["ViewLayer.Combined.A", "ViewLayer.Combined.B"]);

        // A plain RGB EXR cut short after its header is an error, not a header-only pass.
        let f = Rgb32FImage::from_fn(64, 48, |x, _| Rgb([x as f32, 0.5, 0.25]));
        let p = save(
            d.path(),
            "cut.exr",
            DynamicImage::ImageRgb32F(f),
            ImageFormat::OpenExr,
        );
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = verify_image(&p, None, false).unwrap_err();
        assert!(e.contains("does not decode"), "{e}");
    }
}
