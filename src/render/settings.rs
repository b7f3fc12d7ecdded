//! What a job asks of the renderer. Part of the hashed `JobSpec`, so every type here is
//! postcard-encoded: enums are append-only and fields are never reordered.

use serde::{Deserialize, Serialize};

/// Render engine override. `None` in [`RenderSettings::engine`] keeps the file's engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Engine {
    Cycles,
    Eevee,
    Workbench,
}

/// Output image format written by Blender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
    OpenExr,
    OpenExrMultilayer,
    Tiff,
}

/// Every extension [`OutputFormat::extension`] gives: what a written frame file can end in.
pub const FRAME_EXTENSIONS: [&str; 4] = ["png", "jpg", "exr", "tif"];

impl OutputFormat {
    /// File extension Blender uses for this format (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::OpenExr | OutputFormat::OpenExrMultilayer => "exr",
            OutputFormat::Tiff => "tif",
        }
    }

    /// The value of Blender's Python enum `ImageFormatSettings.file_format`.
    pub fn blender_name(self) -> &'static str {
        match self {
            OutputFormat::Png => "PNG",
            OutputFormat::Jpeg => "JPEG",
            OutputFormat::OpenExr => "OPEN_EXR",
            OutputFormat::OpenExrMultilayer => "OPEN_EXR_MULTILAYER",
            OutputFormat::Tiff => "TIFF",
        }
    }
}

/// A Cycles compute device type, in the order meshd prefers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeviceKind {
    Optix,
    Cuda,
    Hip,
    OneApi,
    Metal,
    Cpu,
}

impl DeviceKind {
    /// Preference order: OPTIX > CUDA > HIP > ONEAPI > METAL > CPU.
    pub const PREFERENCE: [DeviceKind; 6] = [
        DeviceKind::Optix,
        DeviceKind::Cuda,
        DeviceKind::Hip,
        DeviceKind::OneApi,
        DeviceKind::Metal,
        DeviceKind::Cpu,
    ];

    /// Blender's name for the type (`bpy` `Device.type`, `--cycles-device`).
    pub fn blender_name(self) -> &'static str {
        match self {
            DeviceKind::Optix => "OPTIX",
            DeviceKind::Cuda => "CUDA",
            DeviceKind::Hip => "HIP",
            DeviceKind::OneApi => "ONEAPI",
            DeviceKind::Metal => "METAL",
            DeviceKind::Cpu => "CPU",
        }
    }

    pub fn from_blender_name(s: &str) -> Option<Self> {
        Self::PREFERENCE
            .into_iter()
            .find(|k| k.blender_name().eq_ignore_ascii_case(s))
    }

    pub fn is_gpu(self) -> bool {
        self != DeviceKind::Cpu
    }
}

/// Which peers may render a job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct DeviceRequirement {
    /// Only peers with a GPU device.
    pub gpu_only: bool,
    /// Only peers with this device type.
    pub kind: Option<DeviceKind>,
    /// Only devices with at least this much memory, in MiB.
    pub min_vram_mib: Option<u64>,
}

/// Per-job overrides the Blender driver applies at load time. The user's file is never edited.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct RenderSettings {
    pub engine: Option<Engine>,
    pub format: OutputFormat,
    /// Bits per channel: 8 or 16 for PNG/TIFF, 16 or 32 for EXR. `None` keeps the format default.
    pub color_depth: Option<u8>,
    /// Scene inside the .blend to render; `None` renders the active scene.
    pub scene: Option<String>,
    /// Camera object to render through; `None` keeps the scene camera.
    pub camera: Option<String>,
    /// Resolution percentage, 1..=1000; `None` keeps the file's.
    pub resolution_pct: Option<u16>,
    /// Sample count override (Cycles samples / Eevee TAA samples).
    pub samples: Option<u32>,
    pub device: DeviceRequirement,
    /// Let Python inside the .blend run (only on peers that opted in with `--allow-scripts`).
    pub allow_scripts: bool,
    /// Accept frames that are entirely black or transparent.
    pub allow_blank: bool,
}
