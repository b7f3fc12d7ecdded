//! Content identifiers: 32-byte blake3 hashes with a hex form for humans.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The blake3 hash of `bytes`.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Full lowercase hex (64 characters).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 12 hex characters: enough to tell ids apart in a listing.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let bytes = hex::decode(s).map_err(|_| IdParseError)?;
                let arr: [u8; 32] = bytes.try_into().map_err(|_| IdParseError)?;
                Ok(Self(arr))
            }
        }
    };
}

hash_id!(
    /// Identifies a job: blake3 of the postcard encoding of its `JobSpec`.
    JobId
);
hash_id!(
    /// Identifies a blob (a scene, a rendered frame): blake3 of its postcard `Manifest`.
    BlobId
);
hash_id!(
    /// Identifies one content-defined chunk: blake3 of its bytes.
    ChunkId
);

/// A hex id that did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id: expected 64 hex characters")]
pub struct IdParseError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = JobId::of(b"hello");
        let parsed: JobId = id.to_hex().parse().unwrap();
        assert_eq!(id, parsed);
        assert_eq!(id.short().len(), 12);
        assert!("xyz".parse::<JobId>().is_err());
        assert!("abcd".parse::<JobId>().is_err());
    }
}
