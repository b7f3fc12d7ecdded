//! The ledger: every known job and the CRDT state of each of its frames.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::archive::ArchivedJob;
use super::control::JobControl;
use super::digest::{DigestCache, JobDigest};
use super::frame::FrameState;
use super::job::JobSpec;
use super::tally::Tally;
use crate::ids::JobId;

/// The state of one frame to join into a ledger: a delta (one claim, one result) or a full
/// state (anti-entropy). Both are just states; joining either is safe any number of times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameUpdate {
    pub job: JobId,
    pub frame: u32,
    pub state: FrameState,
}

/// A job and its frame states. A frame with no entry has the empty state; no entry holds
/// an empty state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEntry {
    pub spec: JobSpec,
    /// Frame states; change them only through [`Ledger::apply`], which keeps `tally` true.
    pub frames: BTreeMap<u32, FrameState>,
    /// Pause, cancel and priority, as the submitter last set them.
    pub control: JobControl,
    /// What the frame states add up to (unfinished frames, failures, speeds).
    pub tally: Tally,
}

impl JobEntry {
    /// The job's priority: the submitter's latest, else the spec's.
    pub fn priority(&self) -> i32 {
        self.control.priority
    }

    /// Frames with a result that counts.
    pub fn results(&self) -> usize {
        self.spec.frames.len() - self.tally.unfinished.len()
    }
}

/// Why a job or an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    #[error("frame {frame} is not part of job {job}")]
    FrameNotInJob { job: JobId, frame: u32 },
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("invalid frame state: {0}")]
    InvalidState(String),
    #[error("job spec does not hash to the job id it was sent with")]
    JobIdMismatch,
    /// An entry whose signature does not check out: whoever sent it lied.
    #[error("forged entry: {0}")]
    Forged(#[from] super::sign::Invalid),
}

impl LedgerError {
    /// Whether the sender of the refused entry misbehaved (no honest peer sends it).
    pub fn is_forgery(&self) -> bool {
        matches!(self, LedgerError::Forged(_))
    }
}

/// All known jobs and their frame states. Two ledgers that were given the same jobs and the
/// same updates, in any order and with any repeats, are equal.
#[derive(Default, Clone, Debug)]
pub struct Ledger {
    pub(super) jobs: BTreeMap<JobId, JobEntry>,
    /// Jobs over and done with (see [`super::archive`]).
    pub(super) archived: BTreeMap<JobId, ArchivedJob>,
    /// Jobs forgotten with `meshd rm`.
    pub(super) forgotten: BTreeSet<JobId>,
    pub(super) digests: DigestCache,
}

impl PartialEq for Ledger {
    fn eq(&self, other: &Self) -> bool {
        self.jobs == other.jobs
            && self.archived == other.archived
            && self.forgotten == other.forgotten
    }
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job after `spec.validate()`. Returns its id and whether it was new.
    pub fn insert_job(&mut self, spec: JobSpec) -> Result<(JobId, bool), LedgerError> {
        spec.validate().map_err(LedgerError::InvalidJob)?;
        let id = spec.id();
        if self.jobs.contains_key(&id) || self.is_retired(&id) {
            return Ok((id, false));
        }
        self.jobs.insert(
            id,
            JobEntry {
                control: JobControl::initial(spec.priority),
                tally: Tally::new(&spec),
                spec,
                frames: BTreeMap::new(),
            },
        );
        Ok((id, true))
    }

    /// Like [`insert_job`](Self::insert_job) for a spec from a peer or the store: its
    /// submitter's signature must check out ([`super::sign::verify_job`]).
    pub fn insert_signed_job(&mut self, spec: JobSpec) -> Result<(JobId, bool), LedgerError> {
        spec.validate().map_err(LedgerError::InvalidJob)?;
        let id = spec.id();
        if !self.jobs.contains_key(&id) && !self.is_retired(&id) {
            super::sign::verify_job(&spec)?;
        }
        self.insert_job(spec)
    }

    /// Like [`apply`](Self::apply) for an update from a peer or the store: every entry the
    /// frame's state lacks must be signed by the peer it names, lost results by the job's
    /// submitter ([`super::sign::verify_news`]). A forged entry refuses the whole update.
    pub fn apply_signed(&mut self, u: &FrameUpdate) -> Result<bool, LedgerError> {
        u.state.validate().map_err(LedgerError::InvalidState)?;
        if self.is_retired(&u.job) {
            return Ok(false);
        }
        let entry = self
            .jobs
            .get(&u.job)
            .ok_or(LedgerError::UnknownJob(u.job))?;
        let known = entry.frames.get(&u.frame);
        super::sign::verify_news(&u.job, u.frame, known, &u.state, &entry.spec.submitter)?;
        self.apply(u)
    }

    /// Like [`apply_control`](Self::apply_control) for a change from a peer or the store:
    /// it must be signed by the job's submitter.
    pub fn apply_signed_control(
        &mut self,
        id: &JobId,
        control: &JobControl,
    ) -> Result<bool, LedgerError> {
        if self.is_retired(id) {
            return Ok(false);
        }
        let entry = self.jobs.get(id).ok_or(LedgerError::UnknownJob(*id))?;
        if entry.control != *control {
            super::sign::verify_control(id, &entry.spec.submitter, control)?;
        }
        self.apply_control(id, control)
    }

    /// Like [`insert_job`](Self::insert_job) for a spec that arrived with its id: refuses
    /// it with [`LedgerError::JobIdMismatch`] unless `spec.id() == *id`. Returns whether
    /// the job was new.
    pub fn insert_job_with_id(&mut self, id: &JobId, spec: JobSpec) -> Result<bool, LedgerError> {
        if spec.id() != *id {
            return Err(LedgerError::JobIdMismatch);
        }
        self.insert_job(spec).map(|(_, new)| new)
    }

    /// Joins `u.state` into the frame's state. The state must pass
    /// [`FrameState::validate`] and the frame must belong to a known job. Returns whether
    /// the ledger changed (never, for an archived or forgotten job).
    pub fn apply(&mut self, u: &FrameUpdate) -> Result<bool, LedgerError> {
        u.state.validate().map_err(LedgerError::InvalidState)?;
        if self.is_retired(&u.job) {
            return Ok(false);
        }
        let changed = self.apply_valid(u)?;
        if changed {
            self.digests.frame_changed(&u.job, u.frame);
        }
        Ok(changed)
    }

    fn apply_valid(&mut self, u: &FrameUpdate) -> Result<bool, LedgerError> {
        let entry = self
            .jobs
            .get_mut(&u.job)
            .ok_or(LedgerError::UnknownJob(u.job))?;
        if !entry.spec.frames.contains(u.frame) {
            return Err(LedgerError::FrameNotInJob {
                job: u.job,
                frame: u.frame,
            });
        }
        if let Some(state) = entry.frames.get_mut(&u.frame) {
            let before = state.clone();
            if !state.merge(&u.job, u.frame, &u.state) {
                return Ok(false);
            }
            entry.tally.changed(u.frame, Some(&before), state);
            return Ok(true);
        }
        let mut state = FrameState::default();
        if !state.merge(&u.job, u.frame, &u.state) {
            return Ok(false);
        }
        entry.tally.changed(u.frame, None, &state);
        entry.frames.insert(u.frame, state);
        Ok(true)
    }

    /// Joins a control change into job `id`. Returns whether it changed (never, for an
    /// archived or forgotten job).
    pub fn apply_control(&mut self, id: &JobId, control: &JobControl) -> Result<bool, LedgerError> {
        if self.is_retired(id) {
            return Ok(false);
        }
        let entry = self.jobs.get_mut(id).ok_or(LedgerError::UnknownJob(*id))?;
        let changed = entry.control.merge(control);
        if changed {
            self.digests.control_changed(id);
        }
        Ok(changed)
    }

    pub fn job(&self, id: &JobId) -> Option<&JobEntry> {
        self.jobs.get(id)
    }

    /// All jobs, by id.
    pub fn jobs(&self) -> impl Iterator<Item = (&JobId, &JobEntry)> {
        self.jobs.iter()
    }

    /// The frame's state, if it is not empty.
    pub fn frame(&self, id: &JobId, frame: u32) -> Option<&FrameState> {
        self.jobs.get(id)?.frames.get(&frame)
    }

    /// A digest of the job's state (see [`super::digest`]): two ledgers give the same
    /// digest for a job iff they hold the same states for its frames and the same control.
    /// `None` for a job not active here.
    pub fn job_digest(&self, id: &JobId) -> Option<[u8; 32]> {
        self.job_digests(id, false).map(|d| d.whole)
    }

    /// The job's digest and, if `buckets`, its bucket digests. Costs work in proportion to
    /// what changed since the last call.
    pub fn job_digests(&self, id: &JobId, buckets: bool) -> Option<JobDigest> {
        let entry = self.jobs.get(id)?;
        Some(self.digests.get(id, entry, buckets))
    }

    /// The digest of every active job, by id (sync sends [`super::page::theirs_of`]).
    #[cfg(test)]
    pub fn digests(&self) -> Vec<(JobId, [u8; 32])> {
        self.jobs
            .keys()
            .filter_map(|id| self.job_digest(id).map(|d| (*id, d)))
            .collect()
    }

    /// Every non-empty frame state of the job as an update (what a peer missing the job's
    /// state needs). Empty for an unknown job.
    pub fn updates_for(&self, id: &JobId) -> Vec<FrameUpdate> {
        let Some(entry) = self.jobs.get(id) else {
            return Vec::new();
        };
        entry
            .frames
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(&frame, state)| FrameUpdate {
                job: *id,
                frame,
                state: state.clone(),
            })
            .collect()
    }

    /// Drops a job and its frame states (it may be added again). Returns whether it was known.
    pub fn remove_job(&mut self, id: &JobId) -> bool {
        self.digests.remove(id);
        self.jobs.remove(id).is_some()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ids::BlobId;
    use crate::ledger::frame::tests::{arb_state, peer};
    use crate::ledger::frame::{Claim, Done, Failure};
    use crate::ledger::frameset::FrameSet;
    use crate::ledger::job::JOB_SPEC_VERSION;
    use crate::render::settings::RenderSettings;
    use proptest::prelude::*;

    /// A valid job spec for tests.
    pub(crate) fn spec(frames: &str, priority: i32, created_unix_ms: u64) -> JobSpec {
        JobSpec {
            version: JOB_SPEC_VERSION,
            name: "test".into(),
            project: BlobId::of(b"scene"),
            frames: frames.parse::<FrameSet>().expect("valid frame set"),
            settings: RenderSettings::default(),
            submitter: peer(0),
            created_unix_ms,
            priority,
            blender_version: Some("3.4.1".into()),
            require_blender: None,
            size: None,
            sig: Default::default(),
        }
    }

    fn ledger_with_job() -> (Ledger, JobId) {
        let mut l = Ledger::new();
        let (id, new) = l.insert_job(spec("1-5", 0, 1)).unwrap();
        assert!(new);
        (l, id)
    }

    #[test]
    fn insert_job_validates_and_dedups() {
        let (mut l, id) = ledger_with_job();
        assert_eq!(l.insert_job(spec("1-5", 0, 1)).unwrap(), (id, false));
        let mut bad = spec("1-5", 0, 1);
        bad.name = String::new();
        assert!(matches!(l.insert_job(bad), Err(LedgerError::InvalidJob(_))));
        let other = spec("1-5", 0, 2);
        assert_eq!(
            l.insert_job_with_id(&id, other.clone()),
            Err(LedgerError::JobIdMismatch)
        );
        assert_eq!(l.insert_job_with_id(&other.id(), other), Ok(true));
        assert_eq!(l.jobs().count(), 2);
        assert!(l.remove_job(&id));
        assert!(!l.remove_job(&id));
        assert!(l.job(&id).is_none());
    }

    #[test]
    fn apply_checks_job_frame_and_state() {
        let (mut l, id) = ledger_with_job();
        let claim = FrameState::from_claim(Claim {
            sig: Default::default(),
            peer: peer(1),
            incarnation: 1,
            epoch: 1,
        });
        let u = |job, frame, state: &FrameState| FrameUpdate {
            job,
            frame,
            state: state.clone(),
        };
        assert_eq!(l.apply(&u(id, 3, &claim)), Ok(true));
        assert_eq!(l.apply(&u(id, 3, &claim)), Ok(false));
        assert_eq!(
            l.apply(&u(id, 6, &claim)),
            Err(LedgerError::FrameNotInJob { job: id, frame: 6 })
        );
        let unknown = JobId::of(b"nope");
        assert_eq!(
            l.apply(&u(unknown, 3, &claim)),
            Err(LedgerError::UnknownJob(unknown))
        );
        let bad = FrameState::from_failure(Failure {
            sig: Default::default(),
            epoch: 1,
            peer: peer(1),
            reason: "x".repeat(5000),
        });
        assert!(matches!(
            l.apply(&u(id, 3, &bad)),
            Err(LedgerError::InvalidState(_))
        ));
        // An empty update changes nothing and leaves no empty entry.
        assert_eq!(l.apply(&u(id, 4, &FrameState::default())), Ok(false));
        assert!(l.frame(&id, 4).is_none());
        assert_eq!(l.frame(&id, 3), Some(&claim));
        assert_eq!(l.updates_for(&id), vec![u(id, 3, &claim)]);
        assert!(l.updates_for(&unknown).is_empty());
    }

    #[test]
    fn digest_tracks_state() {
        let (mut l, id) = ledger_with_job();
        let empty = l.job_digest(&id).unwrap();
        let mut l2 = l.clone();
        let done = FrameState::from_done(Done {
            incarnation: 0,
            claim_sig: Default::default(),
            sig: Default::default(),
            epoch: 1,
            peer: peer(1),
            output: BlobId::of(b"out"),
            render_ms: 5,
            thumb: None,
        });
        l.apply(&FrameUpdate {
            job: id,
            frame: 2,
            state: done.clone(),
        })
        .unwrap();
        assert_ne!(l.job_digest(&id).unwrap(), empty);
        for u in l.updates_for(&id) {
            l2.apply(&u).unwrap();
        }
        assert_eq!(l, l2);
        assert_eq!(l.digests(), l2.digests());
        assert_eq!(l.job_digest(&JobId::of(b"nope")), None);
    }

    fn arb_updates() -> impl Strategy<Value = Vec<(u32, FrameState)>> {
        prop::collection::vec((1u32..=5, arb_state()), 0..12)
    }

    proptest! {
        #[test]
        fn any_order_gives_equal_ledgers(
            (updates, shuffled) in arb_updates().prop_flat_map(|u| {
                let s = Just(u.clone()).prop_shuffle();
                (Just(u), s)
            }),
            repeat in 0usize..4,
        ) {
            let (mut a, id) = ledger_with_job();
            let mut b = a.clone();
            for (frame, state) in &updates {
                a.apply(&FrameUpdate { job: id, frame: *frame, state: state.clone() }).unwrap();
            }
            // The other order, with some updates delivered twice.
            for (i, (frame, state)) in shuffled.iter().enumerate() {
                let u = FrameUpdate { job: id, frame: *frame, state: state.clone() };
                b.apply(&u).unwrap();
                if i % 4 == repeat {
                    prop_assert!(!b.apply(&u).unwrap());
                }
            }
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.job_digest(&id), b.job_digest(&id));
            prop_assert_eq!(a.digests(), b.digests());
            for frame in 1..=5 {
                let fa = a.frame(&id, frame);
                let fb = b.frame(&id, frame);
                prop_assert_eq!(fa.and_then(|s| s.canonical()), fb.and_then(|s| s.canonical()));
                // The canonical result is the least of all results ever delivered that
                // no update declared lost.
                let delivered = updates.iter().filter(|(f, _)| *f == frame);
                let lost: std::collections::BTreeSet<_> =
                    delivered.clone().flat_map(|(_, s)| &s.lost).collect();
                let least = delivered
                    .flat_map(|(_, s)| &s.done)
                    .filter(|d| !lost.iter().any(|l| l.names(d)))
                    .min()
                    .filter(|_| lost.len() < crate::ledger::frame::MAX_LOST);
                prop_assert_eq!(fa.and_then(|s| s.canonical()), least);
            }
        }

        #[test]
        fn digests_differ_when_states_differ(
            x in prop::collection::vec((1u32..=5, arb_state()), 0..6),
            y in prop::collection::vec((1u32..=5, arb_state()), 0..6),
        ) {
            let (mut a, id) = ledger_with_job();
            let mut b = a.clone();
            for (frame, state) in x {
                a.apply(&FrameUpdate { job: id, frame, state }).unwrap();
            }
            for (frame, state) in y {
                b.apply(&FrameUpdate { job: id, frame, state }).unwrap();
            }
            prop_assert_eq!(a == b, a.job_digest(&id) == b.job_digest(&id));
        }
    }
}
