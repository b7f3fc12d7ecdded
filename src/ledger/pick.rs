//! Which of a job's candidate frames a peer takes, so that peers choosing at the same
//! moment take different frames.
//!
//! Two peers that claim one frame within a gossip round trip both start rendering it; the
//! later claim wins and the other render is thrown away. That happens most when a job
//! starts (every renderer chooses within a few milliseconds) and whenever two peers finish
//! a frame at about the same time. Taking the frame with the least `hash(peer, frame)`
//! spreads the choices, but among `n` peers choosing from `2n` frames about `n / 4` pairs
//! still collide (measured: 2 to 7 renders thrown away per 400-frame job on 32 peers, 50
//! to 110 ms each).
//!
//! [`pick_frame`] removes the collisions between peers that see the same candidates and
//! the same choosers. It plays a *serial dictatorship* every peer can compute alone: the
//! choosers line up by a hash of (job, peer), and each in turn takes the free candidate it
//! ranks first. `me` plays the game up to its own turn and takes what is left to it. With
//! the same inputs every peer reaches the same assignment, so their frames differ. When
//! views differ (a claim not yet heard somewhere) the assignments differ only around the
//! frames concerned: a collision is possible again, not certain.
//!
//! It costs one blake3 per chooser and one 64-bit mix per (chooser before `me`, candidate):
//! at most about `2 n²` mixes for `n` choosers and `2n` candidates, some 10 µs at 32 peers
//! and 1 ms at 500.

use libp2p_identity::PeerId;

use crate::ids::JobId;

/// A chooser's place in line and the seed of its ranking of frames: the first 8 bytes of
/// `blake3("meshd/pick/1" ‖ job ‖ peer)`, little-endian.
fn key(job: &JobId, peer: &PeerId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"meshd/pick/1");
    h.update(job.as_bytes());
    h.update(&peer.to_bytes());
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// How much the chooser with `key` wants `frame`: less is better (splitmix64's finaliser
/// over the key and the frame, so each chooser ranks frames in its own order).
fn rank(key: u64, frame: u32) -> u64 {
    let mut z = key ^ u64::from(frame).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The index of the candidate not yet `taken` that `key` ranks first.
fn favourite(key: u64, candidates: &[u32], taken: &[bool]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| !taken[*i])
        .min_by_key(|(_, f)| rank(key, **f))
        .map(|(i, _)| i)
}

/// The frame of `candidates` that `me` takes when `choosers` (the peers that may claim
/// these frames now; `me` counts whether listed or not) choose at once: see the module
/// docs. When the choosers before `me` leave nothing (fewer candidates than choosers, at a
/// job's tail), `me` takes the candidate it ranks first: some of those choosers are busy
/// or waiting, and a frame nobody takes would wait for ever. `None` only without
/// candidates.
pub fn pick_frame(
    job: &JobId,
    me: &PeerId,
    choosers: &[PeerId],
    candidates: &[u32],
) -> Option<u32> {
    let mine = key(job, me);
    let mut before: Vec<u64> = choosers
        .iter()
        .filter(|p| *p != me)
        .map(|p| key(job, p))
        .filter(|k| *k < mine)
        .collect();
    before.sort_unstable();
    before.dedup();
    let mut taken = vec![false; candidates.len()];
    let mut left = candidates.len();
    for k in before {
        if left == 0 {
            break;
        }
        if let Some(i) = favourite(k, candidates, &taken) {
            taken[i] = true;
            left -= 1;
        }
    }
    let i = match favourite(mine, candidates, &taken) {
        Some(i) => i,
        None => favourite(mine, candidates, &vec![false; candidates.len()])?,
    };
    Some(candidates[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn choosers_with_the_same_view_take_different_frames() {
        let job = JobId([7; 32]);
        for n in [2, 5, 32, 50] {
            let choosers = peers(n);
            let candidates: Vec<u32> = (1..=2 * n as u32).collect();
            let picked: BTreeSet<u32> = choosers
                .iter()
                .map(|p| pick_frame(&job, p, &choosers, &candidates).unwrap())
                .collect();
            assert_eq!(picked.len(), n, "{n} choosers");
        }
    }

    #[test]
    fn with_fewer_frames_than_choosers_everyone_still_takes_one() {
        let job = JobId([1; 32]);
        let choosers = peers(10);
        let picked: BTreeSet<u32> = choosers
            .iter()
            .map(|p| pick_frame(&job, p, &choosers, &[4, 9, 12]).unwrap())
            .collect();
        assert!(picked.iter().all(|f| [4, 9, 12].contains(f)));
        assert_eq!(pick_frame(&job, &choosers[0], &choosers, &[]), None);
        // Alone: the frame it ranks first, listed or not.
        let me = PeerId::random();
        assert!(pick_frame(&job, &me, &[], &[5, 6]).is_some());
    }

    #[test]
    fn the_plain_hash_choice_collides_where_the_pick_does_not() {
        // What the pick replaced: each peer took the candidate of least hash(peer, frame).
        let job = JobId([3; 32]);
        let mut collisions = 0;
        for _ in 0..20 {
            let choosers = peers(32);
            let candidates: Vec<u32> = (1..=64).collect();
            let plain: BTreeSet<u32> = choosers
                .iter()
                .map(|p| {
                    let k = key(&job, p);
                    *candidates.iter().min_by_key(|f| rank(k, **f)).unwrap()
                })
                .collect();
            collisions += 32 - plain.len();
        }
        assert!(collisions > 20, "{collisions} collisions in 20 rounds");
    }

    proptest! {
        #[test]
        fn same_view_no_collision_and_a_candidate_always(
            n in 1usize..40,
            frames in proptest::collection::btree_set(0u32..10_000, 1..100),
            seed in any::<[u8; 32]>(),
        ) {
            let job = JobId(seed);
            let choosers = peers(n);
            let candidates: Vec<u32> = frames.into_iter().collect();
            let picks: Vec<u32> = choosers
                .iter()
                .map(|p| pick_frame(&job, p, &choosers, &candidates).unwrap())
                .collect();
            prop_assert!(picks.iter().all(|f| candidates.contains(f)));
            // Every candidate is taken once before any is taken twice.
            let distinct: BTreeSet<&u32> = picks.iter().collect();
            prop_assert_eq!(distinct.len(), n.min(candidates.len()));
        }
    }
}
