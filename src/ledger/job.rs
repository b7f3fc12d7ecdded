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
    /// Only peers whose Blender has this major.minor ("4.2") render the job.
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
            && parse_major_minor(v).is_none()
        {
            return Err(format!("required Blender version {v:?} is not MAJOR.MINOR"));
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
            Some(want) => parse_major_minor(want).is_some_and(|w| {
                let v = version.split_whitespace().next().unwrap_or("");
                let mut it = v.split('.');
                let major = it.next().and_then(|x| x.parse::<u16>().ok());
                let minor = it.next().and_then(|x| x.parse::<u16>().ok());
                major.zip(minor) == Some(w)
            }),
        }
    }
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
}
