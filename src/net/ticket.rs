//! Invite tickets: one copy-pasteable string holding the mesh key and where to find the inviter.
//!
//! Format: `meshd1` followed by lowercase unpadded base32 of the postcard encoding of
//! [`Ticket`]. The key makes the ticket a secret: anyone holding it can join the mesh.
//! Version 2 adds the mesh id, which stays when the key is rotated (`meshd rotate-key`);
//! version 1 tickets (no id: the id of their key) are still read.

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "meshd1";
const TICKET_VERSION: u16 = 2;
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
    /// The id of a mesh founded with this key. A mesh keeps its id when its key is
    /// rotated, so this is the mesh's id only for its first key.
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
/// The mesh key new connections use. `meshd rotate-key` swaps it while the swarm runs:
/// connections made with the old key stay up, new ones need the new key.
#[derive(Clone)]
pub struct CurrentKey(std::sync::Arc<std::sync::RwLock<MeshKey>>);

impl CurrentKey {
    pub fn new(key: MeshKey) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(key)))
    }

    pub fn get(&self) -> MeshKey {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, key: MeshKey) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub version: u16,
    pub key: MeshKey,
    /// Dialable addresses of the inviter, each ending in `/p2p/<peer id>`.
    pub addrs: Vec<String>,
    /// The mesh's id (16 hex digits), which names its gossip topics.
    pub mesh: String,
}

/// A version 1 ticket, without the mesh id.
#[derive(Deserialize)]
struct TicketV1 {
    version: u16,
    key: MeshKey,
    addrs: Vec<String>,
}

/// Whether `s` looks like a mesh id: 16 lowercase hex digits.
pub fn is_mesh_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
    pub fn new(key: MeshKey, mesh: &str, addrs: &[Multiaddr]) -> Self {
        Self {
            version: TICKET_VERSION,
            key,
            mesh: mesh.to_string(),
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
        let (version, _) =
            postcard::take_from_bytes::<u16>(&bytes).map_err(|_| TicketError::Encoding)?;
        let t = match version {
            1 => {
                let v1: TicketV1 =
                    postcard::from_bytes(&bytes).map_err(|_| TicketError::Encoding)?;
                Ticket {
                    version: v1.version,
                    mesh: v1.key.mesh_id(),
                    key: v1.key,
                    addrs: v1.addrs,
                }
            }
            TICKET_VERSION => {
                let t: Ticket = postcard::from_bytes(&bytes).map_err(|_| TicketError::Encoding)?;
                if !is_mesh_id(&t.mesh) {
                    return Err(TicketError::Encoding);
                }
                t
            }
            v => return Err(TicketError::Version(v)),
        };
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
        let t = Ticket::new(key, &key.mesh_id(), &[addr]);
        let s = t.encode();
        assert!(s.starts_with("meshd1"));
        assert_eq!(Ticket::decode(&s).unwrap(), t);
        assert_eq!(Ticket::decode(&format!("  {s}\n")).unwrap(), t);
    }

    /// Tickets printed by meshd before key rotation existed still work: the mesh id is
    /// their key's.
    #[test]
    fn version_1_tickets_are_read() {
        #[derive(Serialize)]
        struct V1 {
            version: u16,
            key: MeshKey,
            addrs: Vec<String>,
        }
        let key = MeshKey([7; 32]);
        let bytes = postcard::to_stdvec(&V1 {
            version: 1,
            key,
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        })
        .unwrap();
        let s = format!(
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        );
        let t = Ticket::decode(&s).unwrap();
        assert_eq!((t.key, t.mesh.as_str()), (key, key.mesh_id().as_str()));
        let bad_id = Ticket {
            version: TICKET_VERSION,
            mesh: "not hex".into(),
            ..t
        };
        assert_eq!(Ticket::decode(&bad_id.encode()), Err(TicketError::Encoding));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Ticket::decode("hello"), Err(TicketError::Prefix));
        assert_eq!(Ticket::decode("meshd1!!!"), Err(TicketError::Encoding));
        let key = MeshKey::generate();
        let t = Ticket::new(
            key,
            &key.mesh_id(),
            &["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
        );
        let s = t.encode();
        assert_eq!(
            Ticket::decode(&s[..s.len() - 9]),
            Err(TicketError::Encoding)
        );
        let empty = Ticket { addrs: vec![], ..t };
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
