//! Bringing a database written by an older meshd up to the current [`LEDGER_FORMAT`].
//!
//! - Format 1 (no `ledger_format` key): ledger entries carry no signatures, so no peer
//!   would accept them. Those jobs, their frame states and their bookkeeping are dropped
//!   (their output files stay where they were written). Blobs, peers and the incarnation
//!   are kept.
//! - Format 2: results (`Done`) have no thumbnail. Every stored frame state is rewritten
//!   with `thumb: None`; its signatures stay valid, since a result without a thumbnail
//!   signs the same message as before (see `ledger::sign`).
//!
//! An upgrade is done once, at open, before anything reads the ledger; the format is
//! recorded only after the rewritten states are flushed, so an upgrade cut short runs
//! again at the next start.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{LEDGER_FORMAT, Store, StoreError, decode};
use crate::ids::BlobId;
use crate::ledger::frame::{Claim, Done, Failure, FrameState, Lost};
use crate::ledger::sign::Sig;

/// A result as format 2 stored it (no thumbnail).
#[derive(Serialize, Deserialize)]
struct DoneV2 {
    epoch: u32,
    peer: libp2p::PeerId,
    output: BlobId,
    render_ms: u64,
    incarnation: u64,
    claim_sig: Sig,
    sig: Sig,
}

/// A frame state as format 2 stored it (a sorted set is encoded as a sequence).
#[derive(Serialize, Deserialize)]
struct FrameStateV2 {
    claim: Option<Claim>,
    done: Vec<DoneV2>,
    failures: Vec<Failure>,
    lost: Vec<Lost>,
}

impl From<FrameStateV2> for FrameState {
    fn from(v: FrameStateV2) -> Self {
        FrameState {
            claim: v.claim,
            done: v
                .done
                .into_iter()
                .map(|d| Done {
                    epoch: d.epoch,
                    peer: d.peer,
                    output: d.output,
                    render_ms: d.render_ms,
                    thumb: None,
                    incarnation: d.incarnation,
                    claim_sig: d.claim_sig,
                    sig: d.sig,
                })
                .collect(),
            failures: v.failures.into_iter().collect(),
            lost: v.lost.into_iter().collect(),
        }
    }
}

impl Store {
    /// See the module docs.
    pub(super) fn upgrade(&self) -> Result<(), StoreError> {
        let format = self
            .meta
            .get("ledger_format")?
            .and_then(|b| <[u8; 4]>::try_from(&b[..]).ok())
            .map_or(1, u32::from_be_bytes);
        if format >= LEDGER_FORMAT {
            return Ok(());
        }
        if format == 1 {
            self.drop_unsigned()?;
        } else {
            self.add_thumbnails()?;
        }
        self.db.flush()?;
        self.meta
            .insert("ledger_format", &LEDGER_FORMAT.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    fn drop_unsigned(&self) -> Result<(), StoreError> {
        if !self.jobs.is_empty() || !self.archive.is_empty() {
            warn!(
                "this data dir holds jobs of an older meshd, whose ledger entries are not \
                 signed; they are dropped (frames already written stay in their output dirs)"
            );
        }
        for tree in [
            &self.jobs,
            &self.frames,
            &self.local,
            &self.written,
            &self.controls,
            &self.archive,
        ] {
            tree.clear()?;
        }
        Ok(())
    }

    /// Format 2 → 3: every frame state gains `thumb: None` in its results. A state that
    /// does not decode is left as it is (loading skips it with a warning, as before).
    fn add_thumbnails(&self) -> Result<(), StoreError> {
        let mut n = 0usize;
        for item in self.frames.iter() {
            let (k, v) = item?;
            let Ok(old) = decode::<FrameStateV2>("frame (format 2)", &v) else {
                continue;
            };
            let state = FrameState::from(old);
            let bytes =
                postcard::to_stdvec(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.frames.insert(k, bytes)?;
            n += 1;
        }
        if n > 0 {
            info!("upgraded {n} stored frame states to ledger format {LEDGER_FORMAT}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sign;

    #[test]
    fn a_database_of_unsigned_entries_is_cleared_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let spec = crate::ledger::state::tests::spec("1-3", 0, 1);
        store.put_job(&spec).unwrap();
        store.put_peer_addrs(&libp2p::PeerId::random(), &[]).ok();
        // As an older meshd left it: no format recorded.
        store.meta.remove("ledger_format").unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.jobs.is_empty(), "unsigned jobs are dropped");
        store.put_job(&spec).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.jobs.len(), 1, "a current database is left alone");
    }

    /// A data dir of the previous format keeps its jobs and results, and their signatures
    /// still check (loading verifies every stored entry).
    #[test]
    fn results_of_format_2_are_kept_with_no_thumbnail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sub = libp2p::identity::Keypair::generate_ed25519();
        let mut spec = crate::ledger::state::tests::spec("1-3", 0, 1);
        spec.submitter = sub.public().to_peer_id();
        sign::sign_job(&sub, &mut spec);
        let id = spec.id();
        store.put_job(&spec).unwrap();
        let renderer = libp2p::identity::Keypair::generate_ed25519();
        let done = sign::done(
            &renderer,
            &id,
            1,
            4,
            2,
            sign::Rendered {
                output: BlobId::of(b"f1"),
                thumb: None,
                render_ms: 1234,
            },
        );
        // Written as format 2 wrote it.
        let old = FrameStateV2 {
            claim: None,
            done: vec![DoneV2 {
                epoch: done.epoch,
                peer: done.peer,
                output: done.output,
                render_ms: done.render_ms,
                incarnation: done.incarnation,
                claim_sig: done.claim_sig,
                sig: done.sig,
            }],
            failures: vec![sign::failure(&renderer, &id, 1, 1, "boom".into())],
            lost: vec![],
        };
        store
            .frames
            .insert(
                super::super::frame_key(&id, 1),
                postcard::to_stdvec(&old).unwrap(),
            )
            .unwrap();
        store
            .meta
            .insert("ledger_format", &2u32.to_be_bytes())
            .unwrap();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        let ledger = store.load_ledger().unwrap();
        let entry = ledger.job(&id).expect("the job is kept");
        let state = entry.frames.get(&1).expect("the result is kept");
        assert_eq!(state.canonical(), Some(&done));
        assert_eq!(state.failures.len(), 1);
        assert_eq!(
            store.meta.get("ledger_format").unwrap().unwrap().as_ref(),
            LEDGER_FORMAT.to_be_bytes()
        );
    }
}
