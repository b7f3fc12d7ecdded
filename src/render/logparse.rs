//! Parser for Blender's console output, one line at a time, across versions.
//!
//! Handles the 2.8–4.x `Fra:N Mem:… | Time:… | …` status lines, the `Saved:` and
//! `Time:` lines that end a frame (3.x prints ` Time:` with a leading space, 4.x
//! without), and 5.x lines that CLOG prefixes with a timestamp (`[hh:]mm:ss.mmm`) and a
//! category (`01:02.345  render           | Saved: '…'`). 5.x prints its status lines only
//! when the `render` category logs at INFO (`--log render` or `--log-level info`), as
//! `Fra: 1 | Remaining: 00:00.00 | Mem: 2M | Sample 1/2`. The regexes follow
//! `reference/blender-cli.md` §3; `testdata/` holds real logs of 3.4, 4.2, 4.5 and 5.0.

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
    LazyLock::new(|| re(r"^(?:\d+:)?\d{2}:\d{2}\.\d{3}\s+(?:\d+M\s+)?[A-Za-z0-9_.]+\s+\| ?"));
static FRAME: LazyLock<Regex> = LazyLock::new(|| re(r"(?:^|\| )Fra: ?(\d+)\b"));
static SAMPLE: LazyLock<Regex> = LazyLock::new(|| re(r"\| Sample (\d+)/(\d+)"));
static EEVEE: LazyLock<Regex> = LazyLock::new(|| re(r"Rendering (\d+) / (\d+) samples"));
static REMAIN: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?:^|\| )Remaining: ?((?:\d+:)?\d+:\d+\.\d+)"));
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
    use std::path::Path;

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

    /// The real 5.0 status lines (`render` category at INFO): `Fra: N` and `Remaining: t`
    /// with a space, CLOG's hour field after an hour of uptime, CLOG `ERROR` lines ignored.
    #[test]
    fn blender_5_0_real_lines() {
        let log = "\
00:00.560  render           | Fra: 3 | Mem: 0M | Synchronizing object | Sun
00:00.566  render           | Fra: 3 | Remaining: 00:01.25 | Mem: 2M | Sample 1/4
00:00.575  render           | Fra: 3 | Mem: 2M | Sample 4/4
00:03.958  render           | Fra: 1 | Rendering 1 / 3 samples
01:00:00.693  render           | Saved: '/renders/out/frame_0003.png'
01:00:00.693  render           | Time: 00:00.13 (Saving: 00:00.11)
00:00.650  image            | ERROR Couldn't create directory for file /x/frame_0003.png: Not a directory
00:00.739  cycles           | WARNING CUEW initialization failed: Error opening the library
";
        assert_eq!(
            all(log),
            [
                Frame(3),
                Frame(3),
                Sample {
                    current: 1,
                    total: 4
                },
                Remaining(1.25),
                Frame(3),
                Sample {
                    current: 4,
                    total: 4
                },
                Frame(1),
                EeveeSample {
                    current: 1,
                    total: 3
                },
                Saved("/renders/out/frame_0003.png".into()),
                FrameTime(0.13),
            ]
        );
    }

    fn saved(ev: &[LogEvent]) -> Vec<&str> {
        ev.iter()
            .filter_map(|e| match e {
                Saved(p) => Some(p.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Checks a log recorded by `scripts/test-blender-versions.sh` (its `record_log` runs):
    /// frames 1-2 and then 3 (`--log render`) from the command line, a missing .blend, an
    /// unwritable output, then the driver: frame 1, the unwritable frame 3, frame 2.
    fn check_recorded(name: &str, log: &str) {
        let ev = all(log);
        assert_eq!(
            saved(&ev),
            [
                "/renders/out/frame_0001.png",
                "/renders/out/frame_0002.png",
                "/renders/out/frame_0003.png",
                "/renders/out/frame_0001.png",
                "/renders/out/frame_0002.png",
            ],
            "{name}"
        );
        // The `--log render` run reports progress on every version (5.x only there).
        assert!(ev.contains(&Frame(3)), "{name}");
        let total = Sample {
            current: 4,
            total: 4,
        };
        assert!(ev.contains(&total), "{name}");
        assert!(ev.iter().any(|e| matches!(e, Remaining(_))), "{name}");
        assert!(ev.iter().any(|e| matches!(e, FrameTime(_))), "{name}");
        let errors: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Error(m) => Some(m.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(errors.len(), 3, "{name}: {errors:?}");
        assert_eq!(
            errors[0], "Cannot read file \"/renders/nope.blend\": No such file or directory",
            "{name}"
        );
        for e in &errors[1..] {
            // The errno text differs: `Invalid argument` up to 4.5, `Not a directory` in 5.0.
            assert!(
                e.starts_with("Render error (")
                    && e.ends_with(") cannot save: '/renders/tiny.blend/x/frame_0003.png'"),
                "{name}: {e}"
            );
        }
        assert!(
            !ev.iter()
                .any(|e| matches!(e, SkippedExisting(_) | MissingFile(_) | CrashLog(_))),
            "{name}"
        );
    }

    #[test]
    fn recorded_4_2_23_cycles() {
        let log = include_str!("testdata/blender-4.2.23-cycles.log");
        check_recorded("4.2.23", log);
        // 4.x prints its status lines without `--log render` too, and `Time:` unindented.
        let first_run = log.split("$ blender").nth(1).unwrap_or_default();
        assert!(all(first_run).contains(&Frame(2)));
        assert!(log.lines().any(|l| l.starts_with("Time: ")));
    }

    #[test]
    fn recorded_4_5_15_cycles() {
        let log = include_str!("testdata/blender-4.5.15-cycles.log");
        check_recorded("4.5.15", log);
        let first_run = log.split("$ blender").nth(1).unwrap_or_default();
        assert!(all(first_run).contains(&Frame(2)));
    }

    #[test]
    fn recorded_5_0_1_cycles() {
        let log = include_str!("testdata/blender-5.0.1-cycles.log");
        check_recorded("5.0.1", log);
        // 5.0 at the default log level: only `Saved:`, no status or `Time:` lines.
        let first_run = log.split("$ blender").nth(1).unwrap_or_default();
        let ev = all(first_run);
        assert_eq!(saved(&ev).len(), 2);
        assert!(
            ev.iter().all(|e| matches!(e, Saved(_))),
            "default 5.0 output: {ev:?}"
        );
        assert!(log.contains("  render           | Saved: '"));
    }

    /// Any log the script recorded (e.g. for a newer patch release) passes the same checks.
    #[test]
    fn every_recorded_log() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/render/testdata");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.starts_with("blender-") && name.ends_with("-cycles.log")) {
                continue;
            }
            let log = std::fs::read_to_string(&path).unwrap();
            if log.starts_with("$ blender") {
                check_recorded(&name, &log);
                checked += 1;
            }
        }
        assert!(checked >= 3, "recorded logs in {}", dir.display());
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
