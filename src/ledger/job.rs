//! The job specification: immutable once submitted, named by the hash of its encoding.

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::frameset::FrameSet;
use super::sign::Sig;
use crate::ids::{BlobId, JobId};
use crate::render::settings::RenderSettings;

/// Current `JobSpec` encoding version.
pub const JOB_SPEC_VERSION: u16 = 3;

/// Longest job name accepted from a peer or a user.
pub const MAX_JOB_NAME: usize = 200;

/// Everything a peer needs to render a job. `JobId = blake3(postcard(JobSpec))`, so two
/// peers that hold the same spec agree on its id without talking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub version: u16,
    pub name: String,
    /// The project manifest blob ([`crate::transfer::project::ProjectManifest`]): the .blend
    /// and every file it needs, laid out under one root.
    pub project: BlobId,
    pub frames: FrameSet,
    pub settings: RenderSettings,
    pub submitter: PeerId,
    pub created_unix_ms: u64,
    /// Higher renders first.
    pub priority: i32,
    /// Version of the submitting machine's Blender ("4.2.3"), when it had one.
    pub blender_version: Option<String>,
    /// Only peers whose Blender fits this [`BlenderReq`] render the job: "4.2" (that
    /// series; what submit sets by default, the submitting Blender's, so that every frame
    /// looks as the artist sees the scene) or "4.2+" (4.2 or newer; with --no-deps, the
    /// version that saved the files, since an older Blender cannot read them faithfully).
    pub require_blender: Option<String>,
    /// Width and height of every frame, as the submitting machine's Blender computed them
    /// (None without one, or with a cropped border): frames of another size are refused.
    pub size: Option<(u32, u32)>,
    /// The submitter's signature of the job id ([`super::sign::sign_job`]). Last, and not
    /// part of the id.
    pub sig: Sig,
}

impl JobSpec {
    /// The canonical encoding that the id hashes (not the whole spec: store and send it
    /// with postcard): the spec without its signature (postcard
    /// encodes a struct as its fields in order, and the signature, last, as 64 raw bytes).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs into a Vec cannot fail.
        let mut bytes = postcard::to_stdvec(self).unwrap_or_default();
        bytes.truncate(bytes.len().saturating_sub(std::mem::size_of::<Sig>()));
        bytes
    }

    pub fn id(&self) -> JobId {
        JobId::of(&self.encode())
    }

    /// Checks what a peer could get wrong. Returns a reason on failure.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != JOB_SPEC_VERSION {
            return Err(format!("unsupported job spec version {}", self.version));
        }
        if self.name.is_empty() || self.name.len() > MAX_JOB_NAME {
            return Err("job name must be 1 to 200 bytes".into());
        }
        if self.name.contains(['/', '\\', '\0']) || self.name == "." || self.name == ".." {
            return Err("job name must not contain path separators".into());
        }
        if self.name.chars().any(char::is_control) {
            return Err("job name must not contain control characters".into());
        }
        if let Some(v) = &self.blender_version
            && (v.is_empty() || v.len() > 64 || v.chars().any(char::is_control))
        {
            return Err("blender version is not a short printable string".into());
        }
        if let Some(v) = &self.require_blender
            && BlenderReq::parse(v).is_none()
        {
            return Err(format!(
                "required Blender version {v:?} is not MAJOR.MINOR or MAJOR.MINOR+"
            ));
        }
        if self.frames.is_empty() {
            return Err("job has no frames".into());
        }
        Ok(())
    }

    /// Whether a peer running Blender `version` ("4.2.3", "5.0.1 Alpha") may render this job.
    pub fn blender_fits(&self, version: &str) -> bool {
        match &self.require_blender {
            None => true,
            Some(_) if version == SIMULATED_BLENDER => true,
            Some(want) => BlenderReq::parse(want).is_some_and(|r| r.admits(version)),
        }
    }
}

/// The Blender version a `--simulate-render` peer advertises: it runs no Blender, so every
/// job's Blender requirement admits it.
pub const SIMULATED_BLENDER: &str = "simulated";

/// Which Blender versions may render a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlenderReq {
    /// `"4.2"`: that series only (4.2.x).
    Series(u16, u16),
    /// `"4.2+"`: 4.2 or newer.
    AtLeast(u16, u16),
}

impl BlenderReq {
    /// `"4.2"` or `"4.2+"`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.strip_suffix('+') {
            Some(base) => parse_major_minor(base).map(|(a, b)| Self::AtLeast(a, b)),
            None => parse_major_minor(s).map(|(a, b)| Self::Series(a, b)),
        }
    }

    /// What to tell a user who gave `s` that [`parse`](Self::parse) refused.
    pub fn parse_error(s: &str) -> String {
        format!(
            "--blender-version {s:?} is not MAJOR.MINOR or MAJOR.MINOR+: give it like 4.2 \
             (that series) or 4.2+ (4.2 or newer)"
        )
    }

    /// The series of Blender `version` ("4.2.3", "5.0.1 Alpha": `4.2`, `5.0`).
    pub fn series_of(version: &str) -> Option<Self> {
        version_major_minor(version).map(|(a, b)| Self::Series(a, b))
    }

    /// The requirement as `--blender-version` takes it (`4.2`, `4.2+`).
    pub fn spec(self) -> String {
        match self {
            Self::Series(a, b) => format!("{a}.{b}"),
            Self::AtLeast(a, b) => format!("{a}.{b}+"),
        }
    }

    /// Whether Blender `version` ("4.2.3", "5.0.1 Alpha") fits.
    pub fn admits(self, version: &str) -> bool {
        let Some(have) = version_major_minor(version) else {
            return false;
        };
        match self {
            Self::Series(a, b) => have == (a, b),
            Self::AtLeast(a, b) => have >= (a, b),
        }
    }
}

impl std::fmt::Display for BlenderReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Series(a, b) => write!(f, "{a}.{b}"),
            Self::AtLeast(a, b) => write!(f, "{a}.{b} or newer"),
        }
    }
}

/// MAJOR.MINOR of a Blender version string ("4.2.3", "5.0.1 Alpha").
fn version_major_minor(version: &str) -> Option<(u16, u16)> {
    let v = version.split_whitespace().next().unwrap_or("");
    let mut it = v.split('.');
    let major = it.next().and_then(|x| x.parse::<u16>().ok());
    let minor = it.next().and_then(|x| x.parse::<u16>().ok());
    major.zip(minor)
}

/// `"4.2"` → `(4, 2)`; anything else (`"4"`, `"4.2.1"`, `"x.y"`) → `None`.
pub fn parse_major_minor(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('.')?;
    if a.is_empty() || b.is_empty() || !(a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_minor_matches_only_that_series() {
        assert_eq!(parse_major_minor("4.2"), Some((4, 2)));
        for bad in ["4", "4.2.1", "x.y", ".2", "4.", "4.-1", ""] {
            assert_eq!(parse_major_minor(bad), None, "{bad:?}");
        }
        let mut spec = crate::ledger::state::tests::spec("1-3", 0, 1);
        assert!(spec.blender_fits("3.4.1"));
        spec.require_blender = Some("4.2".into());
        assert!(spec.blender_fits("4.2.3"));
        assert!(spec.blender_fits("4.2.0 LTS"));
        assert!(!spec.blender_fits("4.20.0"));
        assert!(!spec.blender_fits("4.5.1"));
        assert!(!spec.blender_fits("garbage"));
        assert!(spec.validate().is_ok());
        spec.require_blender = Some("4".into());
        assert!(spec.validate().is_err());
    }

    #[test]
    fn at_least_admits_that_version_and_newer() {
        assert_eq!(BlenderReq::parse("4.2+"), Some(BlenderReq::AtLeast(4, 2)));
        for bad in ["4+", "+", "4.2++", "4.2.1+", "+4.2"] {
            assert_eq!(BlenderReq::parse(bad), None, "{bad:?}");
        }
        let mut spec = crate::ledger::state::tests::spec("1-3", 0, 1);
        spec.require_blender = Some("4.3+".into());
        assert!(spec.validate().is_ok());
        for yes in ["4.3.0", "4.5.1 LTS", "5.0.1 Alpha", "4.10.0"] {
            assert!(spec.blender_fits(yes), "{yes}");
        }
        for no in ["4.2.9", "3.4.1", "garbage", ""] {
            assert!(!spec.blender_fits(no), "{no}");
        }
        assert!(spec.blender_fits(SIMULATED_BLENDER));
        assert_eq!(BlenderReq::AtLeast(4, 3).to_string(), "4.3 or newer");
        assert_eq!(BlenderReq::Series(4, 2).to_string(), "4.2");
    }

    #[test]
    fn a_version_names_its_series_as_submit_takes_it() {
        for (version, series) in [("3.4.1", "3.4"), ("5.0.1 Alpha", "5.0"), ("4.10.0", "4.10")] {
            let req = BlenderReq::series_of(version).unwrap();
            assert_eq!(req.spec(), series);
            assert_eq!(BlenderReq::parse(series), Some(req));
            assert!(req.admits(version));
        }
        assert_eq!(BlenderReq::series_of("garbage"), None);
        assert_eq!(BlenderReq::series_of(""), None);
        assert_eq!(BlenderReq::AtLeast(4, 2).spec(), "4.2+");
        assert!(!BlenderReq::series_of("3.4.1").unwrap().admits("5.0.1"));
    }
}
