//! API keys and base URLs: from the environment, else from `$XDG_CONFIG_HOME/meshd/cloud.env`
//! (`KEY=value` lines), which must be readable by its owner only. Keys are held in
//! [`ApiKey`], which never prints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{CloudError, Provider};
use crate::ledger::job::BlenderReq;

/// Where the config file is, as the error messages say it.
pub const FILE_HINT: &str = "~/.config/meshd/cloud.env";

pub const VAST_URL: &str = "https://console.vast.ai";
pub const CLORE_URL: &str = "https://api.clore.ai/v1";

/// A provider API key. No `Display`; `Debug` prints `ApiKey(…)`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key, for the one place that sends it: an HTTP header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(…)")
    }
}

/// Keys and base URLs for every provider, and how rented nodes are set up.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    keys: HashMap<Provider, ApiKey>,
    urls: HashMap<Provider, String>,
    pub node: NodeSettings,
}

/// How meshd sets up the machines it rents (all optional, from the same environment
/// variables or config file as the keys).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSettings {
    /// `MESHD_CLOUD_IMAGE`: the container image rented machines run.
    pub image: String,
    /// `MESHD_CLOUD_REMOTE_DIR`: where a node keeps meshd and its data (relative: in the
    /// login's home).
    pub remote_dir: String,
    /// `MESHD_CLOUD_LISTEN_IP`: the address the node's daemon listens on inside the machine.
    pub listen_ip: String,
    /// `MESHD_CLOUD_BLENDER_URL`: the Blender release (`.tar.xz`) installed on a machine
    /// whose image has none that fits; default: the job's submitting Blender (4.2.3 without
    /// one) from `blender_releases`.
    pub blender_url: Option<String>,
    /// `MESHD_CLOUD_BLENDER_RELEASES`: where Blender's releases are, laid out as
    /// download.blender.org lays them out (`BlenderX.Y/blender-X.Y.Z-linux-x64.tar.xz`).
    pub blender_releases: String,
    /// `MESHD_CLOUD_NODE_BINARY`: the meshd uploaded to nodes (default: this one).
    pub binary: Option<PathBuf>,
    /// `MESHD_CLOUD_POLL_SECS`: how often rentals are checked against the provider.
    pub poll_secs: u64,
    /// `MESHD_CLOUD_START_TIMEOUT_SECS`: longest wait for a machine to run and answer SSH.
    pub start_timeout_secs: u64,
}

/// The default image: CUDA's runtime on Ubuntu 24.04 (glibc new enough for a meshd built
/// on Debian 12); Blender is installed on first start.
pub const DEFAULT_IMAGE: &str = "nvidia/cuda:12.6.3-runtime-ubuntu24.04";
pub const BLENDER_RELEASES: &str = "https://download.blender.org/release";
/// Installed for machines rented without a job (or for a job sent without a Blender).
pub const DEFAULT_BLENDER_VERSION: &str = "4.2.3";

impl NodeSettings {
    /// The Blender release a machine installs when its image has none that fits: the
    /// configured URL, else the official Linux build of `version` (the job's submitting
    /// Blender, "4.2.3"), else of the default version, or of X.Y.0 where the job's
    /// requirement `require` ("X.Y+", "X.Y") does not admit the default.
    pub fn blender_url_for(&self, version: Option<&str>, require: Option<&str>) -> String {
        if let Some(url) = &self.blender_url {
            return url.clone();
        }
        let require = require.and_then(BlenderReq::parse);
        let fallback = match require {
            Some(r @ (BlenderReq::AtLeast(a, b) | BlenderReq::Series(a, b)))
                if !r.admits(DEFAULT_BLENDER_VERSION) =>
            {
                format!("{a}.{b}.0")
            }
            _ => DEFAULT_BLENDER_VERSION.to_string(),
        };
        let release = |v: &str| -> Option<(String, String)> {
            let v = v.split_whitespace().next()?;
            let parts: Vec<&str> = v.split('.').collect();
            let digits = |p: &&str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
            (parts.len() == 3 && parts.iter().all(digits))
                .then(|| (format!("{}.{}", parts[0], parts[1]), v.to_string()))
        };
        // The submitting Blender, unless it does not fit the job (a library saved by a newer one).
        let fits = |v: &&str| require.is_none_or(|r| r.admits(v));
        let (series, full) = version
            .filter(fits)
            .and_then(release)
            .or_else(|| release(&fallback))
            .unwrap_or_default();
        format!(
            "{}/Blender{series}/blender-{full}-linux-x64.tar.xz",
            self.blender_releases
        )
    }
}

impl CloudConfig {
    /// Reads the environment and the config file (the environment wins).
    pub fn load() -> Result<Self, CloudError> {
        let file = config_file();
        let from_file = match &file {
            Some(p) if p.exists() => read_file(p)?,
            _ => HashMap::new(),
        };
        Ok(Self::from_sources(|k| std::env::var(k).ok(), &from_file))
    }

    /// From explicit `NAME=value` settings only (the names of the environment variables),
    /// ignoring the environment and the config file.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::from_sources(|_| None, &map)
    }

    fn from_sources(env: impl Fn(&str) -> Option<String>, file: &HashMap<String, String>) -> Self {
        let get = |k: &str| {
            env(k)
                .or_else(|| file.get(k).cloned())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut keys = HashMap::new();
        let mut urls = HashMap::new();
        for p in [Provider::Vast, Provider::Clore] {
            if let Some(k) = get(p.key_env()) {
                keys.insert(p, ApiKey(k));
            }
            let default = match p {
                Provider::Vast => VAST_URL,
                Provider::Clore => CLORE_URL,
            };
            let url = get(p.url_env()).unwrap_or_else(|| default.to_string());
            urls.insert(p, url.trim_end_matches('/').to_string());
        }
        let num = |k: &str, default: u64| {
            get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        let node = NodeSettings {
            image: get("MESHD_CLOUD_IMAGE").unwrap_or_else(|| DEFAULT_IMAGE.into()),
            remote_dir: get("MESHD_CLOUD_REMOTE_DIR").unwrap_or_else(|| ".meshd".into()),
            listen_ip: get("MESHD_CLOUD_LISTEN_IP").unwrap_or_else(|| "0.0.0.0".into()),
            blender_url: get("MESHD_CLOUD_BLENDER_URL"),
            blender_releases: get("MESHD_CLOUD_BLENDER_RELEASES")
                .unwrap_or_else(|| BLENDER_RELEASES.into())
                .trim_end_matches('/')
                .to_string(),
            binary: get("MESHD_CLOUD_NODE_BINARY").map(PathBuf::from),
            poll_secs: num("MESHD_CLOUD_POLL_SECS", 30),
            start_timeout_secs: num("MESHD_CLOUD_START_TIMEOUT_SECS", 900),
        };
        CloudConfig { keys, urls, node }
    }

    pub fn key(&self, p: Provider) -> Option<&ApiKey> {
        self.keys.get(&p)
    }

    /// The key, or an error that says where to put one.
    pub fn require_key(&self, p: Provider) -> Result<&ApiKey, CloudError> {
        self.key(p).ok_or(CloudError::MissingKey(p))
    }

    pub fn url(&self, p: Provider) -> &str {
        self.urls.get(&p).map(String::as_str).unwrap_or_default()
    }
}

fn config_file() -> Option<PathBuf> {
    directories::BaseDirs::new().map(|d| d.config_dir().join("meshd").join("cloud.env"))
}

/// `KEY=value` lines; `#` starts a comment. Refused unless only its owner may read it.
fn read_file(path: &Path) -> Result<HashMap<String, String>, CloudError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| CloudError::Config(format!("cannot read {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CloudError::Config(format!(
            "{} holds API keys but others may read it: run chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CloudError::Config(format!("cannot read {}: {e}", path.display())))?;
    Ok(parse(&text))
}

fn parse(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_over_the_file_and_keys_never_print() {
        let file = parse(
            "# keys\nMESHD_VAST_API_KEY = \"file-key\"\nMESHD_CLORE_API_KEY=clore-file\nMESHD_CLORE_URL=http://127.0.0.1:9/v1/\n",
        );
        let env = |k: &str| (k == "MESHD_VAST_API_KEY").then(|| "env-key".to_string());
        let c = CloudConfig::from_sources(env, &file);
        assert_eq!(c.key(Provider::Vast).map(ApiKey::expose), Some("env-key"));
        assert_eq!(
            c.key(Provider::Clore).map(ApiKey::expose),
            Some("clore-file")
        );
        assert_eq!(c.url(Provider::Vast), VAST_URL);
        assert_eq!(c.url(Provider::Clore), "http://127.0.0.1:9/v1");
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("env-key") && !printed.contains("clore-file"),
            "{printed}"
        );
        let none = CloudConfig::from_sources(|_| None, &HashMap::new());
        let err = none.require_key(Provider::Clore).unwrap_err().to_string();
        assert!(err.contains("MESHD_CLORE_API_KEY"), "{err}");
    }

    #[test]
    fn a_config_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cloud.env");
        std::fs::write(&p, "MESHD_VAST_API_KEY=k\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_file(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("=k"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_file(&p).unwrap()["MESHD_VAST_API_KEY"], "k");
    }

    #[test]
    fn machines_install_the_jobs_own_blender_release() {
        let c = CloudConfig::from_sources(|_| None, &HashMap::new()).node;
        let official = "https://download.blender.org/release";
        assert_eq!(
            c.blender_url_for(Some("3.4.1"), Some("3.4+")),
            format!("{official}/Blender3.4/blender-3.4.1-linux-x64.tar.xz")
        );
        assert_eq!(
            c.blender_url_for(Some("4.5.1 LTS"), None),
            format!("{official}/Blender4.5/blender-4.5.1-linux-x64.tar.xz")
        );
        let default = format!("{official}/Blender4.2/blender-4.2.3-linux-x64.tar.xz");
        assert_eq!(c.blender_url_for(None, None), default);
        assert_eq!(c.blender_url_for(Some("4.2"), None), default, "not X.Y.Z");
        assert_eq!(c.blender_url_for(Some("5.0.1-rc"), None), default);
        assert_eq!(c.blender_url_for(None, Some("3.4+")), default, "4.2 fits");
        assert_eq!(
            c.blender_url_for(Some("3.4.1"), Some("4.3+")),
            format!("{official}/Blender4.3/blender-4.3.0-linux-x64.tar.xz"),
            "the submitting Blender does not fit (a library newer than the scene)"
        );
        // Sent without a Blender (--no-deps): the first release that fits the requirement.
        assert_eq!(
            c.blender_url_for(None, Some("4.3+")),
            format!("{official}/Blender4.3/blender-4.3.0-linux-x64.tar.xz")
        );
        assert_eq!(
            c.blender_url_for(None, Some("3.6")),
            format!("{official}/Blender3.6/blender-3.6.0-linux-x64.tar.xz")
        );
        let mirror = CloudConfig::from_sources(
            |k| (k == "MESHD_CLOUD_BLENDER_RELEASES").then(|| "http://127.0.0.1:9/r/".into()),
            &HashMap::new(),
        )
        .node;
        assert_eq!(
            mirror.blender_url_for(Some("3.4.1"), None),
            "http://127.0.0.1:9/r/Blender3.4/blender-3.4.1-linux-x64.tar.xz"
        );
        let fixed = CloudConfig::from_sources(
            |k| (k == "MESHD_CLOUD_BLENDER_URL").then(|| "http://x/b.tar.xz".into()),
            &HashMap::new(),
        )
        .node;
        assert_eq!(
            fixed.blender_url_for(Some("3.4.1"), Some("3.4+")),
            "http://x/b.tar.xz"
        );
    }
}
