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
//! choosers (the peers with a free render slot for the job, or a render of it about to end)
//! line up by a hash of (job, peer), and each in turn takes the free candidate it ranks
//! first, once per turn they have (free slot or ending render).
//! `me` plays the game up to its own turn and takes what is left to it. With the same inputs
//! every peer reaches the same assignment, so their frames differ. A peer whose claim is
//! seen leaves the line with its frame, so a claim heard by some peers and not yet by others
//! changes the others' assignments little. When views differ otherwise a collision is
//! possible again, not certain.
//!
//! It costs one blake3 per chooser and one 64-bit mix per (turn before `me`, candidate): at
//! most about `2 n²` mixes for `n` choosers and `2n` candidates, some 10 µs at 32 peers and
//! 1 ms at 500.

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

/// The frame of `candidates` that `me` takes when `choosers` (other peers that may claim
/// these frames now, each with its free render slots; `me` is left out if listed) choose at
/// once: see the module docs. When the choosers before `me` take every candidate, `me` takes
/// the candidate it ranks first: some of them may be busy with another job or waiting, and
/// a frame nobody takes would wait. `None` only without candidates.
pub fn pick_frame(
    job: &JobId,
    me: &PeerId,
    choosers: &[(PeerId, usize)],
    candidates: &[u32],
) -> Option<u32> {
    let mine = key(job, me);
    let mut before: Vec<(u64, usize)> = choosers
        .iter()
        .filter(|(p, _)| p != me)
        .map(|(p, turns)| (key(job, p), *turns))
        .filter(|(k, _)| *k < mine)
        .collect();
    before.sort_unstable();
    before.dedup_by_key(|(k, _)| *k);
    let mut taken = vec![false; candidates.len()];
    let mut left = candidates.len();
    'line: for (k, turns) in before {
        for _ in 0..turns {
            if left == 0 {
                break 'line;
            }
            if let Some(i) = favourite(k, candidates, &taken) {
                taken[i] = true;
                left -= 1;
            }
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
    use crate::ledger::frame::tests::peer;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// `n` choosers with one free slot each.
    fn line(first: u8, n: usize) -> Vec<(PeerId, usize)> {
        (0..n)
            .map(|i| (peer(first.wrapping_add(i as u8)), 1))
            .collect()
    }

    fn picks(job: &JobId, choosers: &[(PeerId, usize)], candidates: &[u32]) -> Vec<u32> {
        choosers
            .iter()
            .map(|(p, _)| pick_frame(job, p, choosers, candidates).unwrap())
            .collect()
    }

    #[test]
    fn choosers_with_the_same_view_take_different_frames() {
        let job = JobId([7; 32]);
        for n in [2, 5, 32, 50] {
            let choosers = line(0, n);
            let candidates: Vec<u32> = (1..=2 * n as u32).collect();
            let picked: BTreeSet<u32> = picks(&job, &choosers, &candidates).into_iter().collect();
            assert_eq!(picked.len(), n, "{n} choosers");
        }
    }

    #[test]
    fn with_fewer_frames_than_choosers_everyone_still_takes_one() {
        let job = JobId([1; 32]);
        let choosers = line(0, 10);
        let picked: BTreeSet<u32> = picks(&job, &choosers, &[4, 9, 12]).into_iter().collect();
        assert_eq!(picked, BTreeSet::from([4, 9, 12]));
        assert_eq!(pick_frame(&job, &choosers[0].0, &choosers, &[]), None);
        // Alone: the frame it ranks first.
        assert!(pick_frame(&job, &peer(200), &[], &[5, 6]).is_some());
    }

    #[test]
    fn a_peer_with_two_free_slots_takes_two_frames_in_its_turn() {
        // Peer 0 has two GPUs: its second slot chooses after its first claim is merged.
        let job = JobId([9; 32]);
        let mut choosers = line(0, 6);
        choosers[0].1 = 2;
        let candidates: Vec<u32> = (1..=12).collect();
        let others: Vec<u32> = choosers[1..]
            .iter()
            .map(|(p, _)| pick_frame(&job, p, &choosers, &candidates).unwrap())
            .collect();
        let first = pick_frame(&job, &choosers[0].0, &choosers, &candidates).unwrap();
        let rest: Vec<u32> = candidates.iter().copied().filter(|f| *f != first).collect();
        let mut after = choosers.clone();
        after[0].1 = 1;
        let second = pick_frame(&job, &after[0].0, &after, &rest).unwrap();
        let all: BTreeSet<u32> = others.iter().copied().chain([first, second]).collect();
        assert_eq!(all.len(), 7, "{others:?} {first} {second}");
    }

    proptest! {
        #[test]
        fn same_view_no_collision_and_a_candidate_always(
            first in any::<u8>(),
            n in 1usize..40,
            frames in proptest::collection::btree_set(0u32..10_000, 1..100),
            seed in any::<[u8; 32]>(),
        ) {
            let job = JobId(seed);
            let choosers = line(first, n);
            let candidates: Vec<u32> = frames.into_iter().collect();
            let picks = picks(&job, &choosers, &candidates);
            prop_assert!(picks.iter().all(|f| candidates.contains(f)));
            // Every candidate is taken once before any is taken twice.
            let distinct: BTreeSet<&u32> = picks.iter().collect();
            prop_assert_eq!(distinct.len(), n.min(candidates.len()));
        }

        #[test]
        fn a_claim_heard_by_some_does_not_move_the_others(
            n in 3usize..30,
            seed in any::<[u8; 32]>(),
        ) {
            // Peer 0 claimed its frame; peers that heard it drop it and peer 0 from the line,
            // peers that did not still see both. Both kinds pick the same frames.
            let job = JobId(seed);
            let choosers = line(0, n);
            let candidates: Vec<u32> = (1..=2 * n as u32).collect();
            let before = picks(&job, &choosers, &candidates);
            let claimed = before[0];
            let heard: Vec<(PeerId, usize)> = choosers[1..].to_vec();
            let rest: Vec<u32> = candidates.iter().copied().filter(|f| *f != claimed).collect();
            for (i, (p, _)) in heard.iter().enumerate() {
                prop_assert_eq!(pick_frame(&job, p, &heard, &rest), Some(before[i + 1]));
            }
        }
    }
}
