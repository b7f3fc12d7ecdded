//! Signed ledger entries: who may say what about a frame or a job.
//!
//! Every entry names a peer, and a PeerId of meshd is an ed25519 public key (the identity
//! multihash of it), so an entry can carry its author's signature and anyone can check it
//! without asking anybody:
//!
//! | entry | signed by | over |
//! |---|---|---|
//! | [`Claim`] | its `peer` | `"meshd/claim/1" ‖ job ‖ frame ‖ epoch ‖ incarnation` |
//! | [`Done`] | its `peer` | `"meshd/done/1" ‖ job ‖ frame ‖ epoch ‖ incarnation ‖ output ‖ render_ms [‖ thumb]` |
//! | | and it carries `claim_sig`: the same peer's claim at that epoch and incarnation | |
//! | [`Failure`] | its `peer` | `"meshd/failure/1" ‖ job ‖ frame ‖ epoch ‖ reason` |
//! | [`Lost`] | the job's submitter | `"meshd/lost/1" ‖ job ‖ frame ‖ epoch ‖ peer ‖ unusable` |
//! | [`JobSpec`] | its `submitter` | `"meshd/job/1" ‖ job id` |
//! | [`JobControl`] | the job's submitter | `"meshd/control/1" ‖ job ‖ seq ‖ run ‖ priority` |
//! | a gossip message (`net::wire::Envelope`) | its author | `"meshd/gossip/1" ‖ version ‖ body` |
//!
//! Integers are little-endian, ids their 32 bytes, `peer` its multihash bytes, `reason` its
//! UTF-8 bytes. Epochs start at 1: a claim, result or failure at epoch 0 is invalid (no
//! honest peer makes one, and epoch 0 would sort before every honest result).
//!
//! The CRDT ([`super::frame`]) is oblivious of signatures: [`verify_news`] is checked
//! before a state is joined, for the entries the local state does not hold yet, so a
//! signature is checked once per peer however often an entry is resent.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::control::{JobControl, RunState};
use super::frame::{Claim, Done, Failure, FrameState, Lost};
use super::job::JobSpec;
use crate::ids::{BlobId, JobId};

/// An ed25519 signature. Encoded as 64 raw bytes (no length prefix). The default, all
/// zeros, is no valid signature of anything.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sig(pub [u8; 64]);

impl Default for Sig {
    fn default() -> Self {
        Sig([0; 64])
    }
}

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({}…)", hex::encode(&self.0[..4]))
    }
}

impl Serialize for Sig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Sig, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Sig(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

/// Why an entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{what} at epoch 0 (epochs start at 1)")]
    EpochZero { what: &'static str },
    #[error("{what} with a bad signature of {peer}")]
    BadSignature { what: &'static str, peer: PeerId },
    #[error("{what} signed by {peer}, whose id is no ed25519 key")]
    NoKey { what: &'static str, peer: PeerId },
}

/// The public key inside an ed25519 PeerId (its identity multihash), cached: decoding
/// one decompresses a curve point.
fn public_key(peer: &PeerId) -> Option<PublicKey> {
    const CAP: usize = 4096;
    static KEYS: OnceLock<Mutex<HashMap<PeerId, Option<PublicKey>>>> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    if let Ok(cache) = keys.lock()
        && let Some(k) = cache.get(peer)
    {
        return k.clone();
    }
    // An identity multihash: code 0, the length (one varint byte for a key this short),
    // then the protobuf-encoded public key.
    let bytes = peer.to_bytes();
    let key = match bytes.as_slice() {
        [0, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => {
            PublicKey::try_decode_protobuf(rest).ok()
        }
        _ => None,
    };
    if let Ok(mut cache) = keys.lock() {
        if cache.len() >= CAP {
            cache.clear();
        }
        cache.insert(*peer, key.clone());
    }
    key
}

fn check(what: &'static str, peer: &PeerId, msg: &[u8], sig: &Sig) -> Result<(), Invalid> {
    let key = public_key(peer).ok_or(Invalid::NoKey { what, peer: *peer })?;
    if key.verify(msg, &sig.0) {
        Ok(())
    } else {
        Err(Invalid::BadSignature { what, peer: *peer })
    }
}

fn sign(key: &Keypair, msg: &[u8]) -> Sig {
    // ed25519 signing cannot fail; another key type gives the (invalid) zero signature.
    let bytes = key.sign(msg).unwrap_or_default();
    Sig(bytes.try_into().unwrap_or([0; 64]))
}

fn head(tag: &str, job: &JobId, frame: u32, epoch: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(tag.as_bytes());
    m.extend_from_slice(job.as_bytes());
    m.extend_from_slice(&frame.to_le_bytes());
    m.extend_from_slice(&epoch.to_le_bytes());
    m
}

fn claim_msg(job: &JobId, frame: u32, epoch: u32, incarnation: u64) -> Vec<u8> {
    let mut m = head("meshd/claim/1", job, frame, epoch);
    m.extend_from_slice(&incarnation.to_le_bytes());
    m
}

fn done_msg(job: &JobId, frame: u32, d: &Done) -> Vec<u8> {
    let mut m = head("meshd/done/1", job, frame, d.epoch);
    m.extend_from_slice(&d.incarnation.to_le_bytes());
    m.extend_from_slice(d.output.as_bytes());
    m.extend_from_slice(&d.render_ms.to_le_bytes());
    // Results made before thumbnails sign exactly the fields above: their signatures
    // (kept in older data dirs) stay valid. Every field is of fixed length, so a message
    // with a thumbnail is never one without.
    if let Some(t) = &d.thumb {
        m.extend_from_slice(t.as_bytes());
    }
    m
}

fn failure_msg(job: &JobId, frame: u32, f: &Failure) -> Vec<u8> {
    let mut m = head("meshd/failure/1", job, frame, f.epoch);
    m.extend_from_slice(f.reason.as_bytes());
    m
}

fn lost_msg(job: &JobId, frame: u32, l: &Lost) -> Vec<u8> {
    let mut m = head("meshd/lost/1", job, frame, l.epoch);
    m.extend_from_slice(&l.peer.to_bytes());
    m.push(u8::from(l.unusable));
    m
}

fn job_msg(id: &JobId) -> Vec<u8> {
    [b"meshd/job/1".as_slice(), id.as_bytes()].concat()
}

fn control_msg(job: &JobId, c: &JobControl) -> Vec<u8> {
    let mut m = b"meshd/control/1".to_vec();
    m.extend_from_slice(job.as_bytes());
    m.extend_from_slice(&c.seq.to_le_bytes());
    m.push(match c.run {
        RunState::Active => 0,
        RunState::Paused => 1,
        RunState::Cancelled => 2,
        RunState::Archived => 3,
    });
    m.extend_from_slice(&c.priority.to_le_bytes());
    m
}

/// `key`'s claim on `frame` of `job`.
pub fn claim(key: &Keypair, job: &JobId, frame: u32, incarnation: u64, epoch: u32) -> Claim {
    Claim {
        peer: key.public().to_peer_id(),
        incarnation,
        epoch,
        sig: sign(key, &claim_msg(job, frame, epoch, incarnation)),
    }
}

/// What a renderer signs about its frame in a [`Done`].
#[derive(Clone, Copy, Debug)]
pub struct Rendered {
    pub output: BlobId,
    pub thumb: Option<BlobId>,
    pub render_ms: u64,
}

/// `key`'s result for `frame` of `job`, rendered by its `incarnation` under its claim at
/// `epoch` (or, for a backup render, under the holder's epoch, which `key` signs a claim
/// for here without publishing it).
pub fn done(
    key: &Keypair,
    job: &JobId,
    frame: u32,
    incarnation: u64,
    epoch: u32,
    r: Rendered,
) -> Done {
    let mut d = Done {
        epoch,
        peer: key.public().to_peer_id(),
        output: r.output,
        render_ms: r.render_ms,
        thumb: r.thumb,
        incarnation,
        claim_sig: sign(key, &claim_msg(job, frame, epoch, incarnation)),
        sig: Sig::default(),
    };
    d.sig = sign(key, &done_msg(job, frame, &d));
    d
}

/// `key`'s failed attempt at `frame` of `job` under its claim at `epoch`.
pub fn failure(key: &Keypair, job: &JobId, frame: u32, epoch: u32, reason: String) -> Failure {
    let mut f = Failure {
        epoch,
        peer: key.public().to_peer_id(),
        reason,
        sig: Sig::default(),
    };
    f.sig = sign(key, &failure_msg(job, frame, &f));
    f
}

/// The submitter `key` declares result `of` lost (`unusable`: its bytes are no frame).
pub fn lost(key: &Keypair, job: &JobId, frame: u32, of: &Done, unusable: bool) -> Lost {
    let mut l = Lost {
        epoch: of.epoch,
        peer: of.peer,
        unusable,
        sig: Sig::default(),
    };
    l.sig = sign(key, &lost_msg(job, frame, &l));
    l
}

/// Signs a job spec as its submitter (`spec.submitter` must be `key`'s peer).
pub fn sign_job(key: &Keypair, spec: &mut JobSpec) {
    spec.sig = sign(key, &job_msg(&spec.id()));
}

/// Checks a job spec's signature by its submitter.
pub fn verify_job(spec: &JobSpec) -> Result<(), Invalid> {
    check("job", &spec.submitter, &job_msg(&spec.id()), &spec.sig)
}

/// Signs a control change of `job` as its submitter.
pub fn sign_control(key: &Keypair, job: &JobId, control: &mut JobControl) {
    control.sig = sign(key, &control_msg(job, control));
}

/// Checks a control change of `job` against the job's `submitter`.
pub fn verify_control(job: &JobId, submitter: &PeerId, c: &JobControl) -> Result<(), Invalid> {
    check("job control", submitter, &control_msg(job, c), &c.sig)
}

fn gossip_msg(version: u16, body: &[u8]) -> Vec<u8> {
    [b"meshd/gossip/1".as_slice(), &version.to_le_bytes(), body].concat()
}

/// Signs a gossip message's encoded `body` as its author.
pub fn sign_gossip(key: &Keypair, version: u16, body: &[u8]) -> Sig {
    sign(key, &gossip_msg(version, body))
}

/// Checks a gossip message's signature by the `author` it names.
pub fn verify_gossip(author: &PeerId, version: u16, body: &[u8], sig: &Sig) -> Result<(), Invalid> {
    check("gossip message", author, &gossip_msg(version, body), sig)
}

fn verify_claim(job: &JobId, frame: u32, c: &Claim) -> Result<(), Invalid> {
    if c.epoch == 0 {
        return Err(Invalid::EpochZero { what: "claim" });
    }
    let msg = claim_msg(job, frame, c.epoch, c.incarnation);
    check("claim", &c.peer, &msg, &c.sig)
}

fn verify_done(job: &JobId, frame: u32, d: &Done, known: Option<&Claim>) -> Result<(), Invalid> {
    if d.epoch == 0 {
        return Err(Invalid::EpochZero { what: "result" });
    }
    check("result", &d.peer, &done_msg(job, frame, d), &d.sig)?;
    // The claim it follows: already checked when it is the frame's (verified) claim.
    let same = known.is_some_and(|c| {
        c.peer == d.peer
            && c.epoch == d.epoch
            && c.incarnation == d.incarnation
            && c.sig == d.claim_sig
    });
    if same {
        return Ok(());
    }
    let msg = claim_msg(job, frame, d.epoch, d.incarnation);
    check("result's claim", &d.peer, &msg, &d.claim_sig)
}

/// Checks every entry of `delta` that `known` (the verified local state of the frame, if
/// any) does not hold: signatures by the peers they name (lost results by `submitter`),
/// epochs from 1. The first invalid entry is the error.
pub fn verify_news(
    job: &JobId,
    frame: u32,
    known: Option<&FrameState>,
    delta: &FrameState,
    submitter: &PeerId,
) -> Result<(), Invalid> {
    let known_claim = known.and_then(|k| k.claim.as_ref());
    if let Some(c) = &delta.claim
        && known_claim != Some(c)
    {
        verify_claim(job, frame, c)?;
    }
    let claim = delta.claim.as_ref().or(known_claim);
    for d in &delta.done {
        if !known.is_some_and(|k| k.done.contains(d)) {
            verify_done(job, frame, d, claim)?;
        }
    }
    for f in &delta.failures {
        if !known.is_some_and(|k| k.failures.contains(f)) {
            if f.epoch == 0 {
                return Err(Invalid::EpochZero { what: "failure" });
            }
            check("failure", &f.peer, &failure_msg(job, frame, f), &f.sig)?;
        }
    }
    for l in &delta.lost {
        if !known.is_some_and(|k| k.lost.contains(l)) {
            check("lost result", submitter, &lost_msg(job, frame, l), &l.sig)?;
        }
    }
    Ok(())
}

/// Checks every frame update of a sync answer off the daemon's loop, before any of it is
/// joined: `submitters` names the submitter of each job the updates may be about (the
/// jobs known locally, and those in the answer, whose own signatures are checked here).
/// Returns the updates whose entries all verify (updates of jobs of unknown submitter are
/// dropped: a later round brings them with their job) and the first forgery found.
pub fn verify_page(
    updates: Vec<super::FrameUpdate>,
    jobs: &[JobSpec],
    mut submitters: HashMap<JobId, PeerId>,
) -> (Vec<super::FrameUpdate>, Option<Invalid>) {
    let mut forged = None;
    for spec in jobs {
        match verify_job(spec) {
            Ok(()) => {
                submitters.entry(spec.id()).or_insert(spec.submitter);
            }
            Err(e) => {
                forged.get_or_insert(e);
            }
        }
    }
    let valid = updates
        .into_iter()
        .filter(|u| match submitters.get(&u.job) {
            None => false,
            Some(sub) => match verify_news(&u.job, u.frame, None, &u.state, sub) {
                Ok(()) => true,
                Err(e) => {
                    forged.get_or_insert(e);
                    false
                }
            },
        })
        .collect();
    (valid, forged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::frame::tests::job_id;

    fn key(i: u8) -> Keypair {
        Keypair::ed25519_from_bytes([i; 32]).expect("32 bytes")
    }

    fn signed_state(k: &Keypair, sub: &Keypair) -> FrameState {
        let job = job_id();
        let mut s = FrameState::from_claim(claim(k, &job, 3, 1, 2));
        let d = done(
            k,
            &job,
            3,
            1,
            2,
            Rendered {
                output: BlobId::of(b"x"),
                thumb: None,
                render_ms: 10,
            },
        );
        s.done.insert(d.clone());
        s.failures.insert(failure(k, &job, 3, 1, "boom".into()));
        s.lost.insert(lost(sub, &job, 3, &d, true));
        s
    }

    #[test]
    fn entries_signed_by_the_peers_they_name_verify() {
        let (k, sub) = (key(1), key(2));
        let s = signed_state(&k, &sub);
        let submitter = sub.public().to_peer_id();
        assert_eq!(verify_news(&job_id(), 3, None, &s, &submitter), Ok(()));
        // Known entries are not checked again.
        assert_eq!(verify_news(&job_id(), 3, Some(&s), &s, &submitter), Ok(()));
    }

    #[test]
    fn every_forgery_is_refused() {
        let (k, sub, mallory) = (key(1), key(2), key(3));
        let job = job_id();
        let submitter = sub.public().to_peer_id();
        let honest = k.public().to_peer_id();
        let refused = |s: &FrameState| verify_news(&job, 3, None, s, &submitter).unwrap_err();

        // An entry in another peer's name.
        let mut c = claim(&mallory, &job, 3, 1, 2);
        c.peer = honest;
        assert!(matches!(
            refused(&FrameState::from_claim(c)),
            Invalid::BadSignature { peer, .. } if peer == honest
        ));
        let mut f = failure(&mallory, &job, 3, 1, "x".into());
        f.peer = honest;
        assert!(matches!(
            refused(&FrameState::from_failure(f)),
            Invalid::BadSignature { .. }
        ));
        // A signed entry altered: another frame, another output.
        let signed = |thumb| {
            let r = Rendered {
                output: BlobId::of(b"x"),
                thumb,
                render_ms: 10,
            };
            done(&k, &job, 3, 1, 2, r)
        };
        let d = signed(None);
        let other_frame = verify_news(&job, 4, None, &FrameState::from_done(d.clone()), &submitter);
        assert!(other_frame.is_err());
        let mut changed = d.clone();
        changed.output = BlobId::of(b"y");
        assert!(matches!(
            refused(&FrameState::from_done(changed)),
            Invalid::BadSignature { .. }
        ));
        // The thumbnail is signed too: added, dropped or swapped, the result is refused.
        let with = signed(Some(BlobId::of(b"t")));
        let news =
            |d: &Done| verify_news(&job, 3, None, &FrameState::from_done(d.clone()), &submitter);
        assert!(news(&with).is_ok());
        for (from, thumb) in [
            (&d, Some(BlobId::of(b"t"))),
            (&with, None),
            (&with, Some(BlobId::of(b"u"))),
        ] {
            let mut swapped = from.clone();
            swapped.thumb = thumb;
            assert!(matches!(news(&swapped), Err(Invalid::BadSignature { .. })));
        }
        // A result whose claim was not signed by its renderer.
        let mut unclaimed = d.clone();
        unclaimed.claim_sig = claim(&mallory, &job, 3, 1, 2).sig;
        unclaimed.sig = signed(None).sig;
        assert!(
            refused(&FrameState::from_done(unclaimed))
                .to_string()
                .contains("claim")
        );
        // Epoch 0, even when signed.
        let zero = done(
            &mallory,
            &job,
            3,
            1,
            0,
            Rendered {
                output: BlobId::of(b"x"),
                thumb: None,
                render_ms: 1,
            },
        );
        assert!(matches!(
            refused(&FrameState::from_done(zero)),
            Invalid::EpochZero { .. }
        ));
        // A lost declaration by anyone but the submitter.
        let l = lost(&mallory, &job, 3, &d, false);
        assert!(matches!(
            refused(&FrameState::from_lost(l)),
            Invalid::BadSignature { .. }
        ));
    }

    #[test]
    fn jobs_and_controls_are_signed_by_their_submitter() {
        let sub = key(2);
        let mut spec = crate::ledger::state::tests::spec("1-3", 0, 1);
        spec.submitter = sub.public().to_peer_id();
        let id = spec.id();
        sign_job(&sub, &mut spec);
        assert_eq!(spec.id(), id, "the signature is not part of the job id");
        assert_eq!(verify_job(&spec), Ok(()));
        spec.submitter = key(3).public().to_peer_id();
        assert!(verify_job(&spec).is_err());

        let mut c = JobControl::initial(0).next(RunState::Cancelled, 0);
        sign_control(&sub, &id, &mut c);
        let submitter = sub.public().to_peer_id();
        assert_eq!(verify_control(&id, &submitter, &c), Ok(()));
        let mut forged = c;
        forged.priority = 9;
        assert!(verify_control(&id, &submitter, &forged).is_err());
        let mut other = c;
        sign_control(&key(3), &id, &mut other);
        assert!(verify_control(&id, &submitter, &other).is_err());
    }

    #[test]
    fn a_sync_page_keeps_what_verifies_and_names_the_first_forgery() {
        use crate::ledger::FrameUpdate;
        let (k, sub, mallory) = (key(1), key(2), key(3));
        let mut spec = crate::ledger::state::tests::spec("1-3", 0, 1);
        spec.submitter = sub.public().to_peer_id();
        sign_job(&sub, &mut spec);
        let job = spec.id();
        let update = |frame, state| FrameUpdate { job, frame, state };
        let good = update(1, FrameState::from_claim(claim(&k, &job, 1, 1, 1)));
        let mut c = claim(&mallory, &job, 2, 1, 1);
        c.peer = k.public().to_peer_id();
        let forged = update(2, FrameState::from_claim(c));
        let other_job = FrameUpdate {
            job: JobId::of(b"unknown"),
            ..good.clone()
        };
        let page = vec![good.clone(), forged, other_job];
        // The job arrives in the same answer: its submitter is taken from it.
        let (valid, err) = verify_page(page.clone(), std::slice::from_ref(&spec), HashMap::new());
        assert_eq!(
            valid,
            vec![good.clone()],
            "the forgery and the unknown job's update go"
        );
        assert!(matches!(err, Some(Invalid::BadSignature { .. })));
        let (valid, err) = verify_page(
            vec![good.clone()],
            &[],
            HashMap::from([(job, spec.submitter)]),
        );
        assert_eq!((valid, err), (vec![good], None));
        // A job spec that is not its submitter's is itself a forgery.
        let mut fake = spec.clone();
        fake.sig = Sig([1; 64]);
        assert!(verify_page(vec![], &[fake], HashMap::new()).1.is_some());
    }

    #[test]
    fn a_signature_is_64_raw_bytes_on_the_wire() {
        let s = Sig([7; 64]);
        let bytes = postcard::to_stdvec(&s).unwrap();
        assert_eq!(bytes, vec![7; 64]);
        assert_eq!(postcard::from_bytes::<Sig>(&bytes).unwrap(), s);
        assert!(postcard::from_bytes::<Sig>(&bytes[..63]).is_err());
    }
}
