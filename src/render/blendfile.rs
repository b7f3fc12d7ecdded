//! A cheap check that a path holds a `.blend` file, done before Blender is started, and
//! which Blender saved it.
//!
//! A `.blend` starts with the 7 bytes `BLENDER`. Blender can save it gzip-compressed
//! (magic `1f 8b`, before 3.0) or zstd-compressed (magic `28 b5 2f fd`, 3.0 and later);
//! then only the first few decompressed bytes are read. The header names the version of
//! the Blender that saved the file: `BLENDER-v304` (pointer size `_`/`-`, endianness
//! `v`/`V`, version 3.4) up to 4.x, `BLENDER17-01v0500` (header size 17, format 01,
//! version 5.0) from 5.0.

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

/// What a `.blend` file's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlendHeader {
    /// MAJOR.MINOR of the Blender that saved the file; `None` for a header this code does
    /// not know (a future format).
    pub saved_by: Option<(u16, u16)>,
}

/// The longest header read: `BLENDER17-01v0500`.
const HEADER_LEN: usize = 17;

/// Checks that `path` is a readable, non-empty `.blend` file, plain or gzip/zstd-compressed,
/// and reads its header.
pub fn check_blend_file(path: &Path) -> Result<BlendHeader, BlendFileError> {
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
    let head = read_up_to(&mut file, HEADER_LEN).map_err(|e| unreadable(path, e))?;
    let not_blend = |what: &str| BlendFileError::NotBlend {
        path: path.to_path_buf(),
        what: what.to_string(),
    };

    if head.starts_with(BLEND_MAGIC) {
        return Ok(header(&head));
    }
    let inner = if head.starts_with(&GZIP_MAGIC) {
        let file = File::open(path).map_err(|e| unreadable(path, e))?;
        let mut dec = flate2::read::GzDecoder::new(file);
        read_up_to(&mut dec, HEADER_LEN)
            .map_err(|e| not_blend(&format!("corrupt gzip data: {e}")))?
    } else if head.starts_with(&ZSTD_MAGIC) {
        let file = File::open(path).map_err(|e| unreadable(path, e))?;
        let mut dec = zstd::stream::read::Decoder::new(file)
            .map_err(|e| not_blend(&format!("corrupt zstd data: {e}")))?;
        read_up_to(&mut dec, HEADER_LEN)
            .map_err(|e| not_blend(&format!("corrupt zstd data: {e}")))?
    } else {
        return Err(not_blend("no BLENDER header"));
    };
    if inner.starts_with(BLEND_MAGIC) {
        Ok(header(&inner))
    } else {
        Err(not_blend("compressed, but no BLENDER header inside"))
    }
}

/// Parses the version out of a header that starts with `BLENDER`.
fn header(head: &[u8]) -> BlendHeader {
    let digits = |b: &[u8]| -> Option<u16> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(b).ok()?.parse().ok()
    };
    let rest = &head[BLEND_MAGIC.len()..];
    let version = match rest {
        // 5.0+: header size, '-', format version, endianness, four digits.
        [s1, s2, b'-', _, _, b'v' | b'V', v @ ..] if s1.is_ascii_digit() && s2.is_ascii_digit() => {
            v.get(..4).and_then(digits)
        }
        // Up to 4.x: pointer size, endianness, three digits.
        [b'_' | b'-', b'v' | b'V', v @ ..] => v.get(..3).and_then(digits),
        _ => None,
    };
    BlendHeader {
        saved_by: version.map(|v| (v / 100, v % 100)),
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
        assert_eq!(check_blend_file(&p).unwrap().saved_by, Some((3, 4)));
    }

    #[test]
    fn the_header_names_the_blender_that_saved_the_file() {
        let cases: [(&[u8], _); 7] = [
            (b"BLENDER-v304REND", Some((3, 4))),
            (b"BLENDER_V293REND", Some((2, 93))),
            (b"BLENDER-v403", Some((4, 3))),
            (b"BLENDER17-01v0500REND", Some((5, 0))),
            (b"BLENDER17-01v1203", Some((12, 3))),
            (b"BLENDER-v3", None),
            (b"BLENDER?v304", None),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                header(bytes).saved_by,
                want,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn gzip_blend_ok() {
        let d = tempfile::tempdir().unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&blend_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(&gz[..2], &GZIP_MAGIC);
        let p = write(d.path(), "gz.blend", &gz);
        assert_eq!(check_blend_file(&p).unwrap().saved_by, Some((3, 4)));
    }

    #[test]
    fn zstd_blend_ok() {
        let d = tempfile::tempdir().unwrap();
        let z = zstd::bulk::compress(&blend_bytes(), 3).unwrap();
        assert_eq!(&z[..4], &ZSTD_MAGIC);
        let p = write(d.path(), "z.blend", &z);
        assert_eq!(check_blend_file(&p).unwrap().saved_by, Some((3, 4)));
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
