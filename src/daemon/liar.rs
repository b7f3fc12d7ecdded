//! A misbehaving peer, for the test suite only (compiled with the `test-faults` feature):
//! each switch makes this daemon lie to the mesh in one way, so tests can check that
//! honest peers refuse the lie, disconnect the liar and finish the job regardless.
//!
//! - `MESHD_FAULT_FORGE_EPOCH0=1`: on hearing of a job, announces a result at epoch 0 for
//!   every frame (signed by itself: valid but for the epoch).
//! - `MESHD_FAULT_FLOOD_CLAIMS=1`: on hearing of a job, claims every frame at once (validly
//!   signed claims, far more than its render slots) and renders none.
//! - `MESHD_FAULT_FORGE_SYNC=1`: its sync answers carry a failure of every frame in the
//!   name of the job's submitter (signed with its own key).
//!
//! `MESHD_FAULT_GARBAGE_OUTPUT` (in `render.rs`) makes it sign results that are no image.

use tracing::warn;

use super::Daemon;
use crate::ids::{BlobId, JobId};
use crate::ledger::{FrameState, FrameUpdate, sign};
use crate::net::GossipMsg;
use crate::net::wire::SyncResponse;

fn on(var: &str) -> bool {
    std::env::var_os(var).is_some()
}

impl Daemon {
    /// Lies about a job just heard of, as the switches say.
    pub(super) async fn lie_about_job(&mut self, id: JobId) {
        let Some(entry) = self.ledger.job(&id) else {
            return;
        };
        if entry.spec.submitter == self.me {
            return;
        }
        let frames: Vec<u32> = entry.spec.frames.iter().collect();
        let mut lies = Vec::new();
        if on("MESHD_FAULT_FORGE_EPOCH0") {
            warn!("MESHD_FAULT_FORGE_EPOCH0: announcing epoch-0 results for every frame");
            for &frame in &frames {
                let output = BlobId::of(&frame.to_le_bytes());
                let done = sign::done(
                    &self.identity,
                    &id,
                    frame,
                    self.incarnation,
                    0,
                    sign::Rendered {
                        output,
                        thumb: None,
                        render_ms: 1,
                    },
                );
                lies.push(FrameUpdate {
                    job: id,
                    frame,
                    state: FrameState::from_done(done),
                });
            }
        }
        if on("MESHD_FAULT_FLOOD_CLAIMS") {
            warn!("MESHD_FAULT_FLOOD_CLAIMS: claiming every frame");
            for &frame in &frames {
                let epoch = entry.frames.get(&frame).map_or(0, FrameState::max_epoch) + 1;
                let claim = sign::claim(&self.identity, &id, frame, self.incarnation, epoch);
                lies.push(FrameUpdate {
                    job: id,
                    frame,
                    state: FrameState::from_claim(claim),
                });
            }
        }
        if !lies.is_empty() {
            // Not merged here: a liar's own ledger need not agree with anyone.
            for chunk in lies.chunks(64) {
                self.publish(GossipMsg::Frames(chunk.to_vec())).await;
            }
        }
    }

    /// Adds lies to a sync answer, as the switches say.
    pub(super) fn lie_in_sync(&self, resp: &mut SyncResponse) {
        if !on("MESHD_FAULT_FORGE_SYNC") {
            return;
        }
        for (id, entry) in self.ledger.jobs() {
            if entry.spec.submitter == self.me {
                continue;
            }
            warn!("MESHD_FAULT_FORGE_SYNC: failures in the submitter's name in a sync answer");
            for frame in entry.spec.frames.iter().take(64) {
                let mut f = sign::failure(&self.identity, id, frame, 1, "forged".into());
                f.peer = entry.spec.submitter;
                resp.updates.push(FrameUpdate {
                    job: *id,
                    frame,
                    state: FrameState::from_failure(f),
                });
            }
        }
    }
}
