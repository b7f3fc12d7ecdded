//! `meshd cancel|pause|resume|priority|rm|retry JOB`.

use std::path::Path;

use clap::Args;

use super::ApiClient;
use crate::api::types::{ControlAction, ControlRequest, ControlResponse};

#[derive(Args, Debug)]
pub struct JobArg {
    /// A job id (or its first characters) or a job name, as `meshd status` lists them.
    pub job: String,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(data_dir: &Path, arg: JobArg, action: ControlAction) -> anyhow::Result<i32> {
    let client = ApiClient::connect(data_dir)?;
    let r: ControlResponse = client
        .post(
            "/v1/control",
            &ControlRequest {
                job: arg.job,
                action,
            },
        )
        .await?;
    if arg.json {
        outln!("{}", serde_json::to_string(&r)?);
        return Ok(0);
    }
    let what = match action {
        ControlAction::Cancel => "cancelled".to_string(),
        ControlAction::Pause => "paused".to_string(),
        ControlAction::Resume => "resumed".to_string(),
        ControlAction::Priority(p) => format!("now at priority {p}"),
        ControlAction::Remove => "forgotten here".to_string(),
        ControlAction::Retry => {
            outln!(
                "failed frames submitted again as job {} ({})",
                super::printable(&r.name),
                &r.id[..12]
            );
            return Ok(0);
        }
    };
    outln!("job {} ({}) {what}", super::printable(&r.name), &r.id[..12]);
    Ok(0)
}
