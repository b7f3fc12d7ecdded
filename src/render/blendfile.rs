//! A cheap check that a path holds a `.blend` file, done before Blender is started.
//!
//! A `.blend` starts with the 7 bytes `BLENDER`. Blender can save it gzip-compressed
//! (magic `1f 8b`, before 3.0) or zstd-compressed (magic `28 b5 2f fd`, 3.0 and later);
//! then only the first few decompressed bytes are read.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

const BLEND_MAGIC: &[u8; 7] = b"BLENDER";
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Why a path is not a usable `.blend` file.
#[derive(Debug, Error)]
pub enum BlendFileError {
    #[error("scene file {0} does not exist: check the path")]
    Missing(PathBuf),
    #[error("{0} is a directory: give the path of a .blend file inside it")]
    Directory(PathBuf),
    #[error("scene file {0} is empty: save the scene again in Blender")]
    Empty(PathBuf),
    #[error("cannot read scene file {path}: {source}: check its permissions")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a .blend file ({what}): save the scene from Blender and submit that")]
    NotBlend { path: PathBuf, what: String },
}

/// Checks that `path` is a readable, non-empty `.blend` file, plain or gzip/zstd-compressed.
pub fn check_blend_file(path: &Path) -> Result<(), BlendFileError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BlendFileError::Missing(path.to_path_buf()));
        }
        Err(e) => return Err(unreadable(path, e)),
    };
    if meta.is_dir() {
        return Err(BlendFileError::Directory(path.to_path_buf()));
    }
    if meta.len() == 0 {
        return Err(BlendFileError::Empty(path.to_path_buf()));
    }
    let mut file = File::open(path).map_err(|e| unreadable(path, e))?;
    let head = read_up_to(&mut file, 16).map_err(|e| unreadable(path, e))?;
    let not_blend = |what: &str| BlendFileError::NotBlend {
        path: path.to_path_buf(),
        what: what.to_string(),
    };

    if head.starts_with(BLEND_MAGIC) {
        return Ok(());
    }
    let inner = if head.starts_with(&GZIP_MAGIC) {
        let file = File::open(path).map_err(|e| unreadable(path, e))?;
        let mut dec = flate2::read::GzDecoder::new(file);
        read_up_to(&mut dec, BLEND_MAGIC.len())
            .map_err(|e| not_blend(&format!("corrupt gzip data: {e}")))?
    } else if head.starts_with(&ZSTD_MAGIC) {
        let file = File::open(path).map_err(|e| unreadable(path, e))?;
        let mut dec = zstd::stream::read::Decoder::new(file)
            .map_err(|e| not_blend(&format!("corrupt zstd data: {e}")))?;
        read_up_to(&mut dec, BLEND_MAGIC.len())
            .map_err(|e| not_blend(&format!("corrupt zstd data: {e}")))?
    } else {
        return Err(not_blend("no BLENDER header"));
    };
    if inner.starts_with(BLEND_MAGIC) {
        Ok(())
    } else {
        Err(not_blend("compressed, but no BLENDER header inside"))
    }
}

fn unreadable(path: &Path, source: io::Error) -> BlendFileError {
    BlendFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads until `n` bytes or end of stream, whichever comes first.
fn read_up_to(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The start of a real 3.x `.blend` header followed by some block bytes.
    fn blend_bytes() -> Vec<u8> {
        let mut v = b"BLENDER-v304REND".to_vec();
        v.extend(std::iter::repeat_n(0xAB_u8, 4096));
        v
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn plain_blend_ok() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.blend", &blend_bytes());
        check_blend_file(&p).unwrap();
    }

    #[test]
    fn gzip_blend_ok() {
        let d = tempfile::tempdir().unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&blend_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(&gz[..2], &GZIP_MAGIC);
        let p = write(d.path(), "gz.blend", &gz);
        check_blend_file(&p).unwrap();
    }

    #[test]
    fn zstd_blend_ok() {
        let d = tempfile::tempdir().unwrap();
        let z = zstd::bulk::compress(&blend_bytes(), 3).unwrap();
        assert_eq!(&z[..4], &ZSTD_MAGIC);
        let p = write(d.path(), "z.blend", &z);
        check_blend_file(&p).unwrap();
    }

    #[test]
    fn compressed_non_blend_rejected() {
        let d = tempfile::tempdir().unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"hello world, not a blend").unwrap();
        let p = write(d.path(), "gz.blend", &enc.finish().unwrap());
        let e = check_blend_file(&p).unwrap_err();
        assert!(matches!(e, BlendFileError::NotBlend { .. }), "{e}");

        let z = zstd::bulk::compress(b"PK\x03\x04 a zip file", 3).unwrap();
        let p = write(d.path(), "z.blend", &z);
        let e = check_blend_file(&p).unwrap_err();
        assert!(matches!(e, BlendFileError::NotBlend { .. }), "{e}");

        // Truncated gzip stream: magic only.
        let p = write(d.path(), "t.blend", &[0x1f, 0x8b, 0x08]);
        let e = check_blend_file(&p).unwrap_err();
        assert!(matches!(e, BlendFileError::NotBlend { .. }), "{e}");
    }

    #[test]
    fn missing_dir_empty_and_garbage() {
        let d = tempfile::tempdir().unwrap();
        let e = check_blend_file(&d.path().join("nope.blend")).unwrap_err();
        assert!(matches!(e, BlendFileError::Missing(_)), "{e}");
        assert!(e.to_string().contains("does not exist"));

        let e = check_blend_file(d.path()).unwrap_err();
        assert!(matches!(e, BlendFileError::Directory(_)), "{e}");

        let p = write(d.path(), "empty.blend", b"");
        let e = check_blend_file(&p).unwrap_err();
        assert!(matches!(e, BlendFileError::Empty(_)), "{e}");

        let p = write(d.path(), "x.png", b"\x89PNG\r\n\x1a\n0000");
        let e = check_blend_file(&p).unwrap_err();
        assert!(matches!(e, BlendFileError::NotBlend { .. }), "{e}");
        assert!(!e.to_string().contains('\n'));

        let p = write(d.path(), "short.blend", b"BLEN");
        assert!(check_blend_file(&p).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "locked.blend", &blend_bytes());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        if File::open(&p).is_err() {
            let e = check_blend_file(&p).unwrap_err();
            assert!(matches!(e, BlendFileError::Unreadable { .. }), "{e}");
        }
        // Also as root: a path that runs through a regular file cannot be read.
        let e = check_blend_file(&p.join("inner.blend")).unwrap_err();
        assert!(matches!(e, BlendFileError::Unreadable { .. }), "{e}");
    }
}
