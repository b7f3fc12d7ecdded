//! Parser for Blender's console output, one line at a time, across versions.
//!
//! Handles the 2.8–4.x `Fra:N Mem:… | Time:… | …` status lines, the `Saved:` and
//! `Time:` lines that end a frame (3.x prints ` Time:` with a leading space, 4.x
//! without), and 5.x lines that CLOG prefixes with a timestamp and a category
//! (`01:02.345  render           | Saved: '…'`). The regexes follow
//! `reference/blender-cli.md` §3.

use std::sync::LazyLock;

use regex::Regex;

/// One fact read from a line of Blender output.
#[derive(Clone, Debug, PartialEq)]
pub enum LogEvent {
    /// `Fra:N`: a status line for frame N.
    Frame(u32),
    /// Cycles `Sample current/total`.
    Sample { current: u32, total: u32 },
    /// EEVEE `Rendering current / total samples`.
    EeveeSample { current: u32, total: u32 },
    /// Cycles' estimate of the time left for the frame, in seconds.
    Remaining(f64),
    /// An image was written to this path.
    Saved(String),
    /// The frame finished; its wall time in seconds (including saving).
    FrameTime(f64),
    /// An error Blender reported; the text after `Error: `, or a known fatal message.
    Error(String),
    /// Blender skipped a frame because its output exists (`use_overwrite` off).
    SkippedExisting(String),
    /// A file the scene needs is missing (path, or the rest of the warning).
    MissingFile(String),
    /// Blender crashed and wrote its crash report to this path.
    CrashLog(String),
}

fn re(pattern: &str) -> Regex {
    // The patterns are constants checked by the tests below.
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad built-in regex {pattern}: {e}"))
}

static CLOG_PREFIX: LazyLock<Regex> =
    LazyLock::new(|| re(r"^\d{1,3}:\d{2}\.\d{3}\s+[A-Za-z_.]+\s+\| ?"));
static FRAME: LazyLock<Regex> = LazyLock::new(|| re(r"(?:^|\| )Fra:(\d+)\b"));
static SAMPLE: LazyLock<Regex> = LazyLock::new(|| re(r"\| Sample (\d+)/(\d+)"));
static EEVEE: LazyLock<Regex> = LazyLock::new(|| re(r"Rendering (\d+) / (\d+) samples"));
static REMAIN: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?:^|\| )Remaining:((?:\d+:)?\d+:\d+\.\d+)"));
static SAVED: LazyLock<Regex> = LazyLock::new(|| re(r"Saved: '(.+)'$"));
static FRAMEEND: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?:^|\| )\s*Time: ((?:\d+:)?\d+:\d+\.\d+)(?: \(Saving: ([^)]+)\))?"));
static SKIPPED: LazyLock<Regex> = LazyLock::new(|| re(r#"(?i)skipping existing frame "(.+)""#));
static ERROR: LazyLock<Regex> = LazyLock::new(|| re(r"(?:^|\| )Error: (.*)$"));
static CANCEL: LazyLock<Regex> = LazyLock::new(|| re(r"\| Cancel \| (.+)$"));
static FATAL: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"((?:CUDA|OptiX|OPTIX|HIP|Metal|oneAPI) error[^|]*",
        r"|terminate called after throwing an instance of '[^']+'",
        r"|Malloc returns null[^|]*",
        r"|Out of GPU memory[^|]*|System is out of GPU memory[^|]*)"
    ))
});
static MISSING: LazyLock<Regex> =
    LazyLock::new(|| re(r"Warning: Path '(.+)' not found|Warning: Unable to open (.+)"));
static CRASH: LazyLock<Regex> = LazyLock::new(|| re(r"^Writing: (.+\.crash\.txt)\s*$"));

/// Parses `[h:]mm:ss.ff` into seconds.
pub fn parse_duration(s: &str) -> Option<f64> {
    let mut secs = 0.0;
    for part in s.trim().split(':') {
        let v: f64 = part.parse().ok()?;
        if v < 0.0 || !v.is_finite() {
            return None;
        }
        secs = secs * 60.0 + v;
    }
    Some(secs)
}

/// Strips the CLOG timestamp and category that 5.x puts before each line.
fn strip_clog(line: &str) -> &str {
    match CLOG_PREFIX.find(line) {
        Some(m) => &line[m.end()..],
        None => line,
    }
}

/// Everything `line` says, in the order listed by [`LogEvent`]; empty for other lines.
pub fn parse_line(line: &str) -> Vec<LogEvent> {
    let line = strip_clog(line.trim_end_matches(['\r', '\n']));
    let mut out = Vec::new();
    if let Some(c) = FRAME.captures(line)
        && let Ok(n) = c[1].parse()
    {
        out.push(LogEvent::Frame(n));
    }
    if let Some(c) = SAMPLE.captures(line)
        && let (Ok(current), Ok(total)) = (c[1].parse(), c[2].parse())
    {
        out.push(LogEvent::Sample { current, total });
    }
    if let Some(c) = EEVEE.captures(line)
        && let (Ok(current), Ok(total)) = (c[1].parse(), c[2].parse())
    {
        out.push(LogEvent::EeveeSample { current, total });
    }
    if let Some(secs) = REMAIN.captures(line).and_then(|c| parse_duration(&c[1])) {
        out.push(LogEvent::Remaining(secs));
    }
    if let Some(c) = SAVED.captures(line) {
        out.push(LogEvent::Saved(c[1].to_string()));
    }
    if let Some(secs) = FRAMEEND.captures(line).and_then(|c| parse_duration(&c[1])) {
        out.push(LogEvent::FrameTime(secs));
    }
    if let Some(c) = ERROR.captures(line) {
        out.push(LogEvent::Error(c[1].trim().to_string()));
    } else if let Some(c) = CANCEL.captures(line) {
        out.push(LogEvent::Error(c[1].trim().to_string()));
    } else if let Some(c) = FATAL.captures(line) {
        out.push(LogEvent::Error(c[1].trim().to_string()));
    }
    if let Some(c) = SKIPPED.captures(line) {
        out.push(LogEvent::SkippedExisting(c[1].to_string()));
    }
    if let Some(c) = MISSING.captures(line)
        && let Some(m) = c.get(1).or_else(|| c.get(2))
    {
        out.push(LogEvent::MissingFile(m.as_str().trim().to_string()));
    }
    if let Some(c) = CRASH.captures(line) {
        out.push(LogEvent::CrashLog(c[1].to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::LogEvent::*;
    use super::*;

    fn all(log: &str) -> Vec<LogEvent> {
        log.lines().flat_map(parse_line).collect()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("00:00.23"), Some(0.23));
        assert_eq!(parse_duration("01:02.50"), Some(62.5));
        assert_eq!(parse_duration("1:00:01.00"), Some(3601.0));
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn recorded_3_4_1_cycles() {
        let log = include_str!("testdata/blender-3.4.1-cycles.log");
        let ev = all(log);
        let saved: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Saved(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            saved,
            [
                "/renders/out/frame_0001.png",
                "/renders/out/frame_0002.png",
                "/renders/out/frame_0003.png",
                "/renders/out/frame_0003.png"
            ]
        );
        let times = ev.iter().filter(|e| matches!(e, FrameTime(_))).count();
        assert_eq!(times, 5, "3.x ` Time:` lines with a leading space");
        assert!(ev.contains(&FrameTime(0.34)));
        assert!(ev.contains(&Sample {
            current: 4,
            total: 4
        }));
        assert!(ev.contains(&Remaining(0.01)));
        assert!(ev.contains(&Frame(2)));
        let errors: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Error(m) => Some(m.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            errors,
            [
                "Cannot read file '/renders/nope.blend': No such file or directory",
                "Render error (Invalid argument) cannot save: \
                 '/nonexistent_root_dir/x/frame_0003.png'",
            ],
            "a Python `RuntimeError: Error:` traceback line is not a Blender error line"
        );
        // Status lines carry `Time:` without a space: never a frame end.
        let l = "Fra:1 Mem:10.57M (Peak 11.03M) | Time:00:00.10 | Mem:0.90M, Peak:0.90M \
                 | Scene, ViewLayer | Sample 4/4";
        assert_eq!(
            parse_line(l),
            [
                Frame(1),
                Sample {
                    current: 4,
                    total: 4
                }
            ]
        );
    }

    #[test]
    fn blender_4x_lines() {
        // Format strings of 4.x `stats_background` and `do_write_image_or_movie`.
        let log = "\
Fra:7 Mem:131.20M (Peak 131.88M) | Time:00:01.02 | Remaining:01:10.35 | Mem:96.14M, Peak:96.14M | Scene, ViewLayer | Sample 12/128
Fra:7 Mem:131.20M (Peak 131.88M) | Time:01:11.40 | Mem:96.14M, Peak:96.14M | Scene, ViewLayer | Finished
Saved: '/tmp/out/frame_0007.exr'
Time: 01:11.52 (Saving: 00:00.12)
Fra:8 Mem:50.00M (Peak 60.00M) | Time:00:02.79 | Rendering 25 / 64 samples
skipping existing frame \"/tmp/out/frame_0009.exr\"
Warning: Path '/home/a/tex/wood.png' not found
Warning: Unable to open /home/a/cache/fluid_0001.vdb
Fra:10 Mem:900.00M (Peak 900.00M) | Time:00:03.00 | Mem:7000.00M, Peak:7000.00M | Scene, ViewLayer | Cancel | CUDA error: Out of memory in cuMemAlloc(&device_pointer, size)
CUDA error: Illegal address in cuCtxSynchronize(), line 2113
terminate called after throwing an instance of 'std::bad_alloc'
Error: Found no Cycles device of the specified type
Writing: /tmp/blender_x/scene.crash.txt
";
        assert_eq!(
            all(log),
            [
                Frame(7),
                Sample {
                    current: 12,
                    total: 128
                },
                Remaining(70.35),
                Frame(7),
                Saved("/tmp/out/frame_0007.exr".into()),
                FrameTime(71.52),
                Frame(8),
                EeveeSample {
                    current: 25,
                    total: 64
                },
                SkippedExisting("/tmp/out/frame_0009.exr".into()),
                MissingFile("/home/a/tex/wood.png".into()),
                MissingFile("/home/a/cache/fluid_0001.vdb".into()),
                Frame(10),
                Error("CUDA error: Out of memory in cuMemAlloc(&device_pointer, size)".into()),
                Error("CUDA error: Illegal address in cuCtxSynchronize(), line 2113".into()),
                Error("terminate called after throwing an instance of 'std::bad_alloc'".into()),
                Error("Found no Cycles device of the specified type".into()),
                CrashLog("/tmp/blender_x/scene.crash.txt".into()),
            ]
        );
    }

    #[test]
    fn blender_5x_clog_lines() {
        // 5.x: CLOG category `render`, timestamp on, identifier padded to 16 chars.
        let log = "\
00:03.112  render           | Remaining:00:04.20 | Mem:12.00M, Peak:12.00M | Scene, ViewLayer | Sample 3/16
00:07.480  render           | Saved: '/srv/out/frame_12345.png'
00:07.481  render           | Time: 00:04.37 (Saving: 00:00.02)
01:00.000  render           | Skipping existing frame \"/srv/out/frame_0002.png\"
00:00.050  render           | Error: Cannot read file '/srv/x.blend': No such file or directory
";
        assert_eq!(
            all(log),
            [
                Sample {
                    current: 3,
                    total: 16
                },
                Remaining(4.2),
                Saved("/srv/out/frame_12345.png".into()),
                FrameTime(4.37),
                SkippedExisting("/srv/out/frame_0002.png".into()),
                Error("Cannot read file '/srv/x.blend': No such file or directory".into()),
            ]
        );
    }

    #[test]
    fn ordinary_lines_say_nothing() {
        for l in [
            "",
            "Blender 3.4.1",
            "Read blend: /tmp/t/tiny.blend",
            "Blender quit",
            "RuntimeError: Error: something",
            "@@MESHD@@ {\"event\":\"ready\"}",
            "Writing: /tmp/x.png",
        ] {
            assert!(parse_line(l).is_empty(), "{l:?}");
        }
    }
}
