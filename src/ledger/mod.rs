//! The frame ledger: which frames of which jobs are claimed, done or failed, as a CRDT.
//!
//! Every peer holds a [`Ledger`]: the [`JobSpec`]s it knows and, for each frame of each job,
//! a [`FrameState`]. A frame state is an element of a join semilattice:
//!
//! - `claim`: at most one [`Claim`]; of two, the one [`frame::claim_beats`] picks (higher
//!   epoch, then a hash tie-break) survives.
//! - `done` and `failures`: grow-only sets, joined by union (each kept to its least
//!   [`frame::MAX_DONE`] / [`frame::MAX_FAILURES`] elements, which is still a join).
//!
//! [`FrameState::merge`] is that join: commutative, associative and idempotent. A gossip
//! message, a sync reply and a local action are all the same thing, a [`FrameUpdate`] whose
//! state is joined into the ledger, so two peers that have seen the same updates hold equal
//! ledgers whatever the order, duplication or delay of the messages. [`Ledger::job_digest`]
//! lets two peers compare a job's frame states without sending them.
//!
//! Whether a claim still holds is not part of the CRDT: it depends on the holder's heartbeat
//! as seen locally. The [`policy`] functions interpret the merged state with that knowledge
//! (passed in as a [`PeerView`]) to give each frame a [`FrameStatus`] and to pick the next
//! frame to claim. Among several `Done` results the least is canonical; the rest are
//! duplicates, counted and kept out of the output.
//!
//! Nothing here performs I/O or reads a clock.

pub mod archive;
pub mod control;
pub mod digest;
pub mod frame;
pub mod frameset;
pub mod job;
pub mod page;
pub mod pick;
pub mod policy;
pub mod sign;
pub mod sorted;
pub mod state;
pub mod tail;
pub mod tally;

pub use archive::{ArchivedJob, archivable};
pub use control::{JobControl, RunState};
pub use frame::{Claim, Done, Failure, FrameState, Lost};
pub use frameset::{FrameSet, FrameSetError, MAX_FRAME, MAX_FRAMES_PER_JOB};
pub use job::JobSpec;
pub use policy::{
    ClaimChoice, FrameStatus, JobProgress, JobState, PeerView, RetryPolicy, choose_claim,
    fitting_renderers, frame_status, frame_status_in, job_progress, job_state, peer_blocked,
    pending_up_to, replica_holders,
};
pub use sign::{Invalid, Sig};
pub use state::{FrameUpdate, JobEntry, Ledger, LedgerError};
