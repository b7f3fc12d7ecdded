//! Every message meshd peers exchange. See `docs/protocol.md` for the prose version.
//!
//! All messages are postcard. Enums are append-only (postcard encodes the variant index), and
//! every gossip envelope carries [`WIRE_VERSION`] and its author's signature. Decoders never trust a length: request and
//! response sizes are bounded by the codec, gossip by gossipsub's `max_transmit_size`.

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::ids::{BlobId, ChunkId, JobId};
use crate::ledger::JobControl;
use crate::ledger::sign::{self, Sig};
use crate::ledger::{FrameUpdate, JobSpec};
use crate::render::DeviceInfo;

/// Version of the gossip envelope and the request/response bodies.
pub const WIRE_VERSION: u16 = 9;

/// Most projects one heartbeat announces.
pub const MAX_HAVE_PROJECTS: usize = 64;

/// Largest gossip message we publish or accept.
pub const MAX_GOSSIP_BYTES: usize = 256 * 1024;

/// Gossip topics of one mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Job announcements ([`GossipMsg::Job`]).
    Jobs,
    /// Frame claims, results and failures ([`GossipMsg::Frames`]).
    Claims,
    /// Heartbeats ([`GossipMsg::Heartbeat`]).
    Peers,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Jobs, Topic::Claims, Topic::Peers];

    /// Topic string, scoped to the mesh so that two meshes never share a topic.
    pub fn name(self, mesh_id: &str) -> String {
        let t = match self {
            Topic::Jobs => "jobs",
            Topic::Claims => "claims",
            Topic::Peers => "peers",
        };
        format!("/meshd/{mesh_id}/{t}/1")
    }
}

/// What travels on a gossip topic: a [`GossipMsg`] signed by its author.
///
/// Gossipsub itself runs anonymous: its messages carry no author, sequence number or
/// signature of their own. Its signature would be checked on every copy a peer receives,
/// before duplicates are dropped, so several times per message; this one is checked once
/// per message, after gossipsub dropped the copies (`net::node`). The author is the peer
/// the daemon holds to account for the message, whoever relayed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub author: PeerId,
    /// The author's signature of `version` and `body` ([`sign::sign_gossip`]).
    pub sig: Sig,
    /// The postcard-encoded [`GossipMsg`].
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// A job was submitted (or is re-announced). Boxed: a spec is large (postcard encodes
    /// a box as its content).
    Job(Box<JobSpec>),
    /// Frame-state deltas: claims, results, failures. Joined into the ledger.
    Frames(Vec<FrameUpdate>),
    /// A peer is alive; what it can do.
    Heartbeat(Heartbeat),
    /// The submitter paused, resumed or cancelled a job, or changed its priority.
    Control(JobId, JobControl),
}

impl GossipMsg {
    pub fn topic(&self) -> Topic {
        match self {
            GossipMsg::Job(_) => Topic::Jobs,
            GossipMsg::Frames(_) => Topic::Claims,
            GossipMsg::Heartbeat(_) => Topic::Peers,
            GossipMsg::Control(..) => Topic::Jobs,
        }
    }

    /// Encodes the message and signs it as `key`'s peer.
    pub fn seal(&self, key: &Keypair) -> Vec<u8> {
        let body = postcard::to_stdvec(self).unwrap_or_default();
        let env = Envelope {
            version: WIRE_VERSION,
            author: key.public().to_peer_id(),
            sig: sign::sign_gossip(key, WIRE_VERSION, &body),
            body,
        };
        postcard::to_stdvec(&env).unwrap_or_default()
    }

    /// Opens a gossip payload from a peer: checks its size, version and its author's
    /// signature, then decodes and checks the message. Returns the author and the message.
    pub fn open(bytes: &[u8]) -> Result<(PeerId, GossipMsg), String> {
        if bytes.len() > MAX_GOSSIP_BYTES {
            return Err("oversized gossip message".into());
        }
        let env: Envelope = postcard::from_bytes(bytes).map_err(|e| format!("undecodable: {e}"))?;
        if env.version != WIRE_VERSION {
            return Err(format!("unsupported wire version {}", env.version));
        }
        sign::verify_gossip(&env.author, env.version, &env.body, &env.sig)
            .map_err(|e| e.to_string())?;
        Ok((env.author, Self::decode_body(&env.body)?))
    }

    /// Decodes and checks the body of an envelope.
    pub fn decode_body(bytes: &[u8]) -> Result<GossipMsg, String> {
        let msg: GossipMsg =
            postcard::from_bytes(bytes).map_err(|e| format!("undecodable: {e}"))?;
        match &msg {
            GossipMsg::Job(spec) => spec.validate()?,
            GossipMsg::Frames(updates) => {
                for u in updates {
                    u.state.validate()?;
                }
            }
            GossipMsg::Heartbeat(hb) => hb.validate()?,
            GossipMsg::Control(..) => {}
        }
        Ok(msg)
    }
}

/// Sent on [`Topic::Peers`] every few seconds. Leases are judged by the local time at which a
/// peer's latest heartbeat arrived, never by a timestamp inside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Increases with every heartbeat (keeps gossip message ids distinct).
    pub seq: u64,
    /// The sender's start counter: claims of an older incarnation are dead.
    pub incarnation: u64,
    /// Whether the sender has a working Blender and takes frames.
    pub can_render: bool,
    /// Blender version, e.g. "3.4.1".
    pub blender: Option<String>,
    pub devices: Vec<DeviceInfo>,
    /// The device kind this peer renders with.
    pub render_device: Option<String>,
    /// Frames being rendered right now, with their progress.
    pub rendering: Vec<InFlight>,
    /// Where the sender listens (peer exchange: every peer learns how to reach every other).
    pub addrs: Vec<String>,
    /// Projects the sender holds, whole or in part (have-announcements): fetchers ask these
    /// peers first, so a project spreads from every peer that has pieces of it.
    pub projects: Vec<HaveProject>,
    /// The sender will render but is still probing its Blender (just started): it counts as
    /// a renderer that may take the job, so a job is not declared failed meanwhile.
    pub probing: bool,
    /// Frames the sender renders at once (0: it does not render). Its open claims are
    /// bounded by this: a peer holding far more is flooding and is disconnected.
    pub slots: u32,
}

/// One project a peer holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaveProject {
    /// The job's project manifest blob.
    pub project: BlobId,
    /// Every file is here (else: still fetching, some chunks are).
    pub complete: bool,
}

/// A frame a peer is rendering, as its heartbeat reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub job: JobId,
    pub frame: u32,
    /// Samples done and total (Cycles `Sample a/b`, Eevee `Rendering a / b samples`);
    /// 0/0 while Blender prepares the scene.
    pub current: u32,
    pub total: u32,
    /// Milliseconds since this render started, when the heartbeat was sent.
    pub elapsed_ms: u64,
}

impl Heartbeat {
    fn validate(&self) -> Result<(), String> {
        if self.devices.len() > 64
            || self.rendering.len() > 64
            || self.addrs.len() > 16
            || self.projects.len() > MAX_HAVE_PROJECTS
        {
            return Err("heartbeat too large".into());
        }
        Ok(())
    }
}

/// `/meshd/sync/1` request: "here is what I have, send me what I lack".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub version: u16,
    /// Per active job, the digest of the requester's frame states.
    pub digests: Vec<(JobId, [u8; 32])>,
    /// Per job of more than one bucket of frames, the digest of each non-empty bucket
    /// (`ledger::digest`): the responder sends only the buckets that differ.
    pub buckets: Vec<(JobId, BucketDigests)>,
    /// Continue a paged answer from here (the `next` of the previous one).
    pub cursor: Option<(JobId, u32)>,
}

/// A job's bucket digests: `(bucket, digest)` for each non-empty bucket.
pub type BucketDigests = Vec<(u32, [u8; 32])>;

/// `/meshd/sync/1` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncResponse {
    pub version: u16,
    /// Jobs the requester did not list.
    pub jobs: Vec<JobSpec>,
    /// The non-empty frame states of each job whose digest differs (or was missing): of
    /// the buckets that differ, when the requester sent bucket digests.
    pub updates: Vec<FrameUpdate>,
    /// The control of each such job that its submitter changed, and of each job the
    /// requester listed that the responder has archived.
    pub controls: Vec<(JobId, JobControl)>,
    /// More to come: ask again with this cursor.
    pub next: Option<(JobId, u32)>,
    /// Peer exchange, in the first page only: peers the responder is connected to and where
    /// they listen (at most [`MAX_SYNC_PEERS`], [`MAX_PEER_ADDRS`] addresses each). A peer
    /// that joined through one other learns of the whole mesh at once.
    pub peers: Vec<KnownPeer>,
}

/// Most peers one sync answer names ([`SyncResponse::peers`]).
pub const MAX_SYNC_PEERS: usize = 64;
/// Most addresses given, and used, per peer named.
pub const MAX_PEER_ADDRS: usize = 4;

/// A peer and where it listens (multiaddrs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnownPeer {
    pub peer: PeerId,
    pub addrs: Vec<String>,
}

/// `/meshd/blob/3` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// The postcard-encoded manifest of a blob.
    Manifest(BlobId),
    /// One chunk's bytes.
    Chunk(ChunkId),
    /// A project manifest's blob together with what fetching its files needs first
    /// ([`BlobResponse::Project`]).
    Project(BlobId),
}

/// `/meshd/blob/3` response. The requester verifies every byte against the hash it asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    Manifest(Vec<u8>),
    Chunk(Vec<u8>),
    NotFound,
    /// One chunk's bytes as one zstd frame: sent instead of [`BlobResponse::Chunk`] when
    /// that saves at least [`MIN_ZSTD_SAVING`] of them (see [`BlobResponse::chunk`]).
    ChunkZstd(Vec<u8>),
    /// The answer to [`BlobRequest::Project`].
    Project(ProjectAnswer),
}

/// A project manifest's blob and the manifests of its files, in one answer: a renderer
/// starts fetching the files' chunks after one round trip rather than three (the blob's
/// manifest, its content, the files' manifests). The requester checks every part against
/// the hash it must have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectAnswer {
    /// The blob's manifest, as in [`BlobResponse::Manifest`].
    pub manifest: Vec<u8>,
    /// The blob's content (the encoded project manifest), when it is at most
    /// [`PROJECT_INLINE_BYTES`].
    pub content: Option<Vec<u8>>,
    /// The manifests of the project's files that the responder has, the scene's first, as
    /// many as fit in [`PROJECT_FILES_BYTES`].
    pub files: Vec<Vec<u8>>,
    /// A small project's files whole: every chunk of every file, each once, as a chunk
    /// request would get it. Sent only when `files` holds every file's manifest, the files
    /// total at most [`PROJECT_CHUNKS_TOTAL`] bytes and their chunks as sent at most
    /// [`PROJECT_CHUNKS_BYTES`]; empty otherwise.
    pub chunks: Vec<SentChunk>,
}

/// A chunk's bytes inside a [`ProjectAnswer`], as [`BlobResponse::Chunk`] or
/// [`BlobResponse::ChunkZstd`] would carry them. A type of its own, not a `BlobResponse`:
/// a response that could hold responses could nest deep enough to overflow the decoder's
/// stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SentChunk {
    Raw(Vec<u8>),
    /// One zstd frame.
    Zstd(Vec<u8>),
}

impl SentChunk {
    /// The chunk of a chunk answer, `None` for any other answer.
    pub fn of(answer: BlobResponse) -> Option<SentChunk> {
        match answer {
            BlobResponse::Chunk(b) => Some(SentChunk::Raw(b)),
            BlobResponse::ChunkZstd(z) => Some(SentChunk::Zstd(z)),
            BlobResponse::Manifest(_) | BlobResponse::NotFound | BlobResponse::Project(_) => None,
        }
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        match self {
            SentChunk::Raw(b) | SentChunk::Zstd(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk's bytes, decompressed into at most `max_len` bytes (as
    /// [`BlobResponse::into_chunk`]).
    pub fn into_bytes(self, max_len: usize) -> Result<Vec<u8>, BadChunk> {
        match self {
            SentChunk::Raw(b) => Ok(b),
            SentChunk::Zstd(z) => {
                zstd::bulk::decompress(&z, max_len).map_err(|e| BadChunk(e.to_string()))
            }
        }
    }
}

/// Largest project manifest sent inline in a [`ProjectAnswer`].
pub const PROJECT_INLINE_BYTES: u64 = 1 << 20;
/// Bytes of file manifests one [`ProjectAnswer`] carries at most.
pub const PROJECT_FILES_BYTES: usize = 1 << 20;
/// Bytes of chunks (as sent, compressed where that pays) one [`ProjectAnswer`] carries at
/// most. Every renderer gets them from the peer it asks (the submitter, at a job's start),
/// so this bounds what a small project costs that peer's uplink per renderer: about a
/// round trip's worth on a slow link, in exchange for the two or three round trips the
/// files' chunks would take (a typical 1 MB `.blend` travels as 120 KB).
pub const PROJECT_CHUNKS_BYTES: usize = 256 << 10;
/// Largest project (its files' sizes summed) whose chunks a [`ProjectAnswer`] may carry: the
/// requester ignores them for a bigger one, so an answer cannot make it hold more.
pub const PROJECT_CHUNKS_TOTAL: u64 = 4 << 20;

/// zstd level for chunks on the wire: level 1 compresses about 1 GB/s on one core, and an
/// uncompressed `.blend` (Blender's default) to about an eighth.
const ZSTD_LEVEL: i32 = 1;
/// Least fraction of a chunk's bytes compression must save for it to be sent compressed:
/// images, compressed `.blend`s and caches do not shrink, and are sent as they are.
pub const MIN_ZSTD_SAVING: f64 = 1.0 / 16.0;

/// A chunk answer that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad compressed chunk: {0}")]
pub struct BadChunk(String);

impl BlobResponse {
    /// The answer carrying chunk `bytes`: compressed when that saves enough
    /// ([`MIN_ZSTD_SAVING`]), as they are otherwise.
    pub fn chunk(bytes: Vec<u8>) -> BlobResponse {
        let limit = bytes.len() - (bytes.len() as f64 * MIN_ZSTD_SAVING) as usize;
        match zstd::bulk::compress(&bytes, ZSTD_LEVEL) {
            Ok(z) if z.len() < limit => BlobResponse::ChunkZstd(z),
            _ => BlobResponse::Chunk(bytes),
        }
    }

    /// The chunk bytes of a chunk answer (decompressed when need be), `None` for any other
    /// answer. A compressed chunk that is not one zstd frame of at most `max_len` bytes is
    /// an error: a peer cannot make the requester decompress more than it asked for.
    pub fn into_chunk(self, max_len: usize) -> Result<Option<Vec<u8>>, BadChunk> {
        match self {
            BlobResponse::Chunk(bytes) => Ok(Some(bytes)),
            BlobResponse::ChunkZstd(z) => zstd::bulk::decompress(&z, max_len)
                .map(Some)
                .map_err(|e| BadChunk(e.to_string())),
            BlobResponse::Manifest(_) | BlobResponse::NotFound | BlobResponse::Project(_) => {
                Ok(None)
            }
        }
    }
}

/// `/meshd/logs/1` request: the Blender log of the renderer's last attempt at a frame
/// (`meshd logs JOB FRAME`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    pub job: JobId,
    pub frame: u32,
}

/// `/meshd/logs/1` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogResponse {
    /// The log of the last attempt, which has ended.
    Lines(Vec<String>),
    NotFound,
    /// The frame is being rendered there now: its lines so far.
    Live(Vec<String>),
}

/// Most peers one key rotation can exclude.
pub const MAX_EXCLUDED: usize = 256;

/// `/meshd/key/1` request: a member hands over a new mesh key (`meshd rotate-key`), over a
/// connection the old key already protects. The receiver switches (new connections need the
/// new key) and passes it on to its own peers, except the sender and the excluded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    pub version: u16,
    /// The mesh's id: a rotation for another mesh is refused.
    pub mesh: String,
    pub key: super::MeshKey,
    /// Peers that must not learn the key: receivers disconnect them.
    pub exclude: Vec<PeerId>,
}

/// `/meshd/key/1` response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRotationAck {
    /// The receiver uses the new key (or already did).
    Switched,
    /// Not taken, with why.
    Refused(String),
}

/// Who sent what, for events the node hands to the daemon.
#[derive(Clone, Debug)]
pub struct Gossip {
    pub source: PeerId,
    pub msg: GossipMsg,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ledger::{Claim, FrameState};

    /// Bytes like a `.blend`'s: runs of zeros between short varied records.
    fn compressible(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| if i % 64 < 48 { 0 } else { (i * 7 % 251) as u8 })
            .collect()
    }

    #[test]
    fn a_compressible_chunk_travels_compressed_and_comes_back_whole() {
        let bytes = compressible(256 << 10);
        let answer = BlobResponse::chunk(bytes.clone());
        let BlobResponse::ChunkZstd(z) = &answer else {
            panic!("sent uncompressed")
        };
        assert!(z.len() < bytes.len() / 4, "{} bytes", z.len());
        let wire = postcard::to_allocvec(&answer).unwrap();
        let back: BlobResponse = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back.into_chunk(bytes.len()).unwrap(), Some(bytes));
    }

    #[test]
    fn an_incompressible_chunk_travels_as_it_is() {
        let bytes = crate::transfer::manifest::noise(256 << 10, 0x2545_f491_4f6c_dd1d);
        assert_eq!(
            BlobResponse::chunk(bytes.clone()),
            BlobResponse::Chunk(bytes.clone())
        );
        assert_eq!(
            BlobResponse::chunk(Vec::new()),
            BlobResponse::Chunk(Vec::new())
        );
        let back = BlobResponse::Chunk(bytes.clone()).into_chunk(bytes.len());
        assert_eq!(back.unwrap(), Some(bytes));
    }

    #[test]
    fn a_compressed_chunk_larger_than_asked_or_not_zstd_is_refused() {
        // 1 MiB of zeros in a few dozen bytes: a peer cannot make us inflate more than the
        // chunk's length.
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 1).unwrap();
        assert!(bomb.len() < 1024);
        assert!(
            BlobResponse::ChunkZstd(bomb.clone())
                .into_chunk(1 << 20)
                .is_ok()
        );
        assert!(
            BlobResponse::ChunkZstd(bomb)
                .into_chunk((1 << 20) - 1)
                .is_err()
        );
        let junk = BlobResponse::ChunkZstd(b"not a zstd frame".to_vec());
        assert!(junk.into_chunk(1 << 20).is_err());
        assert_eq!(BlobResponse::NotFound.into_chunk(10), Ok(None));
    }

    fn key() -> Keypair {
        Keypair::ed25519_from_bytes([7; 32]).unwrap()
    }

    fn sample_messages() -> Vec<Vec<u8>> {
        let peer = key().public().to_peer_id();
        let update = FrameUpdate {
            job: JobId::of(b"job"),
            frame: 3,
            state: FrameState::from_claim(Claim {
                sig: Default::default(),
                peer,
                incarnation: 2,
                epoch: 1,
            }),
        };
        let hb = Heartbeat {
            seq: 1,
            incarnation: 2,
            can_render: true,
            blender: Some("3.4.1".into()),
            devices: vec![],
            render_device: Some("CPU".into()),
            rendering: vec![InFlight {
                job: JobId::of(b"job"),
                frame: 3,
                current: 1,
                total: 4,
                elapsed_ms: 1500,
            }],
            addrs: vec!["/ip4/127.0.0.1/tcp/4747".into()],
            projects: vec![HaveProject {
                project: crate::ids::BlobId::of(b"p"),
                complete: false,
            }],
            probing: false,
            slots: 1,
        };
        vec![
            GossipMsg::Frames(vec![update]).seal(&key()),
            GossipMsg::Heartbeat(hb).seal(&key()),
        ]
    }

    #[test]
    fn valid_messages_round_trip_with_their_author() {
        for bytes in sample_messages() {
            let (author, msg) = GossipMsg::open(&bytes).unwrap();
            assert_eq!(author, key().public().to_peer_id());
            assert_eq!(msg.seal(&key()), bytes);
        }
    }

    #[test]
    fn a_message_opens_only_with_its_authors_signature_over_its_body() {
        let bytes = &sample_messages()[1];
        let env: Envelope = postcard::from_bytes(bytes).unwrap();
        let reseal = |env: &Envelope| GossipMsg::open(&postcard::to_stdvec(env).unwrap());
        assert!(reseal(&env).is_ok());
        // Another peer named as the author: what a relay forging a message would send.
        let other = Keypair::ed25519_from_bytes([8; 32]).unwrap();
        let forged = Envelope {
            author: other.public().to_peer_id(),
            ..env.clone()
        };
        let err = reseal(&forged).unwrap_err();
        assert!(err.contains("bad signature"), "{err}");
        // The body changed after signing.
        let mut body = env.body.clone();
        body[3] ^= 1;
        let tampered = Envelope {
            body,
            ..env.clone()
        };
        assert!(reseal(&tampered).is_err());
        // The version changed after signing (signed too), or another version altogether.
        let mut older = env.clone();
        older.version -= 1;
        assert!(reseal(&older).unwrap_err().contains("wire version"));
        // Signed right, by the other peer: it is that peer's message.
        let body = env.body.clone();
        let theirs = Envelope {
            author: other.public().to_peer_id(),
            sig: sign::sign_gossip(&other, WIRE_VERSION, &body),
            ..env
        };
        assert_eq!(reseal(&theirs).unwrap().0, other.public().to_peer_id());
    }

    proptest! {
        /// Whatever a peer sends, decoding returns, never panics or allocates without bound.
        #[test]
        fn gossip_decoder_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = GossipMsg::open(&bytes);
            let _ = GossipMsg::decode_body(&bytes);
            let _ = postcard::from_bytes::<SyncRequest>(&bytes);
            let _ = postcard::from_bytes::<SyncResponse>(&bytes);
            let _ = postcard::from_bytes::<BlobRequest>(&bytes);
            let _ = postcard::from_bytes::<BlobResponse>(&bytes);
        }

        #[test]
        fn gossip_decoder_survives_mutations(which in 0usize..2, at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut bytes = sample_messages()[which].clone();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = GossipMsg::open(&bytes);
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = GossipMsg::open(&bytes);
        }
    }
}
