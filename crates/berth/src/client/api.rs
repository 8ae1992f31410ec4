//! A small blocking client for the Berth API: finds the URL and key (flags and environment,
//! else the files `berth up` leaves in the data directory), sends JSON, and turns the
//! API's error shape into a readable error. The key never appears in an error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use catalog::Secret;
use clap::Args;
use serde_json::Value;

#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// API URL; defaults to the one `berth up` wrote in the data directory.
    #[arg(long, env = "BERTH_API_URL", global = true)]
    pub api_url: Option<String>,
    /// Data directory of a local `berth up`, for its API URL and admin key
    /// [default: ./berth-data, else /var/lib/berth].
    #[arg(long, env = "BERTH_DATA", global = true)]
    pub data: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct Api {
    agent: ureq::Agent,
    base: String,
    key: Secret,
}

fn read_file(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Where [`api_key_and_source`] found the key, for commands that say which key they use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `BERTH_API_KEY` environment variable.
    Env,
    /// The admin key file a local `berth up` wrote (`<data>/admin.key`).
    AdminKeyFile(PathBuf),
}

/// The API key from BERTH_API_KEY, else the admin key a local `berth up` wrote.
pub fn api_key(opts: &ClientOpts) -> Option<Secret> {
    api_key_and_source(opts).map(|(key, _)| key)
}

/// [`api_key`], and where it came from.
pub fn api_key_and_source(opts: &ClientOpts) -> Option<(Secret, KeySource)> {
    if let Some(key) = std::env::var("BERTH_API_KEY").ok().filter(|k| !k.is_empty()) {
        return Some((Secret::new(key), KeySource::Env));
    }
    let path = crate::datadir::for_client(opts.data.clone()).join("admin.key");
    read_file(&path).map(|key| (Secret::new(key), KeySource::AdminKeyFile(path)))
}

impl Api {
    pub fn new(opts: &ClientOpts) -> anyhow::Result<Api> {
        let key = api_key(opts).context(
            "no API key: set BERTH_API_KEY, or run on the machine of `berth up` (with --data DIR)",
        )?;
        Self::with_key(opts, key)
    }

    pub fn with_key(opts: &ClientOpts, key: Secret) -> anyhow::Result<Api> {
        let data = crate::datadir::for_client(opts.data.clone());
        let base = opts.api_url.clone().or_else(|| read_file(&data.join("api.url"))).context(
            "no API URL: set BERTH_API_URL, or run on the machine of `berth up` (with --data DIR)",
        )?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Ok(Api { agent, base: base.trim_end_matches('/').to_owned(), key })
    }

    /// A GET whose error statuses are returned, not raised: `Err((status, message))`.
    pub fn get_status(&self, path: &str) -> anyhow::Result<Result<Value, (u16, String)>> {
        self.exchange("GET", path, None)
    }

    /// A GET of a document that is not JSON (`/v1/tls/ca.pem`); error statuses are returned as
    /// by [`Api::get_status`].
    pub fn get_text(&self, path: &str) -> anyhow::Result<Result<String, (u16, String)>> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| anyhow::anyhow!("cannot reach the Berth API at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().context("reading the API response")?;
        if status >= 400 {
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = json["error"]["message"].as_str().unwrap_or(text.as_str());
            return Ok(Err((status, format!("{message} (HTTP {status})"))));
        }
        Ok(Ok(text))
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send("POST", path, Some(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send("PATCH", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send("DELETE", path, None)
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        match self.exchange(method, path, body)? {
            Ok(json) => Ok(json),
            Err((_, message)) => Err(anyhow::anyhow!(message)),
        }
    }

    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Result<Value, (u16, String)>> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.key.expose());
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            ("PATCH", body) => self
                .agent
                .patch(&url)
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(body.map(Value::to_string).unwrap_or_default()),
            (_, body) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(body.map(Value::to_string).unwrap_or_default()),
        };
        let mut response =
            sent.map_err(|e| anyhow::anyhow!("cannot reach the Berth API at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().context("reading the API response")?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            let code = json["error"]["code"].as_str().unwrap_or("error");
            let message = json["error"]["message"].as_str().unwrap_or(text.as_str());
            return Ok(Err((status, format!("{message} ({code}, HTTP {status})"))));
        }
        Ok(Ok(json))
    }

    /// Long-polls a job until it finishes.
    pub fn wait_job(&self, id: &str) -> anyhow::Result<Value> {
        loop {
            let job = self.get(&format!("/v1/jobs/{id}?wait=20"))?;
            if matches!(job["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return Ok(job);
            }
        }
    }
}
