//! Request-response streams (`/meshd/sync/1`, `/meshd/blob/2`): the length-prefixed frame
//! reader and the postcard bodies behind it, both directions.
#![no_main]
use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use meshd::net::codec::PostcardCodec;
use meshd::net::{BlobRequest, BlobResponse, SyncRequest, SyncResponse};

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let p = StreamProtocol::new("/meshd/fuzz/1");
    block_on(async {
        let mut sync = PostcardCodec::<SyncRequest, SyncResponse>::new(MAX, MAX);
        let _ = sync.read_request(&p, &mut Cursor::new(data)).await;
        let _ = sync.read_response(&p, &mut Cursor::new(data)).await;
        let mut blob = PostcardCodec::<BlobRequest, BlobResponse>::new(MAX, MAX);
        let _ = blob.read_request(&p, &mut Cursor::new(data)).await;
        let _ = blob.read_response(&p, &mut Cursor::new(data)).await;
    });
    // The bodies alone, without the length prefix to get past.
    let _ = postcard::from_bytes::<SyncResponse>(data);
    // A chunk answer is decompressed within the chunk's length, whatever it claims.
    if let Ok(answer) = postcard::from_bytes::<BlobResponse>(data) {
        let _ = answer.into_chunk(1 << 20);
    }
});
