//! Moving projects and results between peers: content-defined chunking ([`manifest`]),
//! project manifests ([`project`]), verified multi-peer fetching ([`fetch`]), the one answer
//! that starts a project's fetch ([`answer`]) and a renderer's copy of a project
//! ([`checkout`]).

pub mod answer;
pub mod checkout;
pub mod fetch;
pub mod manifest;
pub mod project;

pub use fetch::{FetchCtx, FetchError, FetchStats, Holders, fetch};
pub use manifest::Manifest;
