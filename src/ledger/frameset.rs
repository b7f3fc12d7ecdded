//! Sets of frame numbers: parsed from user input (`1-250`, `1,5,10-20`, `1-250x10`) and
//! stored as a canonical list of arithmetic runs.
//!
//! A `FrameSet` is part of the hashed `JobSpec`, so its encoding must depend only on which
//! frames it holds. The sorted frame numbers are split greedily, left to right, into
//! arithmetic runs; a run of two frames with a step other than 1 is written as two single
//! frames instead (`1,5`, not `1-5x4`). Every constructor produces that form and
//! deserialization rejects anything else.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Blender's last frame number (`MAXFRAME`).
pub const MAX_FRAME: u32 = 1_048_574;

/// Most frames one job may hold.
pub const MAX_FRAMES_PER_JOB: usize = 100_000;

/// The frames `start, start + step, ..., end` (inclusive). In a canonical set `end` is
/// reachable from `start`, and a single frame has `step == 1`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct FrameRange {
    pub start: u32,
    pub end: u32,
    pub step: u32,
}

impl FrameRange {
    fn single(frame: u32) -> Self {
        FrameRange {
            start: frame,
            end: frame,
            step: 1,
        }
    }

    /// Number of frames in the run. Assumes `step >= 1` and `start <= end`.
    fn count(&self) -> u64 {
        u64::from((self.end - self.start) / self.step) + 1
    }

    fn iter(&self) -> impl Iterator<Item = u32> + use<> {
        (self.start..=self.end).step_by(self.step as usize)
    }
}

impl fmt::Display for FrameRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else if self.step == 1 {
            write!(f, "{}-{}", self.start, self.end)
        } else {
            write!(f, "{}-{}x{}", self.start, self.end, self.step)
        }
    }
}

/// Why a frame set was refused. Each message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameSetError {
    #[error(
        "no frames given: write a frame like `7`, a range like `1-250` or a list like `1,5,10-20`"
    )]
    Empty,
    #[error("empty item in the frame list: remove the extra comma, e.g. `1,5,10-20`")]
    EmptyItem,
    #[error(
        "`{0}` is not a frame, range or step: use whole numbers, e.g. `7`, `1-250` or `1-250x10`"
    )]
    NotANumber(String),
    #[error("`{0}` has a negative frame: frames start at 0, e.g. `0-250`")]
    NegativeFrame(String),
    #[error("range `{item}` runs backwards: write `{fix}`")]
    ReversedRange { item: String, fix: String },
    #[error("`{0}` has step 0: the step after `x` must be 1 or more, e.g. `1-250x10`")]
    ZeroStep(String),
    #[error("frame {0} is past Blender's last frame: write frames from `0` to `{max}`", max = MAX_FRAME)]
    FrameTooLarge(String),
    #[error(
        "{count} frames is more than a job may hold ({max}): split them into several jobs or add a step, e.g. `1-250x10`",
        max = MAX_FRAMES_PER_JOB
    )]
    TooManyFrames { count: u64 },
    /// A set received from a peer that is not in canonical form.
    #[error("invalid frame set: {0}")]
    Invalid(String),
}

/// A set of frame numbers in canonical form. Equal sets have equal encodings.
///
/// At most [`MAX_FRAMES_PER_JOB`] frames, each at most [`MAX_FRAME`].
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "RawFrameSet")]
pub struct FrameSet {
    ranges: Vec<FrameRange>,
}

/// The unchecked shape of a `FrameSet` as it arrives from a peer.
#[derive(Deserialize)]
struct RawFrameSet {
    ranges: Vec<FrameRange>,
}

impl TryFrom<RawFrameSet> for FrameSet {
    type Error = FrameSetError;

    fn try_from(raw: RawFrameSet) -> Result<Self, Self::Error> {
        check_canonical(&raw.ranges)?;
        Ok(FrameSet { ranges: raw.ranges })
    }
}

/// Checks that `ranges` is exactly what [`compress`] makes of its frames, without expanding
/// more than [`MAX_FRAMES_PER_JOB`] frames.
fn check_canonical(ranges: &[FrameRange]) -> Result<(), FrameSetError> {
    let invalid = |msg: &str| Err(FrameSetError::Invalid(msg.to_string()));
    let mut total: u64 = 0;
    let mut prev_end: Option<u32> = None;
    for r in ranges {
        if r.step == 0 {
            return invalid("step 0");
        }
        if r.start > r.end {
            return invalid("range runs backwards");
        }
        if r.end > MAX_FRAME {
            return Err(FrameSetError::FrameTooLarge(r.end.to_string()));
        }
        if !(r.end - r.start).is_multiple_of(r.step) {
            return invalid("range end is not reachable from its start");
        }
        if prev_end.is_some_and(|p| r.start <= p) {
            return invalid("ranges unsorted or overlapping");
        }
        total += r.count();
        if total > MAX_FRAMES_PER_JOB as u64 {
            return Err(FrameSetError::TooManyFrames { count: total });
        }
        prev_end = Some(r.end);
    }
    let frames: Vec<u32> = ranges.iter().flat_map(FrameRange::iter).collect();
    if compress(&frames) != ranges {
        return invalid("ranges not in canonical form");
    }
    Ok(())
}

/// Splits sorted, unique frames greedily into arithmetic runs (the canonical form).
fn compress(frames: &[u32]) -> Vec<FrameRange> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let start = frames[i];
        let Some(&next) = frames.get(i + 1) else {
            out.push(FrameRange::single(start));
            break;
        };
        let step = next - start;
        let mut j = i + 1;
        while j + 1 < frames.len() && frames[j + 1] - frames[j] == step {
            j += 1;
        }
        if j == i + 1 && step != 1 {
            // Two frames with a gap read better as a list: `1,5`, not `1-5x4`.
            out.push(FrameRange::single(start));
            i += 1;
        } else {
            out.push(FrameRange {
                start,
                end: frames[j],
                step,
            });
            i = j + 1;
        }
    }
    out
}

impl FrameSet {
    /// The set of the given frames (any order, repeats allowed).
    pub fn from_frames(frames: impl IntoIterator<Item = u32>) -> Result<Self, FrameSetError> {
        let mut set = BTreeSet::new();
        for f in frames {
            if f > MAX_FRAME {
                return Err(FrameSetError::FrameTooLarge(f.to_string()));
            }
            set.insert(f);
            if set.len() > MAX_FRAMES_PER_JOB {
                return Err(FrameSetError::TooManyFrames {
                    count: set.len() as u64,
                });
            }
        }
        let sorted: Vec<u32> = set.into_iter().collect();
        Ok(FrameSet {
            ranges: compress(&sorted),
        })
    }

    /// The canonical runs, ascending.
    pub fn ranges(&self) -> &[FrameRange] {
        &self.ranges
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        // At most MAX_FRAMES_PER_JOB, so the sum fits.
        self.ranges.iter().map(|r| r.count() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, frame: u32) -> bool {
        let idx = self.ranges.partition_point(|r| r.start <= frame);
        let Some(r) = idx.checked_sub(1).and_then(|i| self.ranges.get(i)) else {
            return false;
        };
        frame <= r.end && (frame - r.start).is_multiple_of(r.step)
    }

    /// The frames in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges.iter().flat_map(FrameRange::iter)
    }

    /// The lowest frame.
    pub fn first(&self) -> Option<u32> {
        self.ranges.first().map(|r| r.start)
    }

    /// The highest frame.
    pub fn last(&self) -> Option<u32> {
        self.ranges.last().map(|r| r.end)
    }
}

/// The canonical text, e.g. `1-250`, `1,5,10-20`, `1-241x10`. Parses back to the same set
/// (except the empty set, which prints as an empty string).
impl fmt::Display for FrameSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Parses a non-negative decimal number, saturating at `u64::MAX`. `None` if `s` is empty
/// or holds anything but ASCII digits.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Parses one frame number of `item`.
fn parse_frame(s: &str, item: &str) -> Result<u32, FrameSetError> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(FrameSetError::NegativeFrame(item.to_string()));
    }
    let n = parse_digits(s).ok_or_else(|| FrameSetError::NotANumber(item.to_string()))?;
    if n > u64::from(MAX_FRAME) {
        return Err(FrameSetError::FrameTooLarge(s.to_string()));
    }
    // n <= MAX_FRAME < u32::MAX.
    Ok(n as u32)
}

/// Parses one list item: `7`, `1-250` or `1-250x10`.
fn parse_item(item: &str) -> Result<FrameRange, FrameSetError> {
    let (range, step) = match item.split_once(['x', 'X']) {
        Some((range, step)) => (range.trim(), Some(step.trim())),
        None => (item, None),
    };
    if let Some(rest) = range.strip_prefix('-') {
        return Err(
            if rest.trim_start().starts_with(|c: char| c.is_ascii_digit()) {
                FrameSetError::NegativeFrame(item.to_string())
            } else {
                FrameSetError::NotANumber(item.to_string())
            },
        );
    }
    let (start, end) = match range.split_once('-') {
        Some((a, b)) => (parse_frame(a, item)?, parse_frame(b, item)?),
        None => {
            let f = parse_frame(range, item)?;
            (f, f)
        }
    };
    let step = match step {
        None => 1,
        Some(s) => {
            let n = parse_digits(s).ok_or_else(|| FrameSetError::NotANumber(item.to_string()))?;
            if n == 0 {
                return Err(FrameSetError::ZeroStep(item.to_string()));
            }
            // A step past the last frame selects only `start`: clamp it.
            n.min(u64::from(MAX_FRAME) + 1) as u32
        }
    };
    if start > end {
        let fix = match step {
            1 => format!("{end}-{start}"),
            s => format!("{end}-{start}x{s}"),
        };
        return Err(FrameSetError::ReversedRange {
            item: item.to_string(),
            fix,
        });
    }
    // Canonical: the end is the last frame reached.
    let end = end - (end - start) % step;
    Ok(FrameRange { start, end, step })
}

/// Parses user input: a frame (`7`), a range (`1-250`), a stepped range (`1-250x10`) or a
/// comma-separated list of those (`1,5,10-20x2`). Spaces around items are ignored. The
/// frame count is checked before any frame is expanded.
impl FromStr for FrameSet {
    type Err = FrameSetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(FrameSetError::Empty);
        }
        let mut ranges = Vec::new();
        let mut count: u64 = 0;
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(FrameSetError::EmptyItem);
            }
            let r = parse_item(item)?;
            count += r.count();
            ranges.push(r);
        }
        if count > MAX_FRAMES_PER_JOB as u64 {
            return Err(FrameSetError::TooManyFrames { count });
        }
        let mut frames: Vec<u32> = ranges.iter().flat_map(FrameRange::iter).collect();
        frames.sort_unstable();
        frames.dedup();
        Ok(FrameSet {
            ranges: compress(&frames),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    fn parse(s: &str) -> FrameSet {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn frames(s: &str) -> Vec<u32> {
        parse(s).iter().collect()
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(frames("7"), vec![7]);
        assert_eq!(frames("0"), vec![0]);
        assert_eq!(frames("1-5"), vec![1, 2, 3, 4, 5]);
        assert_eq!(parse("1-250").len(), 250);
        assert_eq!(frames("1,5,10-12"), vec![1, 5, 10, 11, 12]);
        assert_eq!(frames("1-10x3"), vec![1, 4, 7, 10]);
        assert_eq!(frames("1-11x3"), vec![1, 4, 7, 10]);
        assert_eq!(frames("1-5x2, 20, 30-31"), vec![1, 3, 5, 20, 30, 31]);
        assert_eq!(frames(" 1 ,  5 ,10 - 12 x 2 "), vec![1, 5, 10, 12]);
        assert_eq!(frames("7x5"), vec![7]);
        assert_eq!(frames("1-9X4"), vec![1, 5, 9]);
        assert_eq!(frames("5,1,3,3"), vec![1, 3, 5]);
        assert_eq!(frames("1-3,2-4"), vec![1, 2, 3, 4]);
        assert_eq!(frames("10-20x99999999999999999999999"), vec![10]);
        assert_eq!(frames("1048574"), vec![MAX_FRAME]);
        assert_eq!(parse("1-100000").len(), MAX_FRAMES_PER_JOB);
    }

    #[test]
    fn canonical_display() {
        for (input, shown) in [
            ("7", "7"),
            ("1-250", "1-250"),
            ("1,5,10-20", "1,5,10-20"),
            ("1-250x10", "1-241x10"),
            ("1-241x10", "1-241x10"),
            ("1,2", "1-2"),
            ("1,5", "1,5"),
            ("1-5x4", "1,5"),
            ("1,2,3,5,7,9", "1-3,5-9x2"),
            ("3,2,1", "1-3"),
            ("1-10,5-20", "1-20"),
            ("0-10x2,1-11x2", "0-11"),
            ("1,5,6,7", "1,5-7"),
        ] {
            let set = parse(input);
            assert_eq!(set.to_string(), shown, "{input}");
            assert_eq!(parse(shown), set, "{input}");
        }
        assert_eq!(parse("1-250x10").first(), Some(1));
        assert_eq!(parse("1-250x10").last(), Some(241));
    }

    #[test]
    fn equal_sets_encode_equally() {
        let a = parse("1-10");
        let b = parse("1-5,6-10");
        let c = FrameSet::from_frames((1..=10).rev()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        let enc = postcard::to_stdvec(&a).unwrap();
        assert_eq!(enc, postcard::to_stdvec(&b).unwrap());
        assert_eq!(enc, postcard::to_stdvec(&c).unwrap());
    }

    #[test]
    fn empty_set() {
        let empty = FrameSet::from_frames([]).unwrap();
        assert!(empty.is_empty() && !empty.contains(0));
        assert_eq!((empty.len(), empty.first(), empty.last()), (0, None, None));
    }

    #[test]
    fn errors() {
        use FrameSetError::*;
        let err = |s: &str| s.parse::<FrameSet>().unwrap_err();
        let reversed = |item: &str, fix: &str| ReversedRange {
            item: item.into(),
            fix: fix.into(),
        };
        let cases = [
            ("", Empty),
            ("   ", Empty),
            ("1,,2", EmptyItem),
            ("1,", EmptyItem),
            (",1", EmptyItem),
            ("abc", NotANumber("abc".into())),
            ("1-", NotANumber("1-".into())),
            ("1-2-3", NotANumber("1-2-3".into())),
            ("1.5", NotANumber("1.5".into())),
            ("+5", NotANumber("+5".into())),
            ("1 0", NotANumber("1 0".into())),
            ("1-10xa", NotANumber("1-10xa".into())),
            ("1-10x", NotANumber("1-10x".into())),
            ("-", NotANumber("-".into())),
            ("-5", NegativeFrame("-5".into())),
            ("-3-10", NegativeFrame("-3-10".into())),
            ("5--3", NegativeFrame("5--3".into())),
            ("10-1", reversed("10-1", "1-10")),
            ("10-1x3", reversed("10-1x3", "1-10x3")),
            ("1-10x0", ZeroStep("1-10x0".into())),
            ("1048575", FrameTooLarge("1048575".into())),
            (
                "1-99999999999999999999",
                FrameTooLarge("99999999999999999999".into()),
            ),
            ("0-1048574", TooManyFrames { count: 1_048_575 }),
            ("1-100001", TooManyFrames { count: 100_001 }),
            ("1-1000000,1-1000000", TooManyFrames { count: 2_000_000 }),
        ];
        for (input, expected) in cases {
            let e = err(input);
            assert_eq!(e, expected, "{input:?}");
            // One line that shows what to write.
            let msg = e.to_string();
            assert!(!msg.contains('\n') && msg.contains('`'), "{msg}");
        }
        assert!(err("0-1048574").to_string().contains("100000"));
        assert!(err("1048575").to_string().contains("1048574"));
    }

    #[test]
    fn huge_inputs_rejected_quickly() {
        let t = Instant::now();
        let many = vec!["0-1048574"; 10_000].join(",");
        assert!(matches!(
            many.parse::<FrameSet>(),
            Err(FrameSetError::TooManyFrames { .. })
        ));
        assert!("0-1048574x1".parse::<FrameSet>().is_err());
        assert!(FrameSet::from_frames(0..u32::MAX).is_err());
        assert!(FrameSet::from_frames(std::iter::repeat_n(5, 1000)).is_ok());
        assert!(t.elapsed() < Duration::from_secs(5));
        let most = FrameSet::from_frames(0..MAX_FRAMES_PER_JOB as u32).unwrap();
        assert_eq!(most.len(), MAX_FRAMES_PER_JOB);
        let too_large = FrameSetError::FrameTooLarge("1048575".into());
        assert_eq!(FrameSet::from_frames([MAX_FRAME + 1]), Err(too_large));
    }

    fn decode(ranges: &[(u32, u32, u32)]) -> Result<FrameSet, postcard::Error> {
        let raw: Vec<FrameRange> = ranges
            .iter()
            .map(|&(start, end, step)| FrameRange { start, end, step })
            .collect();
        // Encoded like a FrameSet: a struct with one field.
        let bytes = postcard::to_stdvec(&(raw,)).unwrap();
        postcard::from_bytes(&bytes)
    }

    #[test]
    fn deserialize_validates() {
        assert_eq!(decode(&[]).unwrap(), FrameSet::from_frames([]).unwrap());
        assert_eq!(decode(&[(1, 1, 1), (5, 5, 1)]).unwrap(), parse("1,5"));
        assert_eq!(decode(&[(1, 9, 4)]).unwrap(), parse("1-9x4"));
        let bad: &[&[(u32, u32, u32)]] = &[
            &[(1, 10, 0)],                           // step 0
            &[(10, 1, 1)],                           // reversed
            &[(1, 10, 2)],                           // end not reachable
            &[(1, 1, 2)],                            // single frame with step != 1
            &[(1, 5, 4)],                            // two-frame stepped run
            &[(1, 5, 1), (3, 8, 1)],                 // overlapping
            &[(10, 12, 1), (1, 5, 1)],               // unsorted
            &[(1, 5, 1), (6, 8, 1)],                 // should be one run
            &[(1, 1, 1), (2, 2, 1)],                 // should be `1-2`
            &[(0, MAX_FRAME + 1, 1)],                // past MAX_FRAME
            &[(0, u32::MAX, 1)],                     // past MAX_FRAME, huge
            &[(0, 100_000, 1)],                      // too many frames
            &[(0, 60_000, 1), (60_002, 200_000, 1)], // too many in total
        ];
        for ranges in bad {
            assert!(decode(ranges).is_err(), "{ranges:?}");
        }
        // A length prefix far beyond the input fails without allocating it.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1, 1];
        assert!(postcard::from_bytes::<FrameSet>(&bytes).is_err());
    }

    fn arb_frameset() -> impl Strategy<Value = FrameSet> {
        let runs = prop::collection::vec((0u32..2_000, 1u32..40, 1u32..6), 0..6);
        let singles = prop::collection::vec(
            prop_oneof![0u32..3_000, (MAX_FRAME - 50)..=MAX_FRAME],
            0..20,
        );
        (runs, singles).prop_map(|(runs, singles)| {
            let expanded = runs
                .into_iter()
                .flat_map(|(s, n, step)| (0..n).map(move |i| s + i * step));
            FrameSet::from_frames(expanded.chain(singles)).unwrap()
        })
    }

    proptest! {
        #[test]
        fn display_parses_back(set in arb_frameset()) {
            prop_assume!(!set.is_empty());
            let back: FrameSet = set.to_string().parse().unwrap();
            prop_assert_eq!(back, set);
        }

        #[test]
        fn iter_sorted_unique_and_len(set in arb_frameset()) {
            let v: Vec<u32> = set.iter().collect();
            prop_assert!(v.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(v.len(), set.len());
            prop_assert_eq!(v.first().copied(), set.first());
            prop_assert_eq!(v.last().copied(), set.last());
            for f in v.iter().flat_map(|&f| [f.saturating_sub(1), f, f + 1, f + 2]) {
                prop_assert_eq!(set.contains(f), v.binary_search(&f).is_ok());
            }
            prop_assert_eq!(FrameSet::from_frames(v).unwrap(), set.clone());
        }

        #[test]
        fn postcard_round_trip(set in arb_frameset()) {
            let bytes = postcard::to_stdvec(&set).unwrap();
            let back: FrameSet = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, set);
        }

        #[test]
        fn parse_never_panics(s in "[0-9x, -]{0,24}") {
            let _ = s.parse::<FrameSet>();
        }
    }
}
