//! Benchmark: the ledger at scale, without a network. Prints figures from one run:
//! heap bytes per frame state (claimed, then done), the cost of digests (cold and after one
//! change), of a full paged sync to a new peer and of an incremental one, of choosing a
//! claim near the end of a big job, and what archiving the job frees. Then the cost of
//! signatures: joining signed results with their signatures checked (as from a peer or the
//! store) against joining the same results unchecked, side by side, and their wire size.
//!
//! Usage: `cargo run --release --example ledger_scale [FRAMES=100000] [PEERS=50]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use libp2p_identity::{Keypair, PeerId};
use meshd::ids::{BlobId, JobId};
use meshd::ledger::job::JOB_SPEC_VERSION;
use meshd::ledger::page::{page, theirs_of};
use meshd::ledger::{
    Claim, Done, FrameState, FrameUpdate, JobSpec, Ledger, PeerView, RetryPolicy, choose_claim,
    job_progress,
};
use meshd::render::settings::RenderSettings;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Every peer alive.
struct AllLive(Vec<PeerId>);

impl PeerView for AllLive {
    fn claim_live(&self, _: &PeerId, _: u64) -> bool {
        true
    }
    fn live_renderers(&self) -> Vec<PeerId> {
        self.0.clone()
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let frames: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let peers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let ids: Vec<PeerId> = (0..peers)
        .map(|_| Keypair::generate_ed25519().public().to_peer_id())
        .collect();
    let spec = JobSpec {
        version: JOB_SPEC_VERSION,
        name: "scale".into(),
        project: BlobId::of(b"project"),
        frames: format!("1-{frames}").parse().expect("frame range"),
        settings: RenderSettings::default(),
        submitter: ids[0],
        created_unix_ms: 1,
        priority: 0,
        blender_version: None,
        require_blender: None,
        size: None,
        sig: Default::default(),
    };
    let mut l = Ledger::new();
    let (id, _) = l.insert_job(spec).expect("valid job");
    let claim = |f: u32| FrameUpdate {
        job: id,
        frame: f,
        state: FrameState::from_claim(Claim {
            sig: Default::default(),
            peer: ids[f as usize % peers],
            incarnation: 1,
            epoch: 1,
        }),
    };
    let done = |f: u32| FrameUpdate {
        job: id,
        frame: f,
        state: FrameState::from_done(Done {
            incarnation: 0,
            claim_sig: Default::default(),
            sig: Default::default(),
            epoch: 1,
            peer: ids[f as usize % peers],
            output: BlobId::of(&f.to_le_bytes()),
            render_ms: 1000 + u64::from(f % 7),
            thumb: None,
        }),
    };

    println!("ledger scale: one job of {frames} frames, {peers} peers");
    let base = live();
    for f in 1..=frames {
        l.apply(&claim(f)).expect("claim");
    }
    let claimed = live() - base;
    // Leave the last 10% unfinished: the state choose_claim sees near the end of a job.
    let tail = frames / 10;
    for f in 1..=frames - tail {
        l.apply(&done(f)).expect("done");
    }
    let view = AllLive(ids.clone());
    let policy = RetryPolicy::default();
    let t = Instant::now();
    let progress = job_progress(l.job(&id).expect("job"), &view, &policy);
    let progress_ms = ms(t);
    // The worst case: every frame left is claimed by a live peer, so every unfinished frame
    // is looked at and nothing found (the done ones are not: see ledger/tally.rs).
    let t = Instant::now();
    let choice = choose_claim(&l, &ids[1], 1, &view, &policy, |_, _| true, 2 * peers);
    let choose_ms = ms(t);
    for f in frames - tail + 1..=frames {
        l.apply(&done(f)).expect("done");
    }
    let all_done = live() - base;

    let t = Instant::now();
    let d1 = l.job_digest(&id);
    let cold_ms = ms(t);
    let t = Instant::now();
    let d2 = l.job_digest(&id);
    let cached_ms = ms(t);
    assert_eq!(d1, d2);
    let mut newer = l.clone();
    newer
        .apply(&FrameUpdate {
            job: id,
            frame: frames / 2,
            state: FrameState::from_done(Done {
                incarnation: 0,
                claim_sig: Default::default(),
                sig: Default::default(),
                epoch: 2,
                peer: ids[1],
                output: BlobId::of(b"again"),
                render_ms: 5,
                thumb: None,
            }),
        })
        .expect("update");
    newer.job_digest(&id);
    let mut after = newer.clone();
    after
        .apply(&FrameUpdate {
            job: id,
            frame: frames / 3,
            state: FrameState::from_done(Done {
                incarnation: 0,
                claim_sig: Default::default(),
                sig: Default::default(),
                epoch: 3,
                peer: ids[2],
                output: BlobId::of(b"third"),
                render_ms: 5,
                thumb: None,
            }),
        })
        .expect("update");
    after.job_digest(&id);
    let t = Instant::now();
    after
        .apply(&FrameUpdate {
            job: id,
            frame: frames / 4,
            state: FrameState::from_done(Done {
                incarnation: 0,
                claim_sig: Default::default(),
                sig: Default::default(),
                epoch: 4,
                peer: ids[3],
                output: BlobId::of(b"fourth"),
                render_ms: 5,
                thumb: None,
            }),
        })
        .expect("update");
    after.job_digest(&id);
    let incremental_ms = ms(t);

    // A new peer syncing the whole job, in 4 MiB pages.
    let t = Instant::now();
    let mut fresh = Ledger::new();
    let mut cursor = None;
    let (mut pages, mut bytes) = (0, 0usize);
    loop {
        let theirs = theirs_of(&fresh);
        let p = page(&l, &theirs, cursor, 4 << 20);
        bytes += postcard::to_stdvec(&(&p.jobs, &p.updates))
            .map(|v| v.len())
            .unwrap_or(0);
        for s in p.jobs {
            fresh.insert_job(s).expect("job");
        }
        for u in &p.updates {
            fresh.apply(u).expect("update");
        }
        pages += 1;
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let full_ms = ms(t);
    assert_eq!(fresh.job_digest(&id), l.job_digest(&id));
    // A peer that missed one result: one bucket, not the job.
    let theirs = theirs_of(&l);
    let t = Instant::now();
    let p = page(&newer, &theirs, None, 4 << 20);
    let incr_sync_ms = ms(t);
    let incr_bytes = postcard::to_stdvec(&p.updates)
        .map(|v| v.len())
        .unwrap_or(0);
    let equal: HashMap<JobId, _> = theirs_of(&l);
    let t = Instant::now();
    let none = page(&l, &equal, None, 4 << 20);
    let equal_ms = ms(t);
    assert!(none.updates.is_empty());

    let before_archive = live();
    l.archive(&id);
    drop(fresh);
    drop(newer);
    drop(after);
    let freed = before_archive - live();

    let per = |b: isize| b as f64 / f64::from(frames);
    println!(
        "memory per frame: {:.0} B claimed, {:.0} B done (claim + one result); archiving the job freed {:.1} MiB",
        per(claimed),
        per(all_done),
        freed as f64 / (1 << 20) as f64
    );
    println!(
        "job progress with 90% done: {progress_ms:.1} ms ({} pending); choose a claim with 90% done and the rest in flight: {choose_ms:.1} ms ({})",
        progress.pending,
        if choice.is_some() {
            "found one"
        } else {
            "nothing free"
        }
    );
    println!(
        "digest: {cold_ms:.1} ms cold, {cached_ms:.3} ms cached, {incremental_ms:.3} ms after one change (with the apply)"
    );
    println!(
        "sync to a new peer: {pages} pages, {:.1} MiB, {full_ms:.0} ms; one missed result: {} updates, {incr_bytes} B, {incr_sync_ms:.2} ms; in sync: {equal_ms:.3} ms",
        bytes as f64 / (1 << 20) as f64,
        p.updates.len()
    );
    signed(frames.min(20_000), peers);
}

/// Signed claims and results for `frames` frames: checked and joined, then joined without
/// checks, in one run; bytes per frame on the wire with and without signatures.
fn signed(frames: u32, peers: usize) {
    use meshd::ledger::sign;
    let keys: Vec<Keypair> = (0..peers).map(|_| Keypair::generate_ed25519()).collect();
    let submitter = &keys[0];
    let mut spec = JobSpec {
        version: JOB_SPEC_VERSION,
        name: "signed".into(),
        project: BlobId::of(b"project"),
        frames: format!("1-{frames}").parse().expect("frame range"),
        settings: RenderSettings::default(),
        submitter: submitter.public().to_peer_id(),
        created_unix_ms: 2,
        priority: 0,
        blender_version: None,
        require_blender: None,
        size: None,
        sig: Default::default(),
    };
    sign::sign_job(submitter, &mut spec);
    let id = spec.id();
    let updates: Vec<FrameUpdate> = (1..=frames)
        .map(|f| {
            let k = &keys[f as usize % peers];
            let mut state = FrameState::from_claim(sign::claim(k, &id, f, 1, 1));
            let output = BlobId::of(&f.to_le_bytes());
            state.done.insert(sign::done(
                k,
                &id,
                f,
                1,
                1,
                sign::Rendered {
                    output,
                    thumb: None,
                    render_ms: 1000,
                },
            ));
            FrameUpdate {
                job: id,
                frame: f,
                state,
            }
        })
        .collect();
    let unsigned: Vec<FrameUpdate> = updates
        .iter()
        .map(|u| {
            let mut u = u.clone();
            if let Some(c) = u.state.claim.as_mut() {
                c.sig = Default::default();
            }
            u.state.done = u
                .state
                .done
                .iter()
                .map(|d| Done {
                    claim_sig: Default::default(),
                    sig: Default::default(),
                    ..d.clone()
                })
                .collect();
            u
        })
        .collect();

    let mut checked = Ledger::new();
    checked.insert_signed_job(spec.clone()).expect("signed job");
    let t = Instant::now();
    for u in &updates {
        checked.apply_signed(u).expect("valid entries");
    }
    let checked_ms = ms(t);
    let t = Instant::now();
    for u in &updates {
        checked.apply_signed(u).expect("valid entries");
    }
    let again_ms = ms(t);
    let mut plain = Ledger::new();
    plain.insert_job(spec).expect("job");
    let t = Instant::now();
    for u in &unsigned {
        plain.apply(u).expect("update");
    }
    let plain_ms = ms(t);
    let size = |us: &[FrameUpdate]| {
        postcard::to_stdvec(us).map_or(0, |v| v.len()) as f64 / f64::from(frames)
    };
    println!(
        "signed entries, {frames} frames (claim + result each): joined with signatures checked {checked_ms:.0} ms ({:.1} us/frame), unchecked {plain_ms:.0} ms: {:.1}x; resent (already held, not checked again) {again_ms:.0} ms; {:.0} B/frame on the wire, of which {} B signatures",
        checked_ms * 1000.0 / f64::from(frames),
        checked_ms / plain_ms.max(0.001),
        size(&updates),
        3 * std::mem::size_of::<meshd::ledger::Sig>(),
    );
}
