//! Paged anti-entropy: what a sync answer holds, within a byte budget.
//!
//! The responder walks its jobs in id order. For each job the requester lacks or holds in
//! another state (by digest), it sends the spec (if lacking), the control (if changed) and
//! the non-empty frame states of every bucket whose digest differs from the requester's
//! ([`super::digest`]; every frame when the requester sent no bucket digests), until the
//! next item would overrun the budget; the answer then names the [`Cursor`] to ask from
//! next. So a ledger of any size syncs in answers of bounded size, an answer never splits a
//! frame state, and a job that differs in a few frames costs a few buckets, not the job.
//!
//! Jobs the requester lists but the responder has archived get their control (on the first
//! page), so the requester archives them too.

use std::collections::{BTreeMap, HashMap};

use super::control::JobControl;
use super::digest::bucket_range;
use super::job::JobSpec;
use super::state::{FrameUpdate, Ledger};
use crate::ids::JobId;

/// Where a paged answer stopped: the job, and its first frame not sent yet.
pub type Cursor = (JobId, u32);

/// What the requester holds of one job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Theirs {
    pub digest: [u8; 32],
    /// Its bucket digests, if it sent them.
    pub buckets: Option<BTreeMap<u32, [u8; 32]>>,
}

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

/// What `ledger` sends to a requester holding `theirs`, starting at `from`, in at most
/// about `budget` bytes (at least one item is always sent).
pub fn page(
    ledger: &Ledger,
    theirs: &HashMap<JobId, Theirs>,
    from: Option<Cursor>,
    budget: usize,
) -> Page {
    let mut out = Page::default();
    let mut used = 0usize;
    let full = |used: usize, add: usize, out: &Page| {
        used + add > budget && !(out.jobs.is_empty() && out.updates.is_empty())
    };
    if from.is_none() {
        for id in theirs.keys() {
            if let Some(a) = ledger.archived(id) {
                used += size(&a.control) + 32;
                out.controls.push((*id, a.control));
            }
        }
    }
    for (id, entry) in ledger.jobs() {
        let start = match from {
            Some((job, _)) if *id < job => continue,
            Some((job, frame)) if *id == job => frame,
            _ => 0,
        };
        let their = theirs.get(id);
        let want_buckets = their.is_some_and(|t| t.buckets.is_some());
        let Some(ours) = ledger.job_digests(id, want_buckets) else {
            continue;
        };
        if their.is_some_and(|t| t.digest == ours.whole) {
            continue;
        }
        if start == 0 {
            if their.is_none() {
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
        // The frame ranges to send: the differing buckets, or everything.
        let ranges: Vec<std::ops::RangeInclusive<u32>> =
            match their.and_then(|t| t.buckets.as_ref()) {
                Some(tb) => ours
                    .buckets
                    .iter()
                    .filter(|(b, d)| tb.get(b) != Some(d))
                    .map(|(b, _)| bucket_range(*b))
                    .collect(),
                None => vec![0..=u32::MAX],
            };
        for r in ranges {
            let lo = (*r.start()).max(start);
            if lo > *r.end() {
                continue;
            }
            for (&frame, state) in entry.frames.range(lo..=*r.end()) {
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
    }
    out
}

/// What a requester sends of its own ledger: every active job's digest, with bucket
/// digests for jobs of more than one bucket.
pub fn theirs_of(ledger: &Ledger) -> HashMap<JobId, Theirs> {
    ledger
        .jobs()
        .filter_map(|(id, _)| {
            let d = ledger.job_digests(id, true)?;
            let buckets = (d.buckets.len() > 1).then_some(d.buckets);
            Some((
                *id,
                Theirs {
                    digest: d.whole,
                    buckets,
                },
            ))
        })
        .collect()
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
                        incarnation: 0,
                        claim_sig: Default::default(),
                        sig: Default::default(),
                        epoch: 1,
                        peer: peer((f % 4) as u8),
                        output: BlobId::of(&f.to_le_bytes()),
                        render_ms: f as u64,
                        thumb: None,
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
            let theirs = theirs_of(&replica);
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
        let theirs = theirs_of(&replica);
        assert_eq!(page(&l, &theirs, None, budget), Page::default());
    }

    #[test]
    fn a_job_differing_in_a_few_frames_sends_only_their_buckets() {
        let l = big_ledger(1, 10_000);
        let mut replica = l.clone();
        let (id, _) = l.jobs().next().map(|(i, e)| (*i, e.clone())).unwrap();
        // The replica lacks news of two frames in different buckets.
        let mut ahead = l.clone();
        for f in [5u32, 7000] {
            ahead
                .apply(&FrameUpdate {
                    job: id,
                    frame: f,
                    state: FrameState::from_done(Done {
                        incarnation: 0,
                        claim_sig: Default::default(),
                        sig: Default::default(),
                        epoch: 2,
                        peer: peer(9),
                        output: BlobId::of(b"again"),
                        render_ms: 1,
                        thumb: None,
                    }),
                })
                .unwrap();
        }
        let p = page(&ahead, &theirs_of(&replica), None, usize::MAX);
        assert!(p.next.is_none());
        assert_eq!(
            p.updates.len(),
            2 * crate::ledger::digest::BUCKET_FRAMES as usize - 1,
            "two buckets (frame 0 is not in the job), not the whole job"
        );
        for u in &p.updates {
            replica.apply(u).unwrap();
        }
        assert_eq!(replica, ahead);
        // Without bucket digests the whole job goes.
        let whole: HashMap<JobId, Theirs> = theirs_of(&l)
            .into_iter()
            .map(|(id, t)| (id, Theirs { buckets: None, ..t }))
            .collect();
        assert_eq!(page(&ahead, &whole, None, usize::MAX).updates.len(), 10_000);
    }

    #[test]
    fn a_requester_still_holding_an_archived_job_gets_its_control() {
        let mut l = big_ledger(1, 3);
        let replica = l.clone();
        let id = *l.jobs().next().unwrap().0;
        l.archive(&id);
        let p = page(&l, &theirs_of(&replica), None, usize::MAX);
        assert_eq!(p.controls.len(), 1);
        assert!(p.updates.is_empty() && p.jobs.is_empty());
        // A peer that never knew the job is sent nothing of it.
        assert_eq!(page(&l, &HashMap::new(), None, usize::MAX), Page::default());
    }

    #[test]
    fn a_tiny_budget_still_makes_progress() {
        let l = big_ledger(1, 3);
        let p = page(&l, &HashMap::new(), None, 1);
        assert_eq!(p.jobs.len(), 1);
        assert!(p.next.is_some());
    }
}
