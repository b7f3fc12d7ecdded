//! Command-line interface: clap definitions and one module per command group.

use crate::api::types::ControlAction;

mod client;
mod cloud;
mod control;
mod fetch;
mod join;
mod rent;
mod status;
mod submit;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Hand a .blend to the mesh to render.
    Submit(Box<submit::SubmitArgs>),
    /// Jobs, frames done/total, who rendered what.
    Status {
        /// A job id (or its first characters) or a job name.
        job: Option<String>,
        #[arg(long)]
        json: bool,
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

/// Runs the parsed command. The returned code is the process exit status.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let data_dir = cli.data_dir();
    match cli.command {
        Command::Join(args) => join::run(data_dir, args).await,
        Command::Invite { json } => status::invite(&data_dir, json).await,
        Command::Submit(args) => submit::run(&data_dir, *args).await,
        Command::Status { job, json } => status::status(&data_dir, job.as_deref(), json).await,
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
