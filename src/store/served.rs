//! The answers to recent chunk requests, remembered so that a chunk many peers ask for at
//! once (a new job's scene: every renderer asks its seed) is compressed once, not once per
//! peer, and a chunk that does not compress is not tried again.
//!
//! Only the compressed bytes are kept (at most [`MAX_BYTES`] of them), and for a chunk that
//! does not compress only that fact. Chunks are content-addressed and every requester checks
//! what it receives against the hash it asked for, so a remembered answer cannot go stale.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::ids::ChunkId;
use crate::net::BlobResponse;

/// Compressed bytes kept at most.
const MAX_BYTES: usize = 16 << 20;
/// Chunks remembered at most.
const MAX_ENTRIES: usize = 4096;

/// How a chunk is sent, once known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packed {
    /// As this zstd frame.
    Zstd(Arc<[u8]>),
    /// As it is: compressing it does not pay.
    Raw,
}

#[derive(Debug, Default)]
pub struct ServedChunks {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<ChunkId, Packed>,
    /// Oldest first.
    order: VecDeque<ChunkId>,
    bytes: usize,
}

impl ServedChunks {
    pub fn get(&self, id: &ChunkId) -> Option<Packed> {
        self.inner.lock().ok()?.map.get(id).cloned()
    }

    /// Remembers how chunk `id` was just answered, forgetting the oldest past the bounds.
    pub fn remember(&self, id: ChunkId, answer: &BlobResponse) {
        let packed = match answer {
            BlobResponse::ChunkZstd(z) => Packed::Zstd(z.as_slice().into()),
            BlobResponse::Chunk(_) => Packed::Raw,
            BlobResponse::Manifest(_) | BlobResponse::NotFound | BlobResponse::Project(_) => {
                return;
            }
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let size = packed_len(&packed);
        if size > MAX_BYTES {
            return;
        }
        if let Some(old) = inner.map.insert(id, packed) {
            inner.bytes -= packed_len(&old);
        } else {
            inner.order.push_back(id);
        }
        inner.bytes += size;
        while inner.bytes > MAX_BYTES || inner.order.len() > MAX_ENTRIES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.map.remove(&oldest) {
                inner.bytes -= packed_len(&old);
            }
        }
    }
}

fn packed_len(p: &Packed) -> usize {
    match p {
        Packed::Zstd(z) => z.len(),
        Packed::Raw => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    #[test]
    fn remembers_how_a_chunk_was_sent_and_forgets_the_oldest_past_its_bounds() {
        let s = ServedChunks::default();
        s.remember(id(0), &BlobResponse::Chunk(vec![1; 10]));
        assert_eq!(s.get(&id(0)), Some(Packed::Raw));
        s.remember(id(1), &BlobResponse::NotFound);
        assert_eq!(s.get(&id(1)), None);

        let big = vec![7u8; MAX_BYTES / 4];
        for i in 1..=5 {
            s.remember(id(i), &BlobResponse::ChunkZstd(big.clone()));
        }
        // Five quarters do not fit: the oldest answers went, the newest four stay.
        assert_eq!(s.get(&id(0)), None);
        assert_eq!(s.get(&id(1)), None);
        assert!((2..=5).all(|i| matches!(s.get(&id(i)), Some(Packed::Zstd(_)))));
        let inner = s.inner.lock().unwrap();
        assert_eq!(inner.bytes, MAX_BYTES);
        assert_eq!(inner.order.len(), inner.map.len());
    }

    #[test]
    fn entries_are_bounded_too() {
        let s = ServedChunks::default();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            s.remember(id(i), &BlobResponse::Chunk(Vec::new()));
        }
        assert_eq!(s.inner.lock().unwrap().map.len(), MAX_ENTRIES);
        assert_eq!(s.get(&id(0)), None);
        assert_eq!(s.get(&id(MAX_ENTRIES as u32 + 9)), Some(Packed::Raw));
    }
}
