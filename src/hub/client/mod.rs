//! The hub's API client: the `hub token|gateways|apps|…` commands are thin clients of the HTTP
//! API ([`commands`]), so anything they do can also be scripted with curl. [`ApiArgs`] says how
//! to reach the API; [`ApiClient`] makes the calls; [`print`] formats the answers; [`status`]
//! follows an install's progress; [`wait`] follows a deployment check.
//!
//! Every command ends with one of the documented exit codes ([`exit`]): scripts tell "the
//! application failed" (1) and "it did not happen in time" (2) from "the hub refused" (3),
//! "the hub could not be reached" (4) and "the command line is wrong" (64).

pub mod commands;
pub mod exit;
pub mod fleet;
pub mod print;
pub mod status;
pub mod wait;

use std::path::PathBuf;

use std::time::Duration;

use serde_json::Value;

pub use self::exit::ClientError;
use self::print::Output;
use crate::secret::Secret;

/// How long an ordinary API call may take. Calls that wait on purpose (`wait`) derive theirs
/// from the operation's own timeout instead ([`ApiClient::call_for`]).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a waiting call gets on top of the wait it asks the hub for: the hub answers at the
/// operation's deadline, so the answer has this long to travel.
pub const WAIT_MARGIN: Duration = Duration::from_secs(30);

/// How long to try to open a connection to the hub API before saying it cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Output format: a table for people, or the API's answer as JSON or YAML for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// A small client of the hub API.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl ApiClient {
    /// A client from the flags.
    pub fn new(args: &ApiArgs) -> Result<Self, ClientError> {
        let token = match &args.admin_token {
            Some(t) if !t.is_empty() => t.clone(),
            _ => Secret::new(
                std::fs::read_to_string(&args.admin_token_file)
                    .map_err(|e| {
                        ClientError::Usage(format!(
                            "cannot read the admin token file {}: {e} (flag --admin-token-file, or --admin-token; the hub prints the file's path at start)",
                            args.admin_token_file.display()
                        ))
                    })?
                    .trim(),
            ),
        };
        // No overall timeout on the client: each call sets its own (ordinary calls
        // CALL_TIMEOUT, waiting calls their wait plus WAIT_MARGIN, the change feed none).
        let http = reqwest::Client::builder()
            .user_agent(format!("argocd-gateway/{}", crate::VERSION))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: args.hub_api.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// The hub API address, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request with the token, for answers that are read as they arrive; the caller sets
    /// the timeout (none for a stream that never ends).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(self.token.expose())
    }

    /// Sends a request and returns the JSON answer (null for 204), within [`CALL_TIMEOUT`].
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        self.call_for(method, path, body, CALL_TIMEOUT).await
    }

    /// Like [`Self::call`] with the time the answer may take: a call that waits on purpose
    /// passes its wait plus [`WAIT_MARGIN`].
    pub async fn call_for(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let mut req = self.request(method, path).timeout(timeout);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            base: self.base.clone(),
            detail: if e.is_timeout() {
                format!("no answer within {}", humantime::format_duration(timeout))
            } else {
                crate::util::error_chain(&e)
            },
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unreachable)?;
        if !status.is_success() {
            let answer = serde_json::from_str::<Value>(&text).ok();
            let field = |k: &str| {
                answer
                    .as_ref()
                    .and_then(|v| v.get(k).and_then(Value::as_str).map(str::to_owned))
            };
            return Err(ClientError::Refused {
                status: status.as_u16(),
                path: path.to_owned(),
                message: field("error").unwrap_or(text),
                code: field("code"),
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Refused {
            status: status.as_u16(),
            path: path.to_owned(),
            message: format!("the answer is not JSON: {e}"),
            code: None,
        })
    }
}
