//! The simulated renderer of `meshd join --simulate-render SECS`: a benchmarking aid, never
//! the default. It runs no Blender: each frame takes SECS seconds and yields a small valid
//! PNG whose pixels derive from `blake3(seed ‖ frame)`, so frames differ per job and frame
//! and every result travels, is verified and is written like a real one.

use std::path::Path;
use std::time::{Duration, Instant};

use super::worker::{FrameError, RenderedFrame};

/// Size of a simulated frame.
pub const WIDTH: u32 = 32;
pub const HEIGHT: u32 = 18;

/// The PNG bytes of simulated `frame` for `seed` (the job).
pub fn frame_png(seed: &[u8], frame: u32) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(seed);
    h.update(&frame.to_le_bytes());
    let mut xof = h.finalize_xof();
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    xof.fill(&mut pixels);
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels).unwrap_or_default();
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory RGB image as PNG cannot fail.
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// "Renders" `frame`: waits `secs`, then writes `out_dir/frame_####.png`.
pub async fn render(
    seed: &[u8],
    frame: u32,
    secs: Duration,
    out_dir: &Path,
) -> Result<RenderedFrame, FrameError> {
    let started = Instant::now();
    tokio::time::sleep(secs).await;
    let path = out_dir.join(format!("frame_{frame:04}.png"));
    let bytes = frame_png(seed, frame);
    let write = {
        let (dir, path) = (out_dir.to_path_buf(), path.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&path, bytes)
        })
    };
    match write.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(FrameError::OutputDir(e.to_string())),
        Err(e) => return Err(FrameError::OutputDir(e.to_string())),
    }
    Ok(RenderedFrame {
        frame,
        path,
        width: WIDTH,
        height: HEIGHT,
        render_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_valid_pngs_that_differ_per_job_and_frame() {
        let a1 = frame_png(b"job a", 1);
        let img = image::load_from_memory(&a1).unwrap();
        assert_eq!((img.width(), img.height()), (WIDTH, HEIGHT));
        assert_eq!(a1, frame_png(b"job a", 1));
        assert_ne!(a1, frame_png(b"job a", 2));
        assert_ne!(a1, frame_png(b"job b", 1));
    }

    #[tokio::test]
    async fn a_simulated_frame_takes_its_time_and_lands_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let rf = render(b"j", 7, Duration::from_millis(50), dir.path())
            .await
            .unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(std::fs::read(&rf.path).unwrap(), frame_png(b"j", 7));
        assert!(rf.path.ends_with("frame_0007.png"));
    }
}
