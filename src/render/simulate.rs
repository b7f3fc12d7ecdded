//! The simulated renderer of `meshd join --simulate-render SECS`: a benchmarking aid, never
//! the default. It runs no Blender: each frame takes SECS seconds and yields a small valid
//! PNG whose pixels derive from `blake3(seed ‖ frame)`, so frames differ per job and frame
//! and every result travels, is verified and is written like a real one. It is made at the
//! job's frame size when the job has one (a flat colour with a small patch of noise, so it
//! stays small), else at [`WIDTH`] x [`HEIGHT`].

use std::path::Path;
use std::time::{Duration, Instant};

use super::worker::{FrameError, RenderedFrame};

/// Size of a simulated frame of a job of unknown size, and of its patch of noise.
pub const WIDTH: u32 = 32;
pub const HEIGHT: u32 = 18;

/// The PNG bytes of simulated `frame` for `seed` (the job), `size` pixels (default
/// [`WIDTH`] x [`HEIGHT`]).
pub fn frame_png(seed: &[u8], frame: u32, size: Option<(u32, u32)>) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(seed);
    h.update(&frame.to_le_bytes());
    let mut xof = h.finalize_xof();
    let (w, h) = size.unwrap_or((WIDTH, HEIGHT));
    let mut noise = [0u8; (WIDTH * HEIGHT * 3) as usize];
    xof.fill(&mut noise);
    let fill = image::Rgb([noise[0], noise[1], noise[2]]);
    let mut img = image::RgbImage::from_pixel(w, h, fill);
    for (i, px) in noise.chunks_exact(3).enumerate() {
        let (x, y) = (i as u32 % WIDTH, i as u32 / WIDTH);
        if x < w && y < h {
            img.put_pixel(x, y, image::Rgb([px[0], px[1], px[2]]));
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory RGB image as PNG cannot fail.
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// "Renders" `frame`: writes `out_dir/frame_####.png` and its thumbnail, and answers
/// `secs` after it started. The file work is done within those `secs` (as a renderer's
/// own writing is part of its render time), so a frame takes `secs` however loaded the
/// machine is, give or take the timer.
pub async fn render(
    seed: &[u8],
    frame: u32,
    secs: Duration,
    size: Option<(u32, u32)>,
    out_dir: &Path,
) -> Result<RenderedFrame, FrameError> {
    let started = Instant::now();
    let path = out_dir.join(format!("frame_{frame:04}.png"));
    let (width, height) = size.unwrap_or((WIDTH, HEIGHT));
    let write = {
        let (dir, path, seed) = (out_dir.to_path_buf(), path.clone(), seed.to_vec());
        tokio::task::spawn_blocking(move || {
            let bytes = frame_png(&seed, frame, size);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&path, &bytes)?;
            // Made like a real renderer makes it: from the decoded frame.
            let thumb = image::load_from_memory(&bytes)
                .ok()
                .and_then(|img| super::thumb::write_for(&img, &path));
            Ok::<_, std::io::Error>(thumb)
        })
    };
    let thumb = match write.await {
        Ok(Ok(thumb)) => thumb,
        Ok(Err(e)) => return Err(FrameError::OutputDir(e.to_string())),
        Err(e) => return Err(FrameError::OutputDir(e.to_string())),
    };
    tokio::time::sleep_until((started + secs).into()).await;
    Ok(RenderedFrame {
        frame,
        path,
        thumb,
        width,
        height,
        render_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_valid_pngs_that_differ_per_job_and_frame() {
        let a1 = frame_png(b"job a", 1, None);
        let img = image::load_from_memory(&a1).unwrap();
        assert_eq!((img.width(), img.height()), (WIDTH, HEIGHT));
        assert_eq!(a1, frame_png(b"job a", 1, None));
        assert_ne!(a1, frame_png(b"job a", 2, None));
        assert_ne!(a1, frame_png(b"job b", 1, None));
        // At a job's size, still small.
        let hd = frame_png(b"job a", 1, Some((1920, 1080)));
        let img = image::load_from_memory(&hd).unwrap();
        assert_eq!((img.width(), img.height()), (1920, 1080));
        assert!(hd.len() < 64 * 1024, "{} bytes", hd.len());
        assert_ne!(hd, frame_png(b"job a", 2, Some((1920, 1080))));
    }

    #[tokio::test]
    async fn a_simulated_frame_takes_its_time_and_lands_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let rf = render(b"j", 7, Duration::from_millis(50), None, dir.path())
            .await
            .unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(std::fs::read(&rf.path).unwrap(), frame_png(b"j", 7, None));
        assert!(rf.path.ends_with("frame_0007.png"));
    }
}
