//! The `hub` subcommands that call the hub's HTTP API: registration tokens, gateways,
//! applications and their actions (sync, refresh, terminate, rollback), `wait` (in
//! [`super::wait`]), health checks and the desired gateway version. Each prints a table (or the
//! answer as JSON or YAML with `-o json|yaml`) and maps the answer to one of the exit codes of
//! [`super::exit`].

use std::process::ExitCode;

use serde_json::Value;

use super::exit::{self, ClientError};
use super::print::{print_apps, print_fields, print_gateways, print_table, s};
use super::{ApiArgs, ApiClient, enc};

/// The API client subcommands of `hub`.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
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
        /// Revision to sync to. For a multi-source application name the source with --source.
        #[arg(long)]
        revision: Option<String>,
        /// With --revision on a multi-source application: the source it is for, as its 1-based
        /// position or its name (`sources[].name`); the other sources sync to their
        /// targetRevision.
        #[arg(long, requires = "revision")]
        source: Option<String>,
        /// Revisions, one per source (multi-source apps; repeatable).
        #[arg(long = "revisions", value_delimiter = ',')]
        revisions: Vec<String>,
        /// For --revisions: the 1-based source position of each (default 1, 2, …).
        #[arg(long = "source-positions", value_delimiter = ',')]
        source_positions: Vec<i64>,
        /// Delete resources no longer in Git.
        #[arg(long)]
        prune: bool,
        /// Only preview.
        #[arg(long)]
        dry_run: bool,
        /// kubectl apply --force: delete and recreate resources that cannot be patched.
        #[arg(long)]
        force: bool,
        /// Sync only this resource, GROUP/KIND/NAMESPACE/NAME (empty group for the core group;
        /// repeatable).
        #[arg(long = "resource", value_name = "GROUP/KIND/NAMESPACE/NAME")]
        resources: Vec<String>,
        /// A sync option for this sync, e.g. Validate=false or ServerSideApply=true (repeatable).
        #[arg(long = "sync-option", value_name = "OPTION")]
        sync_options: Vec<String>,
    },
    /// Terminate the operation an application is running.
    Terminate {
        #[command(flatten)]
        app: AppArgs,
    },
    /// Roll an application back to an entry of its history (`hub app` shows `history`).
    Rollback {
        #[command(flatten)]
        app: AppArgs,
        /// The history id to go back to.
        id: i64,
        /// Delete resources not in that revision.
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
    /// Wait until what was committed runs and is healthy, for one application or many (by
    /// selector, annotation, project, gateway or list); exit 0 Deployed, 1 Failed or
    /// Overwritten, 2 Timeout.
    #[command(after_help = exit::EXIT_CODES_HELP)]
    Wait(super::wait::WaitArgs),
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
    /// Manage API tokens with roles (viewer, operator, admin).
    #[command(subcommand)]
    ApiToken(super::fleet::ApiTokenCommand),
    /// Follow the fleet change feed: application changes, gateway connects, disconnects and
    /// health checks (resumes after a dropped connection).
    Events(super::fleet::EventsArgs),
    /// Show the state timeline of an application, or of every application of a gateway.
    Timeline(super::fleet::TimelineArgs),
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
    /// Which applications.
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// The application filters of `hub apps` and `hub events`.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
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

impl FilterArgs {
    /// The filters as API query parameters.
    pub fn query(&self) -> Vec<(String, String)> {
        let mut query: Vec<(String, String)> = vec![];
        for (k, v) in [
            ("selector", &self.selector),
            ("health", &self.health),
            ("sync", &self.sync),
            ("project", &self.project),
        ] {
            if let Some(v) = v {
                query.push((k.into(), v.clone()));
            }
        }
        query.extend(self.annotations.iter().map(|v| ("annotation".to_owned(), v.clone())));
        query
    }
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
    fn path(&self, suffix: &str) -> Result<String, ClientError> {
        let (ns, name) = self
            .app
            .split_once('/')
            .filter(|(n, m)| !n.is_empty() && !m.is_empty())
            .ok_or_else(|| {
                ClientError::Usage(format!(
                    "{:?}: give the application as namespace/name, for example argocd/guestbook",
                    self.app
                ))
            })?;
        Ok(format!(
            "/api/v1/gateways/{}/applications/{}/{}{}",
            enc(&self.gateway),
            enc(ns),
            enc(name),
            suffix
        ))
    }
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
        /// The hub URL gateways dial, for this token's command (default: the hub's --public-url).
        #[arg(long)]
        public_url: Option<String>,
        /// Argo CD API URL the gateway reads (default in the chart: the in-cluster argocd-server).
        #[arg(long)]
        argocd_url: Option<String>,
        /// Skip verifying Argo CD's certificate (its default self-signed one).
        #[arg(long)]
        argocd_insecure: bool,
        /// Argo CD web UI URL, so the hub can link to applications.
        #[arg(long)]
        argocd_web_url: Option<String>,
        /// The file with the gateway's Argo CD account token, on the machine that runs helm
        /// (printed as a helm --set-file; default ./argocd-token).
        #[arg(long, conflicts_with = "argocd_token_secret")]
        argocd_token_file: Option<String>,
        /// An existing Secret with the gateway's Argo CD token, in the release namespace.
        #[arg(long)]
        argocd_token_secret: Option<String>,
    },
    /// Show an install's progress: token created, used, gateway connected, Argo CD reachable,
    /// first state received, first health check passed.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Token id (the part of the token before the dot).
        id: String,
        /// Print each step as it happens until all are done (exit 0) or one fails (exit 1).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 2).
        #[arg(long, default_value = "15m", value_parser = crate::util::parse_duration)]
        timeout: std::time::Duration,
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

/// The revision fields of a sync request. A single-source application takes `revision`; a
/// multi-source one takes one revision per source, so `--revision` must say which source it
/// is for (`--source`), and the others keep their `targetRevision`.
fn sync_revisions(
    app: &Value,
    revision: Option<String>,
    source: Option<&str>,
) -> Result<(Option<String>, Vec<String>), ClientError> {
    let Some(revision) = revision else {
        return Ok((None, vec![]));
    };
    let sources = app
        .get("sources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let multi = sources.len() > 1
        || app
            .get("sync")
            .and_then(|s| s.get("revisions"))
            .and_then(Value::as_array)
            .is_some_and(|r| !r.is_empty());
    let describe = |i: usize, src: &Value| {
        let label = [s(src, "name"), s(src, "ref")]
            .into_iter()
            .find(|n| n != "-" && !n.is_empty())
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        format!("{}{label} ({})", i + 1, s(src, "repoURL"))
    };
    if !multi {
        return match source {
            None | Some("1") => Ok((Some(revision), vec![])),
            Some(other) if sources.first().is_some_and(|f| s(f, "name") == other) => Ok((Some(revision), vec![])),
            Some(other) => Err(ClientError::Usage(format!(
                "--source {other}: the application has a single source; leave --source out"
            ))),
        };
    }
    let listed = sources
        .iter()
        .enumerate()
        .map(|(i, src)| describe(i, src))
        .collect::<Vec<_>>()
        .join(", ");
    let Some(which) = source else {
        return Err(ClientError::Usage(format!(
            "the application has {} sources ({listed}): say which one --revision {revision} is for with --source POSITION|NAME, or give one revision per source with --revisions",
            sources.len()
        )));
    };
    let index = match which.parse::<usize>() {
        Ok(n) if (1..=sources.len()).contains(&n) => Some(n - 1),
        Ok(_) => None,
        Err(_) => sources
            .iter()
            .position(|src| s(src, "name") == which || s(src, "ref") == which),
    };
    let Some(index) = index else {
        return Err(ClientError::Usage(format!(
            "--source {which}: the application's sources are {listed}"
        )));
    };
    let revisions = sources
        .iter()
        .enumerate()
        .map(|(i, src)| {
            if i == index {
                revision.clone()
            } else {
                // What Argo CD syncs a source to when no revision is given.
                let target = s(src, "targetRevision");
                if target == "-" || target.is_empty() {
                    "HEAD".into()
                } else {
                    target
                }
            }
        })
        .collect();
    Ok((None, revisions))
}

/// One application for people: its status, then its resources.
fn print_app(a: &Value) {
    let sync = a.get("sync").cloned().unwrap_or(Value::Null);
    let revision = match s(&sync, "revision") {
        r if r == "-" || r.is_empty() => s(&sync, "revisions"),
        r => r,
    };
    let operation = a
        .get("operation")
        .filter(|o| !o.is_null())
        .map(|o| format!("{} {}", s(o, "phase"), s(o, "message")).trim().to_owned())
        .unwrap_or_else(|| "-".into());
    let health = a.get("health").cloned().unwrap_or(Value::Null);
    let health_text = match s(&health, "message") {
        m if m == "-" || m.is_empty() => s(&health, "status"),
        m => format!("{} ({m})", s(&health, "status")),
    };
    let sources = a
        .get("sources")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|src| {
                    format!(
                        "{} {} @ {}",
                        s(src, "repoURL"),
                        s(src, "path"),
                        s(src, "targetRevision")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let dest = a.get("destination").cloned().unwrap_or(Value::Null);
    print_fields(&[
        ("application", format!("{}/{}", s(a, "namespace"), s(a, "name"))),
        ("gateway", s(a, "gatewayId")),
        ("project", s(a, "project")),
        ("sources", sources),
        (
            "destination",
            format!("{} {}", s(&dest, "server"), s(&dest, "namespace")),
        ),
        ("sync", s(&sync, "status")),
        ("revision", revision),
        ("health", health_text),
        ("operation", operation),
        ("reconciled at", s(a, "reconciledAt")),
        (
            "stale",
            if a.get("stale").and_then(Value::as_bool) == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
        ),
    ]);
    let resources = a
        .get("resources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !resources.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = resources
            .iter()
            .map(|r| {
                vec![
                    s(r, "kind"),
                    s(r, "namespace"),
                    s(r, "name"),
                    s(r, "status"),
                    r.get("health").map(|h| s(h, "status")).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print_table(&["KIND", "NAMESPACE", "NAME", "SYNC", "HEALTH"], &rows);
    }
}

/// A health-check result for people: the verdict, then each check.
fn print_health(gateway: &str, v: &Value) {
    let argocd = v.get("argocd").cloned().unwrap_or(Value::Null);
    print_fields(&[
        ("gateway", gateway.to_owned()),
        ("status", s(v, "status")),
        ("gateway version", s(v, "gatewayVersion")),
        (
            "Argo CD",
            format!("{} (version {})", s(&argocd, "url"), s(&argocd, "version")),
        ),
        ("applications", s(v, "applications")),
        ("clusters", s(v, "clusters")),
        ("hub round trip", format!("{} ms", s(v, "hubRoundTripMillis"))),
        ("checked at", s(v, "checkedAt")),
    ]);
    let checks = v.get("checks").and_then(Value::as_array).cloned().unwrap_or_default();
    if !checks.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                let mut detail = s(c, "detail");
                if let Some(fix) = c.get("fix").and_then(Value::as_str) {
                    detail.push_str(&format!(" — {fix}"));
                }
                vec![s(c, "name"), s(c, "status").to_uppercase(), detail]
            })
            .collect();
        print_table(&["CHECK", "STATUS", "DETAIL"], &rows);
    }
}

/// Runs an API client subcommand.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match cmd {
        ClientCommand::ApiToken(c) => super::fleet::api_token(c).await,
        ClientCommand::Events(a) => super::fleet::events(a).await,
        ClientCommand::Timeline(a) => super::fleet::timeline(a).await,
        ClientCommand::Token(TokenCommand::Create {
            api,
            ttl,
            name,
            environments,
            public_url,
            argocd_url,
            argocd_insecure,
            argocd_web_url,
            argocd_token_file,
            argocd_token_secret,
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
            for (k, v) in [
                ("publicUrl", public_url),
                ("argocdUrl", argocd_url),
                ("argocdWebUrl", argocd_web_url),
                ("argocdTokenFile", argocd_token_file),
                ("argocdTokenSecret", argocd_token_secret),
            ] {
                if let Some(v) = v {
                    body[k] = v.into();
                }
            }
            if argocd_insecure {
                body["argocdInsecure"] = true.into();
            }
            let v = client
                .call(Method::POST, "/api/v1/registration-tokens", Some(body))
                .await?;
            api.output.emit(&v, |v| {
                for w in v.get("warnings").and_then(Value::as_array).into_iter().flatten() {
                    eprintln!("warning: {}", w.as_str().unwrap_or_default());
                }
                println!("token:           {}", s(v, "token"));
                println!("id:              {}", s(v, "id"));
                println!("expires at:      {}", s(v, "expiresAt"));
                println!("CA fingerprint:  {}", s(v, "caFingerprint"));
                println!("\nInstall the gateway with:\n\n{}\n", s(v, "helmCommand"));
                println!("Follow the install with:\n\n{}\n", s(v, "statusCommand"));
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Token(TokenCommand::Status { api, id, wait, timeout }) => {
            super::status::token_status(&ApiClient::new(&api)?, &api, &id, wait, timeout).await
        }
        ClientCommand::Token(TokenCommand::List(api)) => {
            let v = ApiClient::new(&api)?
                .call(Method::GET, "/api/v1/registration-tokens", None)
                .await?;
            api.output.emit(&v, |v| {
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
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Token(TokenCommand::Revoke { api, id }) => {
            ApiClient::new(&api)?
                .call(
                    Method::DELETE,
                    &format!("/api/v1/registration-tokens/{}", enc(&id)),
                    None,
                )
                .await?;
            let v = serde_json::json!({ "id": id, "revoked": true });
            api.output.emit(&v, |_| println!("revoked registration token {id}"))?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Gateways(api) => {
            let v = ApiClient::new(&api)?
                .call(Method::GET, "/api/v1/gateways", None)
                .await?;
            api.output.emit(&v, |v| {
                print_gateways(&v.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Gateway(GatewayCommand::Show { api, id }) => {
            let v = ApiClient::new(&api)?
                .call(Method::GET, &format!("/api/v1/gateways/{}", enc(&id)), None)
                .await?;
            api.output.emit(&v, |v| print_gateways(std::slice::from_ref(v)))?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Apps(a) => {
            let query = a.filter.query();
            let qs: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish();
            let base = match &a.gateway {
                Some(g) => format!("/api/v1/gateways/{}/applications", enc(g)),
                None => "/api/v1/applications".into(),
            };
            let path = if qs.is_empty() { base } else { format!("{base}?{qs}") };
            let v = ApiClient::new(&a.api)?.call(Method::GET, &path, None).await?;
            a.api.output.emit(&v, |v| {
                print_apps(&v.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::App { app: a, refresh } => {
            let suffix = refresh.map(|r| format!("?refresh={r}")).unwrap_or_default();
            let v = ApiClient::new(&a.api)?
                .call(Method::GET, &a.path(&suffix)?, None)
                .await?;
            a.api.output.emit(&v, print_app)?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Sync {
            app,
            revision,
            source,
            revisions,
            source_positions,
            prune,
            dry_run,
            force,
            resources,
            sync_options,
        } => {
            let client = ApiClient::new(&app.api)?;
            let (revision, from_source) = if revision.is_some() {
                // Whether the application has one source or several decides the request's
                // shape, so it is read first.
                let current = client.call(Method::GET, &app.path("")?, None).await?;
                sync_revisions(&current, revision, source.as_deref())?
            } else {
                (None, vec![])
            };
            let mut body = serde_json::json!({ "prune": prune, "dryRun": dry_run });
            if let Some(r) = revision {
                body["revision"] = r.into();
            }
            let revisions = if from_source.is_empty() { revisions } else { from_source };
            if !revisions.is_empty() {
                body["revisions"] = revisions.into();
            }
            if !source_positions.is_empty() {
                body["sourcePositions"] = source_positions.into();
            }
            if force {
                body["force"] = true.into();
            }
            if !resources.is_empty() {
                let list = resources
                    .iter()
                    .map(|r| match r.split('/').collect::<Vec<_>>().as_slice() {
                        [group, kind, namespace, name] if !kind.is_empty() && !name.is_empty() => Ok(
                            serde_json::json!({"group": group, "kind": kind, "namespace": namespace, "name": name}),
                        ),
                        _ => Err(anyhow::anyhow!(
                            "--resource {r:?}: give GROUP/KIND/NAMESPACE/NAME, for example apps/Deployment/shop/web or /Service/shop/web"
                        )),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                body["resources"] = list.into();
            }
            if !sync_options.is_empty() {
                body["syncOptions"] = sync_options.into();
            }
            let v = client.call(Method::POST, &app.path("/sync")?, Some(body)).await?;
            app.api.output.emit(&v, |_| {
                println!("sync of {} started through gateway {}", app.app, app.gateway)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Refresh { app, hard } => {
            let v = ApiClient::new(&app.api)?
                .call(
                    Method::POST,
                    &app.path("/refresh")?,
                    Some(serde_json::json!({ "hard": hard })),
                )
                .await?;
            app.api.output.emit(&v, |_| {
                println!("refreshed {} through gateway {}", app.app, app.gateway)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Wait(a) => super::wait::wait(a).await,
        ClientCommand::Terminate { app } => {
            let v = ApiClient::new(&app.api)?
                .call(Method::DELETE, &app.path("/operation")?, None)
                .await?;
            app.api.output.emit(&v, |_| {
                println!("the operation of {} is terminating (gateway {})", app.app, app.gateway)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Rollback {
            app,
            id,
            prune,
            dry_run,
        } => {
            let v = ApiClient::new(&app.api)?
                .call(
                    Method::POST,
                    &app.path("/rollback")?,
                    Some(serde_json::json!({ "id": id, "prune": prune, "dryRun": dry_run })),
                )
                .await?;
            app.api.output.emit(&v, |_| {
                println!(
                    "rollback of {} to history id {id} started through gateway {}",
                    app.app, app.gateway
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Health { api, gateway } => {
            let v = ApiClient::new(&api)?
                .call(
                    Method::POST,
                    &format!("/api/v1/gateways/{}/health-check", enc(&gateway)),
                    None,
                )
                .await?;
            api.output.emit(&v, |v| print_health(&gateway, v))?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Gateway(GatewayCommand::Delete { api, id }) => {
            ApiClient::new(&api)?
                .call(Method::DELETE, &format!("/api/v1/gateways/{}", enc(&id)), None)
                .await?;
            let v = serde_json::json!({ "id": id, "deleted": true });
            api.output.emit(&v, |_| {
                println!("deleted gateway {id}; it must register again with a new token")
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::DesiredVersion(cmd) => {
            let (api, v) = match cmd {
                DesiredVersionCommand::Get(api) => {
                    let v = ApiClient::new(&api)?
                        .call(Method::GET, "/api/v1/desired-version", None)
                        .await?;
                    (api, v)
                }
                DesiredVersionCommand::Set { api, version } => {
                    // Checked here too so a typo fails before any request is made.
                    if let Err(e) = crate::wire::version::parse(&version) {
                        return Err(ClientError::Usage(format!(
                            "{version:?} is not a semantic version such as 1.4.2: {e}"
                        ))
                        .into());
                    }
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
            api.output
                .emit(&v, |v| match v.get("version").and_then(Value::as_str) {
                    Some(version) => println!("desired gateway version: {version}"),
                    None => println!("no desired gateway version is set; self-update leaves gateways as they are"),
                })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
