//! Manifests: a blob is a list of content-defined chunks. `BlobId = blake3(postcard(Manifest))`.
//!
//! Chunk boundaries come from FastCDC (64 KiB min, 256 KiB average, 1 MiB max), so an edit in
//! the middle of a .blend changes only the chunks around it and the rest is never sent again.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::ids::{BlobId, ChunkId};

pub const MANIFEST_VERSION: u16 = 1;
pub const CHUNK_MIN: u32 = 64 * 1024;
pub const CHUNK_AVG: u32 = 256 * 1024;
pub const CHUNK_MAX: u32 = 1024 * 1024;
/// Largest blob meshd moves (64 GiB): bounds manifest size and what a peer can make us allocate.
pub const MAX_BLOB_SIZE: u64 = 64 << 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u16,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid: {0}")]
    Invalid(String),
    #[error("reading the file failed: {0}")]
    Io(#[from] std::io::Error),
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn id(&self) -> BlobId {
        BlobId::of(&self.encode())
    }

    /// Decodes a manifest a peer sent for `expected`, checking hash and internal consistency.
    pub fn decode_verified(bytes: &[u8], expected: &BlobId) -> Result<Self, ManifestError> {
        if BlobId::of(bytes) != *expected {
            return Err(ManifestError::Invalid(
                "hash does not match the requested blob".into(),
            ));
        }
        let m: Manifest = postcard::from_bytes(bytes)
            .map_err(|e| ManifestError::Invalid(format!("undecodable: {e}")))?;
        if m.version != MANIFEST_VERSION {
            return Err(ManifestError::Invalid(format!(
                "unsupported version {}",
                m.version
            )));
        }
        if m.size > MAX_BLOB_SIZE {
            return Err(ManifestError::Invalid("blob too large".into()));
        }
        let mut sum = 0u64;
        for c in &m.chunks {
            if c.len == 0 || c.len > CHUNK_MAX {
                return Err(ManifestError::Invalid("chunk length out of range".into()));
            }
            sum += c.len as u64;
        }
        if sum != m.size {
            return Err(ManifestError::Invalid(
                "chunk lengths do not add up to the size".into(),
            ));
        }
        Ok(m)
    }

    /// Byte offset of each chunk, in order.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, &ChunkRef)> {
        self.chunks.iter().scan(0u64, |off, c| {
            let start = *off;
            *off += c.len as u64;
            Some((start, c))
        })
    }

    /// Chunks `reader` with FastCDC and hashes every chunk.
    pub fn build(reader: impl Read) -> Result<Self, ManifestError> {
        let mut chunks = Vec::new();
        let mut size = 0u64;
        for chunk in fastcdc::v2020::StreamCDC::new(reader, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
            let chunk = chunk.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => ManifestError::Io(io),
                other => ManifestError::Invalid(other.to_string()),
            })?;
            size += chunk.length as u64;
            chunks.push(ChunkRef {
                id: ChunkId::of(&chunk.data),
                len: chunk.length as u32,
            });
        }
        if size > MAX_BLOB_SIZE {
            return Err(ManifestError::Invalid("file too large".into()));
        }
        Ok(Manifest {
            version: MANIFEST_VERSION,
            size,
            chunks,
        })
    }
}

/// `n` pseudo-random bytes (xorshift from a non-zero `seed`): content that neither chunks
/// along patterns nor compresses, for tests.
#[cfg(test)]
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::noise as data;
    use super::*;

    #[test]
    fn build_and_verify() {
        let d = data(3 << 20, 7);
        let m = Manifest::build(&d[..]).unwrap();
        assert_eq!(m.size, d.len() as u64);
        assert!(m.chunks.len() > 3);
        let bytes = m.encode();
        assert_eq!(Manifest::decode_verified(&bytes, &m.id()).unwrap(), m);
        assert!(Manifest::decode_verified(&bytes, &BlobId::of(b"x")).is_err());
        for (off, c) in m.offsets() {
            let slice = &d[off as usize..off as usize + c.len as usize];
            assert_eq!(ChunkId::of(slice), c.id);
        }
    }

    #[test]
    fn local_edit_keeps_most_chunks() {
        let a = data(4 << 20, 9);
        let mut b = a.clone();
        b.splice(2_000_000..2_000_000, b"a ten-byte".iter().copied());
        let ma = Manifest::build(&a[..]).unwrap();
        let mb = Manifest::build(&b[..]).unwrap();
        let shared = mb.chunks.iter().filter(|c| ma.chunks.contains(c)).count();
        assert!(
            shared + 3 >= mb.chunks.len(),
            "{shared} of {}",
            mb.chunks.len()
        );
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let m = Manifest::build(&b""[..]).unwrap();
        assert_eq!(m.size, 0);
        assert!(m.chunks.is_empty());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A manifest from a peer is checked against the id asked for, so garbage is refused;
        /// bytes that hash right but lie about sizes are refused too.
        #[test]
        fn manifest_decoder_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let id = BlobId::of(&bytes);
            if let Ok(m) = Manifest::decode_verified(&bytes, &id) {
                let sum: u64 = m.chunks.iter().map(|c| c.len as u64).sum();
                prop_assert_eq!(sum, m.size);
            }
        }
    }
}
