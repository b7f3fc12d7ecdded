//! Gossip messages as they arrive from any peer of the mesh.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshd::net::GossipMsg::decode(data);
});
