//! `argocd-gateway hub …`: `serve` runs the hub; the other subcommands are thin clients of its
//! HTTP API, so anything they do can also be scripted with curl.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

use super::ServeArgs;
use crate::secret::Secret;

/// The hub subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum HubCommand {
    /// Run the hub.
    Serve(ServeArgs),
    /// Manage registration tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List registered gateways.
    Gateways(ApiArgs),
    /// Show or delete one gateway.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// List applications (of one gateway with --gateway, else of all).
    Apps(AppsArgs),
    /// Show one application (as relayed, or live from Argo CD with --refresh).
    App {
        #[command(flatten)]
        app: AppArgs,
        /// Ask Argo CD through the gateway, refreshing first: normal or hard.
        #[arg(long, value_parser = ["normal", "hard"])]
        refresh: Option<String>,
    },
    /// Sync an application through its gateway.
    Sync {
        #[command(flatten)]
        app: AppArgs,
        /// Revision to sync to (single-source apps).
        #[arg(long)]
        revision: Option<String>,
        /// Revisions, one per source (multi-source apps; repeatable).
        #[arg(long = "revisions", value_delimiter = ',')]
        revisions: Vec<String>,
        /// Delete resources no longer in Git.
        #[arg(long)]
        prune: bool,
        /// Only preview.
        #[arg(long)]
        dry_run: bool,
    },
    /// Refresh an application (compare with Git again).
    Refresh {
        #[command(flatten)]
        app: AppArgs,
        /// Hard refresh: regenerate manifests.
        #[arg(long)]
        hard: bool,
    },
    /// Wait until an application is Synced and Healthy (at a revision); exit 0 Synced,
    /// 1 Failed, 2 Timeout.
    Wait {
        #[command(flatten)]
        app: AppArgs,
        /// The commit (or prefix) the application must be synced to.
        #[arg(long)]
        revision: Option<String>,
        /// How long to wait.
        #[arg(long, default_value = "5m", value_parser = crate::util::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Health-check a gateway now.
    Health {
        #[command(flatten)]
        api: ApiArgs,
        /// Gateway id.
        gateway: String,
    },
    /// Show or set the gateway version that `self-update` moves gateways to.
    #[command(subcommand)]
    DesiredVersion(DesiredVersionCommand),
}

/// Desired-version subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DesiredVersionCommand {
    /// Print the desired gateway version.
    Get(ApiArgs),
    /// Set the desired gateway version; gateways move to it only upward and within their major
    /// version, at their next self-update run.
    Set {
        #[command(flatten)]
        api: ApiArgs,
        /// A semantic version such as 1.4.2.
        version: String,
    },
}

/// Flags of `hub apps`.
#[derive(Debug, clap::Args)]
pub struct AppsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only this gateway's applications.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Label selector (k=v, k!=v, k, !k, k in (a,b)).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Annotation filter key=value (repeatable).
    #[arg(long = "annotation")]
    pub annotations: Vec<String>,
    /// Health status.
    #[arg(long)]
    pub health: Option<String>,
    /// Sync status.
    #[arg(long)]
    pub sync: Option<String>,
    /// Project.
    #[arg(long)]
    pub project: Option<String>,
}

/// One application of one gateway.
#[derive(Debug, clap::Args)]
pub struct AppArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Gateway id.
    pub gateway: String,
    /// The application as namespace/name.
    pub app: String,
}

impl AppArgs {
    fn path(&self, suffix: &str) -> anyhow::Result<String> {
        let (ns, name) = self
            .app
            .split_once('/')
            .filter(|(n, m)| !n.is_empty() && !m.is_empty())
            .ok_or_else(|| anyhow::anyhow!("give the application as namespace/name, for example argocd/guestbook"))?;
        Ok(format!(
            "/api/v1/gateways/{}/applications/{}/{}{}",
            enc(&self.gateway),
            enc(ns),
            enc(name),
            suffix
        ))
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Token subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a registration token and print the helm command that uses it.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// Token lifetime (default 1h, at most 24h).
        #[arg(long, value_parser = crate::util::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Name for the gateway that registers with it.
        #[arg(long)]
        name: Option<String>,
        /// Environment for that gateway (repeatable).
        #[arg(long = "environment", value_delimiter = ',')]
        environments: Vec<String>,
    },
    /// List registration tokens (never their secrets).
    List(ApiArgs),
    /// Revoke an unused registration token.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        /// Token id.
        id: String,
    },
}

/// Gateway subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum GatewayCommand {
    /// Show one gateway.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// Gateway id.
        id: String,
    },
    /// Delete (revoke) a gateway; its live session is closed at once.
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        /// Gateway id.
        id: String,
    },
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
    /// The admin token itself (overrides --admin-token-file).
    #[arg(long, env = "ARGOCD_GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
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

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
        Some(other) => other.to_string(),
    }
}

/// Prints rows as an aligned table.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    // A reader that stops early (`| head`) closes the pipe; that ends the output, not the
    // process with a panic.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", line(headers.iter().map(|h| h.to_string()).collect())).is_err() {
        return;
    }
    for r in rows {
        if writeln!(out, "{}", line(r.clone())).is_err() {
            return;
        }
    }
}

fn print_apps(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            let revision = a
                .get("sync")
                .map(|sy| {
                    let r = s(sy, "revision");
                    if r == "-" { s(sy, "revisions") } else { r }
                })
                .unwrap_or_else(|| "-".into());
            let short: String = revision.chars().take(12).collect();
            vec![
                s(a, "gatewayId"),
                format!("{}/{}", s(a, "namespace"), s(a, "name")),
                s(a, "project"),
                a.get("sync").map(|x| s(x, "status")).unwrap_or_default(),
                a.get("health").map(|x| s(x, "status")).unwrap_or_default(),
                short,
                if a.get("stale").and_then(Value::as_bool) == Some(true) {
                    "stale".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    print_table(
        &["GATEWAY", "APPLICATION", "PROJECT", "SYNC", "HEALTH", "REVISION", ""],
        &rows,
    );
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v)?;
    // A closed pipe (`| head`) just ends the output.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}

fn print_gateways(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|g| {
            vec![
                s(g, "id"),
                s(g, "name"),
                s(g, "environments"),
                if g.get("connected").and_then(Value::as_bool) == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                s(g, "lastSeenAt"),
                s(g, "version"),
                s(g, "certificateExpiresAt"),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "ENVIRONMENTS",
            "CONNECTED",
            "LAST SEEN",
            "VERSION",
            "CERT EXPIRES",
        ],
        &rows,
    );
}

/// Runs a hub subcommand.
pub async fn run(cmd: HubCommand, shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match cmd {
        HubCommand::Serve(args) => {
            let hub = super::start(args).await?;
            eprintln!(
                "hub gRPC listening on {} (CA fingerprint {})",
                hub.grpc_addr, hub.ca_fingerprint
            );
            eprintln!("hub API listening on http://{}", hub.http_addr);
            eprintln!("admin token: {}", hub.admin_token_path.display());
            shutdown.cancelled().await;
            tracing::info!("shutting down: draining gateway sessions");
            hub.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Token(TokenCommand::Create {
            api,
            ttl,
            name,
            environments,
        }) => {
            let client = ApiClient::new(&api)?;
            let mut body = serde_json::json!({});
            if let Some(t) = ttl {
                body["ttlSeconds"] = t.as_secs().into();
            }
            if let Some(n) = name {
                body["name"] = n.into();
            }
            if !environments.is_empty() {
                body["environments"] = environments.into();
            }
            let v = client
                .call(Method::POST, "/api/v1/registration-tokens", Some(body))
                .await?;
            if api.output == "json" {
                print_json(&v)?;
            } else {
                println!("token:           {}", s(&v, "token"));
                println!("id:              {}", s(&v, "id"));
                println!("expires at:      {}", s(&v, "expiresAt"));
                println!("CA fingerprint:  {}", s(&v, "caFingerprint"));
                println!("\nInstall the gateway with:\n\n  {}\n", s(&v, "helmCommand"));
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Token(TokenCommand::List(api)) => {
            let v = ApiClient::new(&api)?
                .call(Method::GET, "/api/v1/registration-tokens", None)
                .await?;
            if api.output == "json" {
                print_json(&v)?;
            } else {
                let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|t| {
                        vec![
                            s(t, "id"),
                            s(t, "state"),
                            s(t, "name"),
                            s(t, "environments"),
                            s(t, "expiresAt"),
                            s(t, "gatewayId"),
                        ]
                    })
                    .collect();
                print_table(&["ID", "STATE", "NAME", "ENVIRONMENTS", "EXPIRES", "GATEWAY"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Token(TokenCommand::Revoke { api, id }) => {
            ApiClient::new(&api)?
                .call(Method::DELETE, &format!("/api/v1/registration-tokens/{id}"), None)
                .await?;
            println!("revoked registration token {id}");
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Gateways(api) => {
            let v = ApiClient::new(&api)?
                .call(Method::GET, "/api/v1/gateways", None)
                .await?;
            if api.output == "json" {
                print_json(&v)?;
            } else {
                print_gateways(&v.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Gateway(GatewayCommand::Show { api, id }) => {
            let v = ApiClient::new(&api)?
                .call(Method::GET, &format!("/api/v1/gateways/{id}"), None)
                .await?;
            if api.output == "json" {
                print_json(&v)?;
            } else {
                print_gateways(&[v]);
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Apps(a) => {
            let mut query: Vec<(String, String)> = vec![];
            for (k, v) in [
                ("selector", &a.selector),
                ("health", &a.health),
                ("sync", &a.sync),
                ("project", &a.project),
            ] {
                if let Some(v) = v {
                    query.push((k.into(), v.clone()));
                }
            }
            query.extend(a.annotations.iter().map(|v| ("annotation".to_owned(), v.clone())));
            let qs: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish();
            let base = match &a.gateway {
                Some(g) => format!("/api/v1/gateways/{}/applications", enc(g)),
                None => "/api/v1/applications".into(),
            };
            let path = if qs.is_empty() { base } else { format!("{base}?{qs}") };
            let v = ApiClient::new(&a.api)?.call(Method::GET, &path, None).await?;
            if a.api.output == "json" {
                print_json(&v)?;
            } else {
                print_apps(&v.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::App { app: a, refresh } => {
            let suffix = refresh.map(|r| format!("?refresh={r}")).unwrap_or_default();
            let v = ApiClient::new(&a.api)?
                .call(Method::GET, &a.path(&suffix)?, None)
                .await?;
            print_json(&v)?;
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Sync {
            app,
            revision,
            revisions,
            prune,
            dry_run,
        } => {
            let mut body = serde_json::json!({ "prune": prune, "dryRun": dry_run });
            if let Some(r) = revision {
                body["revision"] = r.into();
            }
            if !revisions.is_empty() {
                body["revisions"] = revisions.into();
            }
            let v = ApiClient::new(&app.api)?
                .call(Method::POST, &app.path("/sync")?, Some(body))
                .await?;
            if app.api.output == "json" {
                print_json(&v)?;
            } else {
                println!("sync of {} started through gateway {}", app.app, app.gateway);
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Refresh { app, hard } => {
            let v = ApiClient::new(&app.api)?
                .call(
                    Method::POST,
                    &app.path("/refresh")?,
                    Some(serde_json::json!({ "hard": hard })),
                )
                .await?;
            if app.api.output == "json" {
                print_json(&v)?;
            } else {
                println!("refreshed {} through gateway {}", app.app, app.gateway);
            }
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Wait { app, revision, timeout } => {
            let mut body = serde_json::json!({ "timeoutSeconds": timeout.as_secs().max(1) });
            if let Some(r) = &revision {
                body["revision"] = r.clone().into();
            }
            let client = ApiClient::new(&app.api)?;
            let v = client.call(Method::POST, &app.path("/wait")?, Some(body)).await?;
            let result = v.get("result").and_then(Value::as_str).unwrap_or("");
            if app.api.output == "json" {
                print_json(&v)?;
            } else {
                let a = v.get("application").cloned().unwrap_or(Value::Null);
                println!(
                    "{result}: {} sync={} health={} revision={}",
                    app.app,
                    a.get("sync").map(|x| s(x, "status")).unwrap_or_else(|| "-".into()),
                    a.get("health").map(|x| s(x, "status")).unwrap_or_else(|| "-".into()),
                    a.get("sync").map(|x| s(x, "revision")).unwrap_or_else(|| "-".into()),
                );
            }
            Ok(match result {
                "Synced" => ExitCode::SUCCESS,
                "Failed" => ExitCode::from(1),
                _ => ExitCode::from(2),
            })
        }
        HubCommand::Health { api, gateway } => {
            let v = ApiClient::new(&api)?
                .call(
                    Method::POST,
                    &format!("/api/v1/gateways/{}/health-check", enc(&gateway)),
                    None,
                )
                .await?;
            print_json(&v)?;
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Gateway(GatewayCommand::Delete { api, id }) => {
            ApiClient::new(&api)?
                .call(Method::DELETE, &format!("/api/v1/gateways/{id}"), None)
                .await?;
            println!("deleted gateway {id}; it must register again with a new token");
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::DesiredVersion(cmd) => {
            let (api, v) = match cmd {
                DesiredVersionCommand::Get(api) => {
                    let v = ApiClient::new(&api)?
                        .call(Method::GET, "/api/v1/desired-version", None)
                        .await?;
                    (api, v)
                }
                DesiredVersionCommand::Set { api, version } => {
                    // Checked here too so a typo fails before any request is made.
                    super::version::parse(&version)
                        .with_context(|| format!("{version:?} is not a semantic version such as 1.4.2"))?;
                    let v = ApiClient::new(&api)?
                        .call(
                            Method::PUT,
                            "/api/v1/desired-version",
                            Some(serde_json::json!({ "version": version })),
                        )
                        .await?;
                    (api, v)
                }
            };
            if api.output == "json" {
                print_json(&v)?;
            } else {
                match v.get("version").and_then(Value::as_str) {
                    Some(version) => println!("desired gateway version: {version}"),
                    None => println!("no desired gateway version is set; self-update leaves gateways as they are"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
