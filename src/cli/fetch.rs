//! `meshd fetch JOB --out DIR`: a job's frames, from whichever peers hold them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::ApiClient;
use crate::api::types::{FetchRequest, SubmitResponse};

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// A job id (or its first characters) or a job name, as `meshd status` lists them.
    pub job: String,
    /// Where to write the frames (frame_####.<ext>); created if missing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Return at once; the daemon goes on writing frames as they can be fetched.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the answer as JSON (and do not wait).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(data_dir: &Path, args: FetchArgs) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let out_dir = std::path::absolute(&args.out)
        .with_context(|| format!("cannot resolve {}", args.out.display()))?;
    let resp: SubmitResponse = client
        .post(
            "/v1/fetch",
            &FetchRequest {
                job: args.job,
                out_dir,
            },
        )
        .await?;
    if args.json {
        outln!("{}", serde_json::to_string(&resp)?);
        return Ok(0);
    }
    if args.no_wait {
        outln!(
            "writing the {} frames of {} into {}",
            resp.frames_total,
            super::printable(&resp.name),
            resp.out_dir.display()
        );
        return Ok(0);
    }
    super::submit::wait(&client, &resp).await
}
