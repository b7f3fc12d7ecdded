//! Command-line interface: clap definitions and one module per command group.

use crate::api::types::ControlAction;

#[macro_use]
mod out;
mod client;
mod cloud;
pub mod config;
mod control;
mod fetch;
mod join;
mod rent;
mod status;
mod submit;
mod video;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use client::ApiClient;

#[derive(Parser, Debug)]
#[command(
    name = "meshd",
    version,
    about = "A peer-to-peer render mesh for Blender"
)]
pub struct Cli {
    /// Where this daemon keeps its identity, mesh key, database and blobs.
    #[arg(long, global = true, env = "MESHD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a daemon: found a new mesh, or join one with a ticket. Runs in the foreground.
    Join(join::JoinArgs),
    /// Print a ticket that lets another machine join this daemon's mesh.
    Invite {
        #[arg(long)]
        json: bool,
    },
    /// Blender's log of a frame, fetched from the peer that rendered it (or last tried).
    Logs {
        /// A job id (or its first characters) or a job name.
        job: String,
        frame: u32,
        #[arg(long)]
        json: bool,
    },
    /// Open the web dashboard in a browser, signed in (a one-time login link).
    Dashboard {
        /// Print the login link instead of opening a browser.
        #[arg(long)]
        print_url: bool,
    },
    /// Assemble a job's frames into a video with ffmpeg (the job must be complete here).
    Video(video::VideoArgs),
    /// Print a shell completion script: `meshd completions bash > /etc/bash_completion.d/meshd`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), or write one page per command into DIR with --out.
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Make a new mesh key, hand it to the peers here now, and switch: old tickets and the
    /// excluded peers can no longer connect. Peers away now need a new ticket.
    RotateKey {
        /// A peer id (from `meshd peers`) that must not get the new key; repeatable.
        #[arg(long, value_name = "PEER")]
        exclude: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Hand a .blend to the mesh to render.
    Submit(Box<submit::SubmitArgs>),
    /// Jobs, frames done/total, who rendered what.
    Status {
        /// A job id (or its first characters) or a job name.
        job: Option<String>,
        #[arg(long)]
        json: bool,
        /// Which frames each job lists: all, active (rendering now) or none. Default: all
        /// for `--json` or a selected job, none for the plain list (it shows no frames).
        #[arg(long, value_enum)]
        frames: Option<StatusFrames>,
    },
    /// Peers of the mesh: id, addresses, Blender, render device, frames rendered.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Free disk: remove stored files of jobs that are over (never those of running jobs or
    /// frames not yet delivered) and their work directories. Says what it freed.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Gather a job's frames into a directory on this machine, from whichever peers hold them.
    Fetch(fetch::FetchArgs),
    /// Stop a job for good: renders stop within seconds everywhere (run on the submitter).
    Cancel(control::JobArg),
    /// Stop rendering a job until `meshd resume` (run on the submitter).
    Pause(control::JobArg),
    /// Render a paused job again.
    Resume(control::JobArg),
    /// Set a job's priority: higher renders first (run on the submitter).
    Priority {
        #[command(flatten)]
        job: control::JobArg,
        /// The new priority.
        #[arg(allow_negative_numbers = true)]
        priority: i32,
    },
    /// Forget a job that is over on this machine: its state and bookkeeping go, its files
    /// with the next `meshd gc`. Written output files stay.
    Rm(control::JobArg),
    /// Render a job's failed frames again, as a new job writing to the same output dir (a
    /// failed job: every frame without a result; the job is cancelled)
    Retry(control::JobArg),
    /// GPUs rented from Vast.ai and Clore.ai.
    #[command(subcommand)]
    Cloud(cloud::CloudCommand),
}

impl Cli {
    fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(crate::daemon::data_dir_default)
    }
}

/// Parses the command line, with `meshd join`'s defaults from the config file
/// ([`config`]) for the flags it does not give. Exits on `--help`, `--version` and usage
/// errors, as clap does.
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Cli::command();
    let matches = cmd.clone().get_matches_from(&args);
    let Some(("join", given)) = matches.subcommand() else {
        return Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    };
    let Some(file) = config::path() else {
        return Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    };
    cmd.build();
    let extra = cmd
        .find_subcommand("join")
        .map(|join| config::join_args(&file, join, given))
        .unwrap_or_else(|| Ok(Vec::new()));
    let extra = match extra {
        Ok(extra) if extra.is_empty() => {
            return Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        }
        Ok(extra) => extra,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // The file's flags go right after `join`, before the command line's own.
    let at = args
        .iter()
        .enumerate()
        .position(|(i, a)| a == "join" && (i == 0 || args[i - 1] != "--data-dir"))
        .map_or(args.len(), |i| i + 1);
    let mut merged = args[..at].to_vec();
    merged.extend(extra);
    merged.extend_from_slice(&args[at..]);
    match Cli::try_parse_from(merged) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            eprintln!(
                "note: defaults for `meshd join` come from {}",
                file.display()
            );
            std::process::exit(2);
        }
    }
}

/// `meshd man`: the main page on stdout, or every page into `out`.
fn man(out: Option<&std::path::Path>) -> anyhow::Result<i32> {
    use anyhow::Context;
    let cmd = Cli::command();
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        out::write_bytes(&page);
        return Ok(0);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    outln!("man pages written to {}", dir.display());
    Ok(0)
}

/// Runs the parsed command. The returned code is the process exit status.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let data_dir = cli.data_dir();
    match cli.command {
        Command::Join(args) => join::run(data_dir, args).await,
        Command::Invite { json } => status::invite(&data_dir, json).await,
        Command::Video(args) => video::run(&data_dir, args).await,
        Command::Logs { job, frame, json } => status::logs(&data_dir, &job, frame, json).await,
        Command::Dashboard { print_url } => status::dashboard(&data_dir, print_url).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "meshd", &mut script);
            out::write_bytes(&script);
            Ok(0)
        }
        Command::Man { out } => man(out.as_deref()),
        Command::RotateKey { exclude, json } => status::rotate_key(&data_dir, exclude, json).await,
        Command::Submit(args) => submit::run(&data_dir, *args).await,
        Command::Status { job, json, frames } => {
            status::status(&data_dir, job.as_deref(), json, frames).await
        }
        Command::Peers { json } => status::peers(&data_dir, json).await,
        Command::Gc { json } => status::gc(&data_dir, json).await,
        Command::Fetch(args) => fetch::run(&data_dir, args).await,
        Command::Cancel(j) => control::run(&data_dir, j, ControlAction::Cancel).await,
        Command::Pause(j) => control::run(&data_dir, j, ControlAction::Pause).await,
        Command::Resume(j) => control::run(&data_dir, j, ControlAction::Resume).await,
        Command::Priority { job, priority } => {
            control::run(&data_dir, job, ControlAction::Priority(priority)).await
        }
        Command::Rm(j) => control::run(&data_dir, j, ControlAction::Remove).await,
        Command::Retry(j) => control::run(&data_dir, j, ControlAction::Retry).await,
        Command::Cloud(c) => cloud::run(&data_dir, c).await,
    }
}

/// Text from a file or a peer, made safe to print: control characters (terminal escapes,
/// newlines that forge lines) are shown escaped instead of acted on.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// `meshd status --frames`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFrames {
    All,
    Active,
    None,
}
