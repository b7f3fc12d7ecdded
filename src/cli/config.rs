//! `$XDG_CONFIG_HOME/meshd/config.toml`: defaults for `meshd join`, under `[join]`, keyed by
//! the long flag names. A flag given on the command line (or through its environment
//! variable) wins over the file; a list given there replaces the file's list.
//!
//! ```toml
//! [join]
//! listen = ["/ip4/0.0.0.0/tcp/4747"]
//! blender = "/opt/blender-4.2/blender"
//! replicas = 3
//! cache-size = "50G"
//! allow-scripts = true
//! trust-submitter = ["12D3KooW..."]
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The config file's place: `$XDG_CONFIG_HOME/meshd/config.toml` (`~/.config/...`).
pub fn path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "meshd").map(|d| d.config_dir().join("config.toml"))
}

/// The arguments the config file adds to `meshd join`: its settings for every flag that
/// `given` (the command line as parsed) left at its default. `join` is the join command's
/// definition, for the flag names. Errors are one line naming the file.
pub fn join_args(file: &Path, join: &Command, given: &ArgMatches) -> Result<Vec<OsString>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let bad = |what: String| format!("{}: {what}", file.display());
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(one_line(e.message())))?;
    let mut out = Vec::new();
    for (section, value) in &doc {
        if section != "join" {
            return Err(bad(format!(
                "unknown section [{section}]: only [join] is read"
            )));
        }
        let toml::Value::Table(table) = value else {
            return Err(bad("`join` must be a table: write [join]".into()));
        };
        for (key, value) in table {
            let arg = join
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .ok_or_else(|| {
                    bad(format!(
                        "unknown key `{key}` in [join]: use the long flag names of `meshd join --help`"
                    ))
                })?;
            let id = arg.get_id().as_str();
            if matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            let flag = format!("--{key}");
            let takes_value = arg.get_action().takes_values();
            match value {
                toml::Value::Boolean(b) if !takes_value => {
                    if *b {
                        out.push(flag.into());
                    }
                }
                toml::Value::Array(items) if takes_value => {
                    for item in items {
                        out.push(flag.clone().into());
                        out.push(scalar(item).ok_or_else(|| {
                            bad(format!("`{key}` must be a list of strings or numbers"))
                        })?);
                    }
                }
                v if takes_value => {
                    out.push(flag.into());
                    out.push(
                        scalar(v)
                            .ok_or_else(|| bad(format!("`{key}` must be a string or a number")))?,
                    );
                }
                _ => return Err(bad(format!("`{key}` is a switch: write {key} = true"))),
            }
        }
    }
    Ok(out)
}

fn scalar(v: &toml::Value) -> Option<OsString> {
    match v {
        toml::Value::String(s) => Some(s.into()),
        toml::Value::Integer(i) => Some(i.to_string().into()),
        toml::Value::Float(f) => Some(f.to_string().into()),
        _ => None,
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

    fn args_for(config: &str, cli: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, config).unwrap();
        let cmd = Cli::command();
        let mut argv = vec!["meshd", "join"];
        argv.extend_from_slice(cli);
        let m = cmd.clone().try_get_matches_from(argv).unwrap();
        let (_, given) = m.subcommand().unwrap();
        let join = cmd.find_subcommand("join").unwrap();
        join_args(&file, join, given)
            .map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn settings_become_flags_unless_given() {
        let cfg = "[join]\nreplicas = 3\nallow-scripts = true\nno-mdns = false\n\
                   peer = [\"/ip4/10.0.0.5/tcp/4747\"]\nsimulate-render = 0.5\n";
        let mut a = args_for(cfg, &[]).unwrap();
        a.sort();
        let mut want = vec![
            "--replicas",
            "3",
            "--allow-scripts",
            "--peer",
            "/ip4/10.0.0.5/tcp/4747",
            "--simulate-render",
            "0.5",
        ];
        want.sort();
        assert_eq!(a, want);
        // The command line wins, lists included.
        let a = args_for(cfg, &["--replicas", "1", "--peer", "/ip4/10.0.0.6/tcp/1"]).unwrap();
        assert!(
            !a.iter().any(|s| s == "--replicas" || s == "--peer"),
            "{a:?}"
        );
    }

    #[test]
    fn mistakes_are_one_line_naming_the_file() {
        for (cfg, want) in [
            ("[join]\nreplica = 3\n", "unknown key `replica`"),
            ("[submit]\nx = 1\n", "unknown section [submit]"),
            ("[join]\nallow-scripts = \"yes\"\n", "is a switch"),
            ("[join]\nreplicas = [true]\n", "list of strings or numbers"),
            ("[join\n", "config.toml"),
        ] {
            let e = args_for(cfg, &[]).unwrap_err();
            assert!(
                e.contains(want) && e.contains("config.toml") && !e.contains('\n'),
                "{e}"
            );
        }
        assert_eq!(args_for("", &[]).unwrap(), Vec::<String>::new());
    }
}
