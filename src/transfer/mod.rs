//! Moving blobs between peers: content-defined chunking ([`manifest`]) and verified,
//! multi-peer fetching ([`fetch`]).

pub mod fetch;
pub mod manifest;

pub use fetch::{FetchError, fetch};
pub use manifest::Manifest;
