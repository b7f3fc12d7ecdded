//! The CLI's side of the local API: finds the daemon through its data dir.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::types::{ApiEndpoint, ErrorBody};

pub struct ApiClient {
    data_dir: std::path::PathBuf,
    http: reqwest::Client,
    base: String,
    token: String,
}

fn not_running(data_dir: &Path) -> anyhow::Error {
    anyhow!(
        "no meshd daemon is running for data dir {}: start one with `meshd join` (or pass --data-dir)",
        data_dir.display()
    )
}

impl ApiClient {
    pub fn connect(data_dir: &Path) -> anyhow::Result<Self> {
        let ep: ApiEndpoint =
            crate::daemon::read_endpoint(data_dir).ok_or_else(|| not_running(data_dir))?;
        Ok(ApiClient {
            data_dir: data_dir.to_path_buf(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .context("HTTP client")?,
            base: format!("http://{}", ep.addr),
            token: ep.token,
        })
    }

    async fn finish<T: DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<T> {
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .context("unreadable answer from the daemon");
        }
        let body: Option<ErrorBody> = resp.json().await.ok();
        match body {
            Some(b) => bail!("{}", b.error),
            None => bail!("the daemon answered {status}"),
        }
    }

    /// A daemon that left `api.json` behind (killed) refuses connections: say it is not running.
    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            not_running(&self.data_dir)
        } else {
            anyhow!("cannot reach the daemon at {}: {e}", self.base)
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get_query(path, &[]).await
    }

    /// `GET path?k=v&…`, the values URL-encoded.
    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Self::finish(resp).await
    }

    /// Like [`Self::post`], but hands back the daemon's error body when it refused.
    pub async fn post_or_refusal<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<Result<T, ErrorBody>> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Ok(resp
                .json()
                .await
                .context("unreadable answer from the daemon")?));
        }
        match resp.json::<ErrorBody>().await {
            Ok(b) => Ok(Err(b)),
            Err(_) => bail!("the daemon answered {status}"),
        }
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        match self.post_or_refusal(path, body).await? {
            Ok(t) => Ok(t),
            Err(refusal) => bail!("{}", refusal.error),
        }
    }
}
