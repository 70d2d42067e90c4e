//! `argocd-gateway hub serve`: prepares the data directory, binds the gRPC listener for
//! gateways and the HTTP listener for the API and status page (plain or TLS), starts the
//! services and the change-feed recorder on one shutdown tree, and drains gateway sessions (with
//! a jittered come-back hint) on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::feed::{Feed, HistoryConfig};
use super::limits::Limits;
use super::registration::RegistrationService;
use super::state::HubState;
use super::tunnel::TunnelService;
use super::{api, entities, https, listen, pki, store};
use crate::shutdown::{TaskFailure, Tree};
use crate::wire::codes::MAX_DECODED_MESSAGE_BYTES;
use crate::wire::proto::{
    Drain, HubMessage, hub_message, registration_server::RegistrationServer, tunnel_server::TunnelServer,
};

/// Flags of `argocd-gateway hub serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory for the CA, server certificate, admin token and SQLite database.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_DATA_DIR", default_value = "./hub-data")]
    pub data_dir: PathBuf,
    /// Names and IP addresses for the server certificate (repeatable; default localhost,
    /// 127.0.0.1 and this machine's host name).
    #[arg(long = "hostname", env = "ARGOCD_GATEWAY_HUB_HOSTNAME", value_delimiter = ',')]
    pub hostnames: Vec<String>,
    /// gRPC listen address for gateways.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_GRPC_ADDR", default_value = "0.0.0.0:8443")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for the API and the status page.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Serve gRPC without TLS, for a proxy or load balancer that terminates TLS in front of the
    /// hub; gateways then authenticate by their signed assertion alone.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_PLAINTEXT")]
    pub plaintext: bool,
    /// With TLS: also accept gateways that present no client certificate, authenticated by
    /// their signed assertion alone — for a proxy that terminates TLS and re-encrypts to the
    /// hub. The trade: an assertion captured in transit can be used once, within its five
    /// minutes, without the gateway's certificate.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_ASSERTION_ONLY")]
    pub assertion_only: bool,
    /// How long a certificate replaced by a renewal is still accepted (streams opened with it
    /// just before the renewal finish; a copy of the old identity stops working).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_RENEWAL_GRACE", default_value = "10m", value_parser = crate::util::parse_duration)]
    pub renewal_grace: Duration,
    /// Lifetime of gateway client certificates.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_CLIENT_CERT_TTL", default_value = "30d", value_parser = crate::util::parse_duration)]
    pub client_cert_ttl: Duration,
    /// The gRPC URL gateways use to reach this hub, for the printed helm command (default:
    /// https://<first hostname>:<grpc port>).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How often to health-check every connected gateway.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_HEALTH_CHECK_INTERVAL", default_value = "60s", value_parser = crate::util::parse_duration)]
    pub health_check_interval: Duration,
    /// Speak this protocol version to gateways (the current one by default; the previous one
    /// behaves as a hub of that version did: no ApplicationSets, projects or WebSocket), for
    /// testing version skew.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_PROTOCOL_VERSION", default_value_t = crate::wire::PROTOCOL_VERSION, value_parser = crate::wire::codes::parse_pinned_protocol)]
    pub protocol_version: u32,
    /// Chart reference used in the printed helm command.
    #[arg(
        long,
        env = "ARGOCD_GATEWAY_HUB_HELM_CHART",
        default_value = "./charts/argocd-gateway"
    )]
    pub helm_chart: String,
    /// Resource bounds.
    #[command(flatten)]
    pub limits: Limits,
    /// TLS for the HTTP listener and status-page sessions.
    #[command(flatten)]
    pub http: HttpArgs,
    /// How much change-feed and timeline history to keep, and optional metrics.
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Where the hub keeps its data: embedded SQLite, or PostgreSQL for several replicas.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The store, and how replicas on PostgreSQL reach each other.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The database: unset (or `sqlite`) for the embedded SQLite file in --data-dir, or a
    /// PostgreSQL URL (`postgres://user@host:5432/db?sslmode=require`) for any number of hub
    /// replicas on that database. The password may be in the URL or in --store-password-file.
    #[arg(long = "store", env = "ARGOCD_GATEWAY_HUB_STORE", conflicts_with = "url_file")]
    pub url: Option<crate::secret::Secret>,
    /// A file holding the --store URL (a mounted Kubernetes Secret: the URL may carry the
    /// password, so it stays out of the environment and the process list).
    #[arg(long = "store-file", env = "ARGOCD_GATEWAY_HUB_STORE_FILE")]
    pub url_file: Option<PathBuf>,
    /// A file holding the PostgreSQL password (instead of one in the --store URL).
    #[arg(long = "store-password-file", env = "ARGOCD_GATEWAY_HUB_STORE_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates to verify PostgreSQL's TLS certificate with, besides the system's.
    #[arg(long = "store-ca-file", env = "ARGOCD_GATEWAY_HUB_STORE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL connections each replica keeps at most.
    #[arg(long = "store-pool-size", env = "ARGOCD_GATEWAY_HUB_STORE_POOL_SIZE", default_value = "16", value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub pool_size: u32,
    /// With PostgreSQL: where this replica listens for requests other replicas forward to the
    /// gateways connected here (mutual TLS with certificates from the hub CA).
    #[arg(
        long = "peer-addr",
        env = "ARGOCD_GATEWAY_HUB_PEER_ADDR",
        default_value = "0.0.0.0:8444"
    )]
    pub peer_addr: SocketAddr,
    /// With PostgreSQL: the URL other replicas reach this one at (default
    /// https://<--peer-addr's address, or this machine's host name>:<port>); in Kubernetes,
    /// the pod's IP.
    #[arg(long = "peer-url", env = "ARGOCD_GATEWAY_HUB_PEER_URL")]
    pub peer_url: Option<String>,
}

impl StoreArgs {
    /// The PostgreSQL options, when --store names PostgreSQL.
    pub fn postgres(&self) -> Result<Option<super::postgres::PgOptions>, HubError> {
        let from_file = match &self.url_file {
            Some(path) => Some(crate::secret::Secret::new(
                std::fs::read_to_string(path)
                    .map_err(|source| HubError::StoreFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            )),
            None => None,
        };
        let Some(url) = from_file
            .as_ref()
            .or(self.url.as_ref())
            .filter(|u| !u.expose().trim().is_empty())
        else {
            return Ok(None);
        };
        let text = url.expose().trim();
        if text == "sqlite" {
            return Ok(None);
        }
        let postgres = text.starts_with("postgres://") || text.starts_with("postgresql://") || text.contains("host=");
        if !postgres {
            return Err(HubError::StoreUrl(super::postgres::redact_url(text)));
        }
        Ok(Some(super::postgres::PgOptions {
            url: url.clone(),
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
            pool_size: self.pool_size as usize,
        }))
    }

    fn peer_url(&self) -> String {
        self.peer_url.clone().unwrap_or_else(|| {
            let ip = self.peer_addr.ip();
            let host = if ip.is_unspecified() {
                gethostname::gethostname()
                    .into_string()
                    .unwrap_or_else(|_| "localhost".into())
            } else if ip.is_ipv6() {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            format!("https://{host}:{}", self.peer_addr.port())
        })
    }
}

/// Parses `serve` flags from arguments, as the command line would.
#[derive(clap::Parser)]
struct ServeCli {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    /// The defaults of every flag, with the data directory given (for embedding the hub: the
    /// demo, tests and benchmarks).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        use clap::Parser;
        let mut args = ServeCli::try_parse_from(["serve"])
            .map(|c| c.args)
            .unwrap_or_else(|e| unreachable!("the serve flags' defaults parse: {e}"));
        args.data_dir = data_dir.into();
        args
    }
}

/// The HTTP listener's TLS and the status page's logins.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Serve the HTTP API and status page over TLS with this certificate chain (PEM file);
    /// needs --http-tls-key.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// The private key of --http-tls-cert (PEM file).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Serve the HTTP API and status page over TLS with the hub's own server certificate, made
    /// by its CA for the --hostname names (browsers need the CA, ca.pem in --data-dir, trusted).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_HTTP_TLS", conflicts_with = "http_tls_cert")]
    pub http_tls: bool,
    /// How long a status-page login lasts.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_SESSION_TTL", default_value = "12h", value_parser = crate::util::parse_duration)]
    pub session_ttl: Duration,
}

/// Change-feed and timeline retention, and the optional per-application metrics.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Change-feed events kept for subscribers that resume (`Last-Event-ID`, `?since=`).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_FEED_BACKLOG", default_value = "100000", value_parser = clap::value_parser!(u64).range(1..))]
    pub feed_backlog: u64,
    /// Change-feed events older than this are dropped.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_FEED_MAX_AGE", default_value = "7d", value_parser = crate::util::parse_duration)]
    pub feed_max_age: Duration,
    /// Timeline points kept per application.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_TIMELINE_PER_APP", default_value = "500", value_parser = clap::value_parser!(u32).range(1..))]
    pub timeline_per_app: u32,
    /// Timeline points older than this are dropped.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_TIMELINE_MAX_AGE", default_value = "30d", value_parser = crate::util::parse_duration)]
    pub timeline_max_age: Duration,
    /// Export one metric series per application with its health and sync status (off by
    /// default: a large fleet makes many series).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_APP_METRICS")]
    pub app_metrics: bool,
}

impl HistoryArgs {
    fn config(&self) -> HistoryConfig {
        HistoryConfig {
            feed_backlog: self.feed_backlog,
            feed_max_age: self.feed_max_age,
            timeline_per_app: self.timeline_per_app as usize,
            timeline_max_age: self.timeline_max_age,
        }
    }
}

/// Errors starting the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Data directory.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// Database.
    #[error("cannot open the hub database in {dir}: {source} (flag --data-dir)")]
    Store {
        /// The data directory.
        dir: PathBuf,
        /// The error.
        source: store::StoreError,
    },
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source} (flag {flag})")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The flag that set it.
        flag: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Preparing the data directory did not finish.
    #[error("preparing the hub data directory failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The stored application state could not be loaded.
    #[error("cannot load the stored application state from {dir}: {source} (flag --data-dir)")]
    LoadState {
        /// The data directory.
        dir: PathBuf,
        /// The error.
        source: entities::StateError,
    },
    /// The gRPC listener's TLS could not be set up from the data directory's certificate.
    #[error("cannot set up TLS for the gRPC listener: {0} (flag --data-dir holds server.pem and server-key.pem)")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP listener's TLS could not be set up.
    #[error(transparent)]
    HttpTls(#[from] https::HttpsError),
    /// --store names neither SQLite nor PostgreSQL.
    #[error(
        "--store must be a PostgreSQL URL (postgres://user@host:5432/database) or sqlite, not {0} (flag --store or --store-file, Helm database.url or database.urlSecretName)"
    )]
    StoreUrl(String),
    /// The --store-file could not be read.
    #[error("cannot read the database URL from {path}: {source} (flag --store-file, Helm database.urlSecretName)")]
    StoreFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// PostgreSQL could not be opened.
    #[error(transparent)]
    Postgres(#[from] super::postgres::PgOpenError),
    /// The replica's peer setup failed.
    #[error("cannot set up the channel between hub replicas: {0} (flags --peer-addr, --peer-url)")]
    Peer(String),
}

/// A running hub.
pub struct Hub {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The status page and API base URL (`http://` or `https://`).
    pub http_url: String,
    /// The admin token file.
    pub admin_token_path: PathBuf,
    /// SHA-256 of the CA.
    pub ca_fingerprint: crate::tls::Fingerprint,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    state: Arc<HubState>,
    tree: Tree,
}

/// Starts the hub: prepares the data directory, binds both listeners and serves until
/// [`Hub::shutdown`]. The servers and the periodic health checks are critical tasks of the
/// hub's own [`Tree`]: if one ends, [`Hub::failed`] says which.
pub async fn start(args: ServeArgs) -> Result<Hub, HubError> {
    let hostnames = if args.hostnames.is_empty() {
        pki::default_hostnames()
    } else {
        args.hostnames.clone()
    };
    // Checked before anything is bound: a bad certificate is a configuration error.
    let explicit_http_tls = match (&args.http.http_tls_cert, &args.http.http_tls_key) {
        (Some(cert), Some(key)) => Some(https::server_config_from_files(cert, key)?),
        _ => None,
    };
    let postgres = args.store.postgres()?;
    let data_dir = args.data_dir.clone();
    // Replicas share one CA, certificate and admin token from files (a Kubernetes Secret made
    // by `hub init`): they never create or change them, and never keep them in the database.
    let shared = postgres.is_some();
    let pki = tokio::task::spawn_blocking(move || {
        if shared {
            pki::load_shared(&data_dir, &hostnames)
        } else {
            pki::load_or_init(&data_dir, &hostnames)
        }
    })
    .await
    .map_err(HubError::Task)??;
    let (store, pg) = match &postgres {
        Some(options) => {
            let pg = super::postgres::PgStore::open(options).await?;
            tracing::info!(database = %pg.describe(), "hub store: PostgreSQL");
            (store::Store::new(Arc::new(pg.clone())), Some(pg))
        }
        None => (
            store::Store::open(&args.data_dir.join("hub.db")).map_err(|source| HubError::Store {
                dir: args.data_dir.clone(),
                source,
            })?,
            None,
        ),
    };
    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .map_err(|source| HubError::Bind {
            addr: args.grpc_addr,
            flag: "--grpc-addr",
            source,
        })?;
    let http_listener = TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| HubError::Bind {
            addr: args.http_addr,
            flag: "--http-addr",
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| HubError::Bind {
        addr: args.grpc_addr,
        flag: "--grpc-addr",
        source,
    })?;
    let http_addr = http_listener.local_addr().map_err(|source| HubError::Bind {
        addr: args.http_addr,
        flag: "--http-addr",
        source,
    })?;

    let ca_fingerprint = pki.ca.fingerprint();
    let ca_pem = pki.ca.cert_pem().to_owned();
    let http_tls = match explicit_http_tls {
        Some(c) => Some(c),
        None if args.http.http_tls => Some(https::server_config(
            pki.server_chain_pem.as_bytes(),
            pki.server_key_pem.expose().as_bytes(),
            "the hub's server certificate (--data-dir)",
        )?),
        None => None,
    };
    let (feed, recorder) = Feed::new(store.clone(), args.history.config());
    // Replicas follow each other's writes from the revisions read before the state: whatever
    // is written in between is read again, which changes nothing.
    let revisions = match &pg {
        Some(pg) => Some(pg.entity_revisions().await.map_err(|source| HubError::LoadState {
            dir: args.data_dir.clone(),
            source: source.into(),
        })?),
        None => None,
    };
    let entities = entities::EntityState::load(store.clone(), feed.clone())
        .await
        .map_err(|source| HubError::LoadState {
            dir: args.data_dir.clone(),
            source,
        })?;
    if let Some(revisions) = revisions {
        entities.set_revisions(revisions);
    }
    let recorder = if pg.is_some() { recorder.followed() } else { recorder };
    let replica_tls = match &pg {
        Some(_) => {
            let peer_url = args.store.peer_url();
            let host = url::Url::parse(&peer_url)
                .ok()
                .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
                .ok_or_else(|| HubError::Peer(format!("--peer-url {peer_url:?} is not a URL")))?;
            let (issued, key) = pki
                .ca
                .issue_replica(&[host], Duration::from_secs(397 * 24 * 3600))
                .map_err(|e| HubError::Peer(e.to_string()))?;
            Some((peer_url, issued.pem, key))
        }
        None => None,
    };
    let peer_ca_pem = pki.ca.cert_pem().to_owned();
    let mut state = HubState::new(store, pki.ca, args.client_cert_ttl, Arc::new(entities), feed);
    state.require_client_cert = !args.plaintext && !args.assertion_only;
    state.renewal_grace = args.renewal_grace;
    state.limits = args.limits.clone();
    state.opens = tokio::sync::Semaphore::new(args.limits.max_concurrent_opens.max(1));
    let peer_listener = match (&pg, &replica_tls) {
        (Some(pg), Some((peer_url, cert, key))) => {
            let listener = TcpListener::bind(args.store.peer_addr)
                .await
                .map_err(|source| HubError::Bind {
                    addr: args.store.peer_addr,
                    flag: "--peer-addr",
                    source,
                })?;
            let replica_id = format!(
                "{}-{}",
                gethostname::gethostname().to_string_lossy(),
                pki::random_token(6)
            );
            let peers = super::peer::Peers::new(&peer_ca_pem, cert, key.as_str(), args.limits.max_answer_bytes);
            state.cluster = Some(Arc::new(super::cluster::Cluster::new(
                pg.clone(),
                replica_id,
                peer_url.clone(),
                peers,
            )));
            Some(listener)
        }
        _ => None,
    };
    state.protocol_version = args.protocol_version;
    // The tunnel's WebSocket arrived with protocol 3; a hub pinned older does not take it.
    let websocket = args.protocol_version >= 3;
    let state = Arc::new(state);
    state.fleet.set_app_metrics(args.history.app_metrics);
    let tree = Tree::new();
    let recorder_stop = tree.token().clone();
    tree.spawn_critical("hub change-feed recorder", recorder.run(recorder_stop));
    // The recorder notes each batch it wrote; the heap it freed goes back once the hub is quiet.
    tree.spawn(crate::util::heap::trim_after_bursts(tree.token().clone()));
    if let (Some(cluster), Some(listener), Some((_, cert, key))) = (&state.cluster, peer_listener, &replica_tls) {
        spawn_cluster(
            &tree,
            &state,
            cluster,
            listener,
            &args,
            &peer_ca_pem,
            cert,
            key.as_str(),
        )?;
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<TunnelServer<TunnelService>>().await;
    health_reporter
        .set_serving::<RegistrationServer<RegistrationService>>()
        .await;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(
            RegistrationServer::new(RegistrationService { state: state.clone() })
                .max_decoding_message_size(MAX_DECODED_MESSAGE_BYTES),
        )
        .add_service(
            TunnelServer::new(TunnelService { state: state.clone() })
                .max_decoding_message_size(MAX_DECODED_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_DECODED_MESSAGE_BYTES),
        );
    let grpc_stop = tree.token().clone();
    let metrics = state.metrics.clone();
    if args.plaintext {
        let incoming = listen::plaintext(&tree, grpc_listener, &args.limits, metrics, websocket);
        tree.spawn_critical("hub gRPC server", async move {
            router
                .serve_with_incoming_shutdown(incoming, grpc_stop.cancelled_owned())
                .await
        });
    } else {
        let config = server_tls(&pki.server_chain_pem, pki.server_key_pem.expose(), &ca_pem, websocket)?;
        let incoming = listen::tls(
            &tree,
            grpc_listener,
            &args.limits,
            metrics,
            config,
            state.require_client_cert,
            websocket,
        );
        tree.spawn_critical("hub gRPC server", async move {
            router
                .serve_with_incoming_shutdown(incoming, grpc_stop.cancelled_owned())
                .await
        });
    }

    let host = if args.hostnames.is_empty() {
        "localhost".to_owned()
    } else {
        args.hostnames[0].clone()
    };
    let public_url = args.public_url.clone().unwrap_or_else(|| {
        let scheme = if args.plaintext { "http" } else { "https" };
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        format!("{scheme}://{host}:{}", grpc_addr.port())
    });
    let api_state = Arc::new(api::ApiState {
        hub: state.clone(),
        admin_token: pki.admin_token.clone(),
        public_url,
        plaintext: args.plaintext,
        helm_chart: args.helm_chart.clone(),
        registry: {
            let mut r = prometheus_client::registry::Registry::default();
            crate::telemetry::register_build_info(&mut r);
            state.metrics.register(&mut r);
            r.register_with_unit(
                "argocd_gateway_hub_relay_lag",
                "Relay lag of every delta: from the gateway seeing a change in Argo CD to the hub receiving it",
                prometheus_client::registry::Unit::Seconds,
                state.fleet.lag_seconds.clone(),
            );
            r.register_collector(Box::new(super::fleet::FleetCollector { state: state.clone() }));
            r
        },
        secure_cookies: http_tls.is_some(),
        session_ttl: args.http.session_ttl,
        shutdown: tree.token().clone(),
    });
    let checks = (state.clone(), args.health_check_interval, tree.token().clone());
    tree.spawn_critical("hub health checks", async move {
        super::health::periodic_health_checks(checks.0, checks.1, checks.2).await;
        Ok::<(), std::convert::Infallible>(())
    });
    let reaper = (state.clone(), tree.token().clone());
    tree.spawn_critical("hub registration reaper", async move {
        super::lifecycle::reap_pending(reaper.0, reaper.1).await;
        Ok::<(), std::convert::Infallible>(())
    });
    let http_url = format!("{}://{http_addr}", if http_tls.is_some() { "https" } else { "http" });
    let app = api::router(api_state);
    crate::serve::spawn_http(
        &tree,
        if http_tls.is_some() { "hub HTTPS" } else { "hub HTTP" },
        http_listener,
        app,
        crate::serve::HttpLimits {
            max_connections: args.limits.max_http_connections,
            header_timeout: args.limits.http_header_timeout,
            tls: http_tls,
            ..Default::default()
        },
        state.metrics.http_connections_refused.clone(),
    );
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_url,
        tls = !args.plaintext,
        protocol_version = args.protocol_version,
        ca_fingerprint = %ca_fingerprint,
        admin_token_file = %pki.admin_token_path.display(),
        "hub serving"
    );
    Ok(Hub {
        grpc_addr,
        http_addr,
        http_url,
        admin_token_path: pki.admin_token_path,
        ca_fingerprint,
        ca_pem,
        state,
        tree,
    })
}

impl Hub {
    /// How many gateways are connected now (to this replica).
    pub fn connected_gateways(&self) -> usize {
        self.state.sessions.len()
    }

    /// This replica's id, with PostgreSQL (none with SQLite).
    pub fn replica_id(&self) -> Option<&str> {
        self.state.cluster.as_ref().map(|c| c.replica_id.as_str())
    }

    /// Resolves when one of the hub's critical tasks (a server, the health checks) has ended;
    /// the caller shuts the hub down and exits non-zero.
    pub async fn failed(&self) -> TaskFailure {
        self.tree.failed().await
    }

    /// Stops without telling gateways anything, as a crashed or killed hub would: their
    /// streams just end. For soak tests and benchmarks of the reconnect path.
    pub async fn stop_abruptly(self) {
        self.state.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        for (_, session) in self.state.sessions.all() {
            session.broker.close();
            session.cancel.cancel();
        }
        self.state.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.state.tasks.wait()).await;
        self.tree.shutdown(Duration::from_secs(2)).await;
    }

    /// Tells every gateway to come back after a short jittered delay, closes their streams and
    /// stops serving.
    pub async fn shutdown(self) {
        self.state.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        let sessions = self.state.sessions.all();
        for (gateway_id, session) in &sessions {
            let _ = session.tx.try_send(Ok(HubMessage {
                body: Some(hub_message::Body::Drain(drain_message())),
            }));
            session.cancel.cancel();
            tracing::debug!(gateway_id = %gateway_id, "sent drain");
        }
        self.state.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.state.tasks.wait()).await;
        if let Some(cluster) = &self.state.cluster {
            cluster.leave().await;
        }
        if !self.tree.shutdown(Duration::from_secs(5)).await {
            tracing::warn!("some hub tasks did not stop within 5 s");
        }
    }
}

/// Starts what a replica on PostgreSQL runs besides a single hub: the peer listener for
/// forwarded requests (mutual TLS, replicas only) and the cluster's tasks (lease, notifications,
/// replication of relayed state, the shared change feed).
#[allow(clippy::too_many_arguments)]
fn spawn_cluster(
    tree: &Tree,
    state: &Arc<HubState>,
    cluster: &Arc<super::cluster::Cluster>,
    listener: TcpListener,
    args: &ServeArgs,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), HubError> {
    let peer_err = |e: Box<dyn std::error::Error + Send + Sync>| HubError::Peer(e.to_string());
    let provider = crate::tls::provider();
    let chain = format!("{}\n{}", cert_pem.trim_end(), ca_pem.trim_end());
    let chain = crate::tls::parse_certs_pem(chain.as_bytes(), "replica certificate").map_err(|e| peer_err(e.into()))?;
    let key = crate::tls::parse_key_pem(key_pem.as_bytes(), "replica key").map_err(|e| peer_err(e.into()))?;
    let ca = crate::tls::parse_certs_pem(ca_pem.as_bytes(), "hub CA").map_err(|e| peer_err(e.into()))?;
    // Only certificates of this hub's CA get in; the service then admits replicas only.
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(crate::tls::root_store(&ca)),
        provider.clone(),
    )
    .build()
    .map_err(|e| peer_err(e.into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| peer_err(e.into()))?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .map_err(|e| peer_err(e.into()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let incoming = listen::tls(
        tree,
        listener,
        &args.limits,
        state.metrics.clone(),
        Arc::new(config),
        false,
        // Replicas speak gRPC over HTTP/2 to each other; no WebSocket here.
        false,
    );
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            crate::wire::proto::hub_peer_server::HubPeerServer::new(super::peer::PeerService { state: state.clone() })
                .max_encoding_message_size(MAX_DECODED_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_DECODED_MESSAGE_BYTES),
        );
    let stop = tree.token().clone();
    tree.spawn_critical("hub peer server", async move {
        router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
    });
    let (s, c, t) = (state.clone(), cluster.clone(), tree.token().clone());
    tree.spawn_critical("hub replica lease", async move {
        super::cluster::heartbeat(s, c, t).await;
        Ok::<(), std::convert::Infallible>(())
    });
    let (s, c, t) = (state.clone(), cluster.clone(), tree.token().clone());
    tree.spawn_critical("hub replica notifications", async move {
        super::cluster::listen(s, c, t).await;
        Ok::<(), std::convert::Infallible>(())
    });
    let (s, c, t) = (state.clone(), cluster.clone(), tree.token().clone());
    tree.spawn_critical("hub replica state follower", async move {
        super::cluster::replicate(s, c, t).await;
        Ok::<(), std::convert::Infallible>(())
    });
    let (s, c, t) = (state.clone(), cluster.clone(), tree.token().clone());
    tree.spawn_critical("hub change-feed follower", async move {
        super::cluster::tail_feed(s, c, t).await;
        Ok::<(), std::convert::Infallible>(())
    });
    tracing::info!(replica = %cluster.replica_id, peer_url = %cluster.peer_url, "hub replica joined");
    Ok(())
}

/// The drain a gateway gets when the hub shuts down: come back after a short jittered delay,
/// which spreads the reconnects so a restarted hub is not hit by every gateway at once.
pub(super) fn drain_message() -> Drain {
    let retry_after = crate::util::jitter(Duration::from_millis(500), Duration::from_millis(3000));
    Drain {
        retry_after_ms: retry_after.as_millis() as u32,
        reason: "hub shutting down".into(),
    }
}

/// The gRPC listener's TLS: the hub's server certificate, HTTP/2 (and with `websocket`
/// HTTP/1.1 for the tunnel's WebSocket), and client certificates from the hub CA requested but
/// not demanded (registration has none yet; the services require one where it matters, see
/// `auth`).
fn server_tls(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    websocket: bool,
) -> Result<Arc<rustls::ServerConfig>, HubError> {
    let tls = |e: Box<dyn std::error::Error + Send + Sync>| HubError::Tls(e);
    let provider = crate::tls::provider();
    let chain = crate::tls::parse_certs_pem(chain_pem.as_bytes(), "server certificate").map_err(|e| tls(e.into()))?;
    let key = crate::tls::parse_key_pem(key_pem.as_bytes(), "server key").map_err(|e| tls(e.into()))?;
    let ca = crate::tls::parse_certs_pem(ca_pem.as_bytes(), "hub CA").map_err(|e| tls(e.into()))?;
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(crate::tls::root_store(&ca)),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(e.into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.into()))?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .map_err(|e| tls(e.into()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    if websocket {
        config.alpn_protocols.push(b"http/1.1".to_vec());
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_and_history_flags_check_their_values() {
        use clap::Parser;
        let defaults = ServeArgs::new("d");
        assert_eq!(defaults.http.session_ttl, Duration::from_secs(12 * 3600));
        assert!(!defaults.http.http_tls);
        assert_eq!(defaults.history.config(), HistoryConfig::default());
        assert!(!defaults.history.app_metrics);
        assert!(
            ServeCli::try_parse_from(["hub", "--http-tls-cert", "c.pem"]).is_err(),
            "a certificate needs its key"
        );
        assert!(ServeCli::try_parse_from(["hub", "--feed-backlog", "0"]).is_err());
    }
}
