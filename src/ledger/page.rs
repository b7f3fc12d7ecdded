//! Paged anti-entropy: what a sync answer holds, within a byte budget.
//!
//! The responder walks its jobs in id order. For each job the requester lacks or holds in
//! another state (by digest), it sends the spec (if lacking), the control (if changed) and
//! every non-empty frame state, until the next item would overrun the budget; the answer
//! then names the [`Cursor`] to ask from next. So a ledger of any size syncs in answers of
//! bounded size, and an answer never splits a frame state.

use std::collections::HashMap;

use super::control::JobControl;
use super::job::JobSpec;
use super::state::{FrameUpdate, Ledger};
use crate::ids::JobId;

/// Where a paged answer stopped: the job, and its first frame not sent yet.
pub type Cursor = (JobId, u32);

/// One answer's worth.
#[derive(Debug, Default, PartialEq)]
pub struct Page {
    pub jobs: Vec<JobSpec>,
    pub updates: Vec<FrameUpdate>,
    pub controls: Vec<(JobId, JobControl)>,
    /// Ask again from here; `None` when everything was sent.
    pub next: Option<Cursor>,
}

fn size<T: serde::Serialize>(x: &T) -> usize {
    postcard::to_stdvec(x).map(|v| v.len()).unwrap_or(0)
}

/// What `ledger` sends to a requester whose per-job digests are `theirs`, starting at
/// `from`, in at most about `budget` bytes (at least one item is always sent).
pub fn page(
    ledger: &Ledger,
    theirs: &HashMap<JobId, [u8; 32]>,
    from: Option<Cursor>,
    budget: usize,
) -> Page {
    let mut out = Page::default();
    let mut used = 0usize;
    let full = |used: usize, add: usize, out: &Page| {
        used + add > budget && !(out.jobs.is_empty() && out.updates.is_empty())
    };
    for (id, entry) in ledger.jobs() {
        let start = match from {
            Some((job, _)) if *id < job => continue,
            Some((job, frame)) if *id == job => frame,
            _ => 0,
        };
        let missing = !theirs.contains_key(id);
        if !missing && theirs.get(id).copied() == ledger.job_digest(id) {
            continue;
        }
        if start == 0 {
            if missing {
                let n = size(&entry.spec);
                if full(used, n, &out) {
                    out.next = Some((*id, 0));
                    return out;
                }
                used += n;
                out.jobs.push(entry.spec.clone());
            }
            if entry.control.seq > 0 {
                used += size(&entry.control) + 32;
                out.controls.push((*id, entry.control));
            }
        }
        for (&frame, state) in entry.frames.range(start..) {
            if state.is_empty() {
                continue;
            }
            let u = FrameUpdate {
                job: *id,
                frame,
                state: state.clone(),
            };
            let n = size(&u);
            if full(used, n, &out) {
                out.next = Some((*id, frame));
                return out;
            }
            used += n;
            out.updates.push(u);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BlobId;
    use crate::ledger::frame::tests::peer;
    use crate::ledger::state::tests::spec;
    use crate::ledger::{Done, FrameState};

    fn big_ledger(jobs: u32, frames: u32) -> Ledger {
        let mut l = Ledger::new();
        for j in 0..jobs {
            let (id, _) = l
                .insert_job(spec(&format!("1-{frames}"), 0, j as u64 + 1))
                .unwrap();
            for f in 1..=frames {
                l.apply(&FrameUpdate {
                    job: id,
                    frame: f,
                    state: FrameState::from_done(Done {
                        epoch: 1,
                        peer: peer((f % 4) as u8),
                        output: BlobId::of(&f.to_le_bytes()),
                        render_ms: f as u64,
                    }),
                })
                .unwrap();
            }
        }
        l
    }

    #[test]
    fn pages_stay_in_budget_and_together_carry_everything() {
        let l = big_ledger(3, 2000);
        let budget = 64 * 1024;
        let mut replica = Ledger::new();
        let mut from = None;
        let mut pages = 0;
        loop {
            // The requester's digests as they are now: partly synced jobs still differ.
            let theirs: HashMap<JobId, [u8; 32]> = replica.digests().into_iter().collect();
            let p = page(&l, &theirs, from, budget);
            let bytes: usize =
                p.updates.iter().map(size).sum::<usize>() + p.jobs.iter().map(size).sum::<usize>();
            assert!(bytes <= budget, "page of {bytes} bytes");
            for s in p.jobs {
                replica.insert_job(s).unwrap();
            }
            for u in &p.updates {
                replica.apply(u).unwrap();
            }
            pages += 1;
            match p.next {
                Some(c) => from = Some(c),
                None => break,
            }
            assert!(pages < 1000, "paging does not end");
        }
        assert!(pages > 3, "{pages} pages");
        assert_eq!(replica, l, "the pages together carry the whole ledger");
        // In sync: nothing more to send.
        let theirs: HashMap<JobId, [u8; 32]> = replica.digests().into_iter().collect();
        assert_eq!(page(&l, &theirs, None, budget), Page::default());
    }

    #[test]
    fn a_tiny_budget_still_makes_progress() {
        let l = big_ledger(1, 3);
        let p = page(&l, &HashMap::new(), None, 1);
        assert_eq!(p.jobs.len(), 1);
        assert!(p.next.is_some());
    }
}
