//! `hub api-token create|list|revoke` (API tokens with roles), `hub events` (follow the change
//! feed, resuming after a dropped connection from the last id it printed) and `hub timeline`
//! (an application's or a gateway's state transitions).

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use super::commands::FilterArgs;
use super::exit::ClientError;
use super::print::{print_table, s};
use super::{ApiArgs, ApiClient, enc};

/// API token subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token; it is printed once (the hub keeps only its hash).
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// Who or what holds it, e.g. ci-deploy.
        #[arg(long)]
        name: String,
        /// viewer (read, feed, wait), operator (plus sync, refresh, health checks and other
        /// application actions) or admin (plus tokens, gateways, desired version).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Lifetime (for example 90d); without it the token does not expire.
        #[arg(long, value_parser = crate::util::parse_duration)]
        ttl: Option<Duration>,
    },
    /// List API tokens (never their secrets).
    List(ApiArgs),
    /// Revoke an API token; page sessions opened with it end too.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        /// Token id.
        id: String,
    },
}

/// Flags of `hub events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Start after this event id (default: only new events).
    #[arg(long)]
    pub since: Option<i64>,
    /// Only this gateway's events.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Only these event types (comma-separated), e.g. application.upserted,gateway.disconnected.
    #[arg(long)]
    pub types: Option<String>,
    /// Only application events whose application matches, before or after the change.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after this many events.
    #[arg(long)]
    pub max: Option<u64>,
}

/// Flags of `hub timeline`.
#[derive(Debug, clap::Args)]
pub struct TimelineArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Gateway id.
    pub gateway: String,
    /// One application as namespace/name (default: every application of the gateway).
    pub app: Option<String>,
    /// How far back: a duration (24h) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many points, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// Runs `hub api-token …`.
pub async fn api_token(cmd: ApiTokenCommand) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match cmd {
        ApiTokenCommand::Create { api, name, role, ttl } => {
            let mut body = serde_json::json!({ "name": name, "role": role });
            if let Some(t) = ttl {
                body["ttlSeconds"] = t.as_secs().max(1).into();
            }
            let v = ApiClient::new(&api)?
                .call(Method::POST, "/api/v1/api-tokens", Some(body))
                .await?;
            api.output.emit(&v, |v| {
                println!("token:    {}", s(v, "token"));
                println!("id:       {}", s(v, "id"));
                println!("name:     {}", s(v, "name"));
                println!("role:     {}", s(v, "role"));
                println!("expires:  {}", s(v, "expiresAt"));
                println!("\nStore the token now: the hub keeps only its hash and cannot show it again.");
                println!(
                    "Use it as `Authorization: Bearer <token>`, with --admin-token, or to log in on the status page."
                );
            })?;
        }
        ApiTokenCommand::List(api) => {
            let v = ApiClient::new(&api)?
                .call(Method::GET, "/api/v1/api-tokens", None)
                .await?;
            api.output.emit(&v, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .iter()
                    .map(|t| {
                        ["id", "name", "role", "state", "createdAt", "expiresAt", "lastUsedAt"]
                            .iter()
                            .map(|k| s(t, k))
                            .collect()
                    })
                    .collect();
                print_table(
                    &["ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED"],
                    &rows,
                );
            })?;
        }
        ApiTokenCommand::Revoke { api, id } => {
            ApiClient::new(&api)?
                .call(Method::DELETE, &format!("/api/v1/api-tokens/{}", enc(&id)), None)
                .await?;
            api.output
                .emit(&serde_json::json!({ "id": id, "revoked": true }), |_| {
                    println!("revoked API token {id}")
                })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn items(v: &Value) -> Vec<Value> {
    v.get("items").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// One event as a line for people.
fn event_line(e: &Value) -> String {
    let kind = e.get("type").and_then(Value::as_str).unwrap_or("");
    let detail = match kind {
        "application.upserted" | "application.deleted" => {
            let a = e.get("application").cloned().unwrap_or(Value::Null);
            let status = |k: &str| a.get(k).map(|x| s(x, "status")).unwrap_or_else(|| "-".into());
            let changed = e
                .get("changed")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            format!(
                "{} health={} sync={}{}",
                s(e, "key"),
                status("health"),
                status("sync"),
                if changed.is_empty() {
                    String::new()
                } else {
                    format!(" changed={changed}")
                }
            )
        }
        "gateway.connected" => format!(
            "version {}",
            e.get("gateway").map(|g| s(g, "version")).unwrap_or_default()
        ),
        "gateway.disconnected" => s(e, "reason"),
        "gateway.health" => e.get("health").map(|h| s(h, "status")).unwrap_or_default(),
        _ => String::new(),
    };
    format!(
        "{:>8}  {}  {:<22}  {}  {}",
        s(e, "id"),
        s(e, "at"),
        kind,
        s(e, "gatewayId"),
        detail
    )
}

/// Runs `hub events`: prints events until interrupted (or `--max`), reconnecting from the last
/// id after a dropped connection.
pub async fn events(a: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&a.api)?;
    let mut query: Vec<(String, String)> = vec![("format".into(), "ndjson".into())];
    for (k, v) in [("gateway", &a.gateway), ("types", &a.types)] {
        if let Some(v) = v {
            query.push((k.into(), v.clone()));
        }
    }
    query.extend(a.filter.query());
    // Without --since, start at the newest id now: a reconnect then resumes from it, so nothing
    // that happens while the connection is down is missed.
    let mut since = match a.since {
        Some(s) => Some(s),
        None => client
            .call(reqwest::Method::GET, "/api/v1/applications?limit=1", None)
            .await?
            .get("lastEventId")
            .and_then(Value::as_i64),
    };
    let mut printed = 0u64;
    let mut backoff = crate::util::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let mut q = query.clone();
        if let Some(id) = since {
            q.push(("since".into(), id.to_string()));
        }
        let qs: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        let resp = client
            .request(reqwest::Method::GET, &format!("/api/v1/events?{qs}"))
            // The feed never ends by itself; the client's usual 60 s limit would cut it.
            .timeout(Duration::from_secs(365 * 24 * 3600))
            .send()
            .await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let msg = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or(text);
                return Err(ClientError::Refused {
                    status: status.as_u16(),
                    path: "/api/v1/events".into(),
                    message: msg,
                    code: None,
                }
                .into());
            }
            Err(e) => {
                let wait = backoff.next_delay();
                eprintln!("cannot reach the hub's change feed ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.reset();
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let Ok(e) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                match e.get("type").and_then(Value::as_str) {
                    Some("heartbeat") => continue,
                    Some("error") => anyhow::bail!("{}", s(&e, "error")),
                    _ => {}
                }
                if let Some(id) = e.get("id").and_then(Value::as_i64) {
                    since = Some(id);
                }
                if !a.api.output.emit_line(&e, event_line) {
                    return Ok(ExitCode::SUCCESS);
                }
                printed += 1;
                if a.max.is_some_and(|m| printed >= m) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        eprintln!("the change feed ended; resuming after event {}", since.unwrap_or(0));
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Runs `hub timeline`.
pub async fn timeline(a: TimelineArgs) -> anyhow::Result<ExitCode> {
    let base = match &a.app {
        Some(app) => {
            let (ns, name) = app
                .split_once('/')
                .filter(|(n, m)| !n.is_empty() && !m.is_empty())
                .ok_or_else(|| {
                    ClientError::Usage(format!(
                        "{app:?}: give the application as namespace/name, for example argocd/guestbook"
                    ))
                })?;
            format!(
                "/api/v1/gateways/{}/applications/{}/{}/timeline",
                enc(&a.gateway),
                enc(ns),
                enc(name)
            )
        }
        None => format!("/api/v1/gateways/{}/timeline", enc(&a.gateway)),
    };
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("limit", &a.limit.to_string());
    if let Some(since) = &a.since {
        q.append_pair("since", since);
    }
    let v = ApiClient::new(&a.api)?
        .call(reqwest::Method::GET, &format!("{base}?{}", q.finish()), None)
        .await?;
    a.api.output.emit(&v, |v| {
        let rows: Vec<Vec<String>> = items(v)
            .iter()
            .map(|p| {
                let revision: String = s(p, "revision").chars().take(12).collect();
                vec![
                    s(p, "at"),
                    format!("{}/{}", s(p, "namespace"), s(p, "name")),
                    s(p, "changed"),
                    s(p, "health"),
                    s(p, "sync"),
                    revision,
                    s(p, "operationPhase"),
                ]
            })
            .collect();
        print_table(
            &[
                "TIME",
                "APPLICATION",
                "CHANGED",
                "HEALTH",
                "SYNC",
                "REVISION",
                "OPERATION",
            ],
            &rows,
        );
    })?;
    Ok(ExitCode::SUCCESS)
}
