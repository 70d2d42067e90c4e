//! The hub's API client: the `hub token|gateways|apps|…` commands are thin clients of the HTTP
//! API ([`commands`]), so anything they do can also be scripted with curl. [`ApiArgs`] says how
//! to reach the API; [`ApiClient`] makes the calls; [`print`] formats the answers; [`status`]
//! follows an install's progress; [`wait`] follows a deployment check.

pub mod commands;
pub mod fleet;
pub mod print;
pub mod status;
pub mod wait;

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::secret::Secret;

/// Encodes a path segment.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// How to reach the hub API.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Hub HTTP API address.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_API", default_value = "http://127.0.0.1:8080")]
    pub hub_api: String,
    /// File holding the admin token (the hub writes it to its data directory).
    #[arg(
        long,
        env = "ARGOCD_GATEWAY_ADMIN_TOKEN_FILE",
        default_value = "./hub-data/admin-token"
    )]
    pub admin_token_file: PathBuf,
    /// The admin token itself, or an API token (overrides --admin-token-file).
    #[arg(
        long,
        visible_alias = "token",
        env = "ARGOCD_GATEWAY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<Secret>,
    /// Print raw JSON instead of a table.
    #[arg(long, short = 'o', value_parser = ["table", "json"], default_value = "table")]
    pub output: String,
}

/// A small client of the hub API.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl ApiClient {
    /// A client from the flags.
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = match &args.admin_token {
            Some(t) if !t.is_empty() => t.clone(),
            _ => Secret::new(
                std::fs::read_to_string(&args.admin_token_file)
                    .with_context(|| {
                        format!(
                            "cannot read the admin token file {} (flag --admin-token-file; the hub prints its path at start)",
                            args.admin_token_file.display()
                        )
                    })?
                    .trim(),
            ),
        };
        let http = reqwest::Client::builder()
            .user_agent(format!("argocd-gateway/{}", crate::VERSION))
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            base: args.hub_api.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A request with the token, for answers that are read as they arrive.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(self.token.expose())
    }

    /// Sends a request and returns the JSON answer (null for 204).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(self.token.expose());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the hub API at {} (flag --hub-api)", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            bail!("hub API {} {}: {}", status.as_u16(), path, msg);
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("hub API {path} returned invalid JSON"))
    }
}
