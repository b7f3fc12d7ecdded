//! Invite tickets: one copy-pasteable string holding the mesh key and where to find the inviter.
//!
//! Format: `meshd1` followed by lowercase unpadded base32 of the postcard encoding of
//! [`Ticket`]. The key makes the ticket a secret: anyone holding it can join the mesh.

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "meshd1";
const TICKET_VERSION: u16 = 1;
/// Upper bound on how many addresses a ticket carries (and on what we accept).
const MAX_ADDRS: usize = 32;

/// The 32-byte pre-shared key of a mesh (libp2p pnet).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshKey(pub [u8; 32]);

impl MeshKey {
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// A short public name for the mesh, safe to log and to use in topic names.
    pub fn mesh_id(&self) -> String {
        let h = blake3::derive_key("meshd mesh id v1", &self.0);
        hex::encode(&h[..8])
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshKey(id {})", self.mesh_id())
    }
}

/// What an invite carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub version: u16,
    pub key: MeshKey,
    /// Dialable addresses of the inviter, each ending in `/p2p/<peer id>`.
    pub addrs: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error(
        "not a meshd ticket: it must start with '{PREFIX}' (copy the whole line `meshd invite` printed)"
    )]
    Prefix,
    #[error("the ticket is damaged (bad characters or cut short): copy the whole line again")]
    Encoding,
    #[error("ticket version {0} is not supported by this meshd: upgrade meshd")]
    Version(u16),
    #[error("the ticket holds no usable address: run `meshd invite` on a running daemon")]
    NoAddress,
}

impl Ticket {
    pub fn new(key: MeshKey, addrs: &[Multiaddr]) -> Self {
        Self {
            version: TICKET_VERSION,
            key,
            addrs: addrs
                .iter()
                .take(MAX_ADDRS)
                .map(|a| a.to_string())
                .collect(),
        }
    }

    pub fn encode(&self) -> String {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        let b32 = data_encoding::BASE32_NOPAD
            .encode(&bytes)
            .to_ascii_lowercase();
        format!("{PREFIX}{b32}")
    }

    pub fn decode(s: &str) -> Result<Self, TicketError> {
        let s = s.trim();
        let body = s.strip_prefix(PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Encoding)?;
        let t: Ticket = postcard::from_bytes(&bytes).map_err(|_| TicketError::Encoding)?;
        if t.version != TICKET_VERSION {
            return Err(TicketError::Version(t.version));
        }
        if t.addrs.is_empty() || t.addrs.len() > MAX_ADDRS {
            return Err(TicketError::NoAddress);
        }
        if t.multiaddrs().is_empty() {
            return Err(TicketError::NoAddress);
        }
        Ok(t)
    }

    /// The addresses that parse as multiaddrs.
    pub fn multiaddrs(&self) -> Vec<Multiaddr> {
        self.addrs.iter().filter_map(|a| a.parse().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = MeshKey::generate();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let t = Ticket::new(key, &[addr]);
        let s = t.encode();
        assert!(s.starts_with("meshd1"));
        assert_eq!(Ticket::decode(&s).unwrap(), t);
        assert_eq!(Ticket::decode(&format!("  {s}\n")).unwrap(), t);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Ticket::decode("hello"), Err(TicketError::Prefix));
        assert_eq!(Ticket::decode("meshd1!!!"), Err(TicketError::Encoding));
        let t = Ticket::new(
            MeshKey::generate(),
            &["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
        );
        let s = t.encode();
        assert_eq!(
            Ticket::decode(&s[..s.len() - 9]),
            Err(TicketError::Encoding)
        );
        let empty = Ticket {
            version: 1,
            key: MeshKey::generate(),
            addrs: vec![],
        };
        assert_eq!(Ticket::decode(&empty.encode()), Err(TicketError::NoAddress));
    }

    #[test]
    fn mesh_id_is_stable_and_distinct() {
        let a = MeshKey([1; 32]);
        let b = MeshKey([2; 32]);
        assert_eq!(a.mesh_id(), MeshKey([1; 32]).mesh_id());
        assert_ne!(a.mesh_id(), b.mesh_id());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn ticket_decoder_survives_garbage(s in "meshd1[a-z2-7]{0,200}") {
            let _ = Ticket::decode(&s);
        }

        #[test]
        fn ticket_decoder_survives_any_text(s in ".{0,300}") {
            let _ = Ticket::decode(&s);
        }
    }
}
