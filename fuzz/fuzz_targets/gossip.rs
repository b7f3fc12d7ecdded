//! Gossip messages as they arrive from any peer of the mesh.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Past the signature only with a valid one: the body decoder is fuzzed on its own.
    let _ = meshd::net::GossipMsg::open(data);
    let _ = meshd::net::GossipMsg::decode_body(data);
});
