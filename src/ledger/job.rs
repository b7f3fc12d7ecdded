//! The job specification: immutable once submitted, named by the hash of its encoding.

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use super::frameset::FrameSet;
use crate::ids::{BlobId, JobId};
use crate::render::settings::RenderSettings;

/// Current `JobSpec` encoding version.
pub const JOB_SPEC_VERSION: u16 = 1;

/// Longest job name accepted from a peer or a user.
pub const MAX_JOB_NAME: usize = 200;

/// Everything a peer needs to render a job. `JobId = blake3(postcard(JobSpec))`, so two
/// peers that hold the same spec agree on its id without talking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub version: u16,
    pub name: String,
    /// Manifest of the .blend file.
    pub scene: BlobId,
    /// File name of the .blend as submitted (Blender resolves `//` paths next to it).
    pub scene_file: String,
    pub frames: FrameSet,
    pub settings: RenderSettings,
    pub submitter: PeerId,
    pub created_unix_ms: u64,
    /// Higher renders first.
    pub priority: i32,
}

impl JobSpec {
    /// The canonical encoding that the id hashes.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
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
        if self.scene_file.is_empty()
            || self.scene_file.len() > 255
            || self.scene_file.contains(['/', '\\', '\0'])
            || self.scene_file.starts_with('.')
        {
            return Err("scene file name is not a plain file name".into());
        }
        if self.frames.is_empty() {
            return Err("job has no frames".into());
        }
        Ok(())
    }
}
