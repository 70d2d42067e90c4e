//! The hub's store on PostgreSQL ([`PgStore`]), for several `hub serve` replicas on one database:
//! the same [`Backend`] as SQLite, plus what replicas coordinate through (see [`super::cluster`]):
//! each replica's lease, which session of which replica owns each gateway, entity revisions for
//! replicas to follow each other's writes, and notifications (`LISTEN`/`NOTIFY`).
//!
//! Guarantees the replicas rely on:
//! - schema migrations are versioned and applied on start under an advisory lock, so replicas
//!   starting together do not race, and a database newer than this hub is refused;
//! - a registration token is claimed with a row lock: one success however many replicas race;
//! - change-feed ids come from one sequence and are assigned under a transaction-scoped advisory
//!   lock, so they commit in id order: a reader that saw id N has seen every id below it;
//! - every entity write of a gateway takes that gateway's row lock and numbers its rows from one
//!   sequence (`rev`): per gateway, revisions commit in order, deletions leave tombstones for a
//!   while, and a reader follows with `rev > last seen`;
//! - with an owner (a session id), an entity write happens only while that session owns the
//!   gateway (fencing): a session another replica took over cannot change the state any more.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::try_join_all;
use tokio_postgres::Row;

use super::store::{
    ApiTokenRecord, Backend, CertRecord, EntityRow, EntityUpsert, FeedBounds, FeedEventRow, GatewayRecord, MakeGateway,
    NewFeedEvent, NewGateway, PendingGateway, RemovedGateway, StepRecord, StoreError, TimelineRow, TokenCheck,
    TokenRecord, TokenState, WebSessionRecord,
};
use crate::secret::Secret;

/// Where the PostgreSQL store is and how to reach it.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=…]` (or the key=value form).
    pub url: Secret,
    /// A file holding the password (overrides one in the URL).
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates to verify the database's TLS certificate with (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(self.url.expose()))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// The URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // The key=value form: drop the password pair.
        Err(_) => url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The stream of a connection outside the pool (plain or TLS).
pub type ListenerStream =
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    where_: String,
}

/// Advisory lock keys (arbitrary, fixed): schema migrations and the change feed's id order.
const MIGRATION_LOCK: i64 = 0x6172_676f_0001;
const FEED_LOCK: i64 = 0x6172_676f_0002;

/// Channels replicas notify each other on; the payload is a gateway id (none for the feed).
pub mod channel {
    /// A gateway's session changed owner or ended.
    pub const SESSIONS: &str = "hub_sessions";
    /// A gateway's relayed state changed.
    pub const ENTITIES: &str = "hub_entities";
    /// A gateway was deleted.
    pub const GATEWAYS: &str = "hub_gateways";
    /// Change-feed events were recorded.
    pub const FEED: &str = "hub_feed";
    /// Every channel.
    pub const ALL: [&str; 4] = [SESSIONS, ENTITIES, GATEWAYS, FEED];
}

/// The schema, by version; applied in order on start, each in its own transaction.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store keeps, plus replica coordination.
    "CREATE TABLE registration_tokens (
        id TEXT PRIMARY KEY,
        secret_hash BYTEA NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        environments TEXT NOT NULL DEFAULT '[]',
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT,
        gateway_id TEXT
    );
    CREATE INDEX registration_tokens_gateway ON registration_tokens(gateway_id);
    CREATE TABLE gateways (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        environments TEXT NOT NULL DEFAULT '[]',
        argocd_web_url TEXT NOT NULL DEFAULT '',
        created_at BIGINT NOT NULL,
        last_seen_at BIGINT,
        version TEXT NOT NULL DEFAULT '',
        protocol_version INTEGER NOT NULL DEFAULT 0,
        certificate_expires_at BIGINT
    );
    CREATE TABLE certificates (
        fingerprint TEXT PRIMARY KEY,
        gateway_id TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
        public_key BYTEA NOT NULL,
        not_after BIGINT NOT NULL,
        retire_after BIGINT
    );
    CREATE INDEX certificates_gateway ON certificates(gateway_id);
    -- Relayed entities. json NULL is a tombstone (a deletion other replicas have to see); rev
    -- numbers every write of a gateway in commit order.
    CREATE SEQUENCE entity_rev;
    CREATE TABLE entities (
        gateway_id TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
        kind SMALLINT NOT NULL,
        key TEXT NOT NULL,
        hash BYTEA NOT NULL,
        json BYTEA,
        rev BIGINT NOT NULL,
        changed_at BIGINT NOT NULL,
        PRIMARY KEY (gateway_id, kind, key)
    );
    CREATE INDEX entities_rev ON entities(gateway_id, rev);
    CREATE INDEX entities_tombstones ON entities(changed_at) WHERE json IS NULL;
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE registration_steps (
        token_id TEXT NOT NULL,
        step TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        at BIGINT NOT NULL,
        PRIMARY KEY (token_id, step)
    );
    CREATE TABLE removed_gateways (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        environments TEXT NOT NULL DEFAULT '[]',
        registered_at BIGINT NOT NULL,
        removed_at BIGINT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE update_holds (
        gateway_id TEXT PRIMARY KEY REFERENCES gateways(id) ON DELETE CASCADE,
        reason TEXT NOT NULL,
        since BIGINT NOT NULL
    );
    CREATE TABLE feed_events (
        id BIGSERIAL PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        json TEXT NOT NULL
    );
    CREATE INDEX feed_events_at ON feed_events(at_ms);
    CREATE TABLE app_timeline (
        id BIGSERIAL PRIMARY KEY,
        gateway_id TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
        app TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        health TEXT NOT NULL,
        health_message TEXT NOT NULL,
        sync TEXT NOT NULL,
        revision TEXT NOT NULL,
        phase TEXT NOT NULL,
        operation_message TEXT NOT NULL,
        changed TEXT NOT NULL
    );
    CREATE INDEX app_timeline_app ON app_timeline(gateway_id, app, id);
    CREATE INDEX app_timeline_at ON app_timeline(at_ms);
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        last_used_at BIGINT
    );
    CREATE TABLE web_sessions (
        id_hash BYTEA PRIMARY KEY,
        credential TEXT NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX web_sessions_credential ON web_sessions(credential);
    CREATE TABLE assertion_nonces (
        jti TEXT PRIMARY KEY,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX assertion_nonces_expiry ON assertion_nonces(expires_at);
    -- Replicas and their leases (the database's clock decides expiry).
    CREATE TABLE hub_replicas (
        id TEXT PRIMARY KEY,
        peer_url TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        lease_until TIMESTAMPTZ NOT NULL
    );
    -- Which session of which replica owns each connected gateway.
    CREATE TABLE gateway_sessions (
        gateway_id TEXT PRIMARY KEY REFERENCES gateways(id) ON DELETE CASCADE,
        session_id TEXT NOT NULL,
        replica_id TEXT NOT NULL,
        instance TEXT NOT NULL DEFAULT '',
        version TEXT NOT NULL DEFAULT '',
        protocol_version INTEGER NOT NULL DEFAULT 0,
        connected_at BIGINT NOT NULL
    );
    CREATE INDEX gateway_sessions_replica ON gateway_sessions(replica_id);",
];

const GATEWAY_COLUMNS: &str = "id, name, environments, argocd_web_url, created_at, last_seen_at, version, protocol_version, certificate_expires_at";
const TIMELINE_COLUMNS: &str =
    "id, gateway_id, app, at_ms, health, health_message, sync, revision, phase, operation_message, changed";
const API_TOKEN_COLUMNS: &str = "id, name, role, created_at, expires_at, last_used_at";
const FEED_PRUNED_KEY: &str = "feed_pruned_through";
/// How long a registration without a known token may stay pending (as in SQLite).
const PENDING_WITHOUT_TOKEN: i64 = 3600;

fn envs_to_json(envs: &[String]) -> String {
    serde_json::to_string(envs).unwrap_or_else(|_| "[]".into())
}

fn envs_from_json(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn gateway_from_row(r: &Row) -> GatewayRecord {
    GatewayRecord {
        id: r.get(0),
        name: r.get(1),
        environments: envs_from_json(r.get(2)),
        argocd_web_url: r.get(3),
        created_at: r.get(4),
        last_seen_at: r.get(5),
        version: r.get(6),
        protocol_version: r.get::<_, i32>(7) as u32,
        certificate_expires_at: r.get(8),
    }
}

fn token_from_row(r: &Row) -> TokenRecord {
    TokenRecord {
        id: r.get(0),
        name: r.get(1),
        environments: envs_from_json(r.get(2)),
        created_at: r.get(3),
        expires_at: r.get(4),
        used_at: r.get(5),
        gateway_id: r.get(6),
    }
}

fn timeline_from_row(r: &Row) -> TimelineRow {
    let changed: String = r.get(10);
    TimelineRow {
        id: r.get(0),
        gateway_id: r.get(1),
        app: r.get(2),
        at_ms: r.get(3),
        health: r.get(4),
        health_message: r.get(5),
        sync: r.get(6),
        revision: r.get(7),
        operation_phase: r.get(8),
        operation_message: r.get(9),
        changed: changed
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

fn api_token_from_row(r: &Row) -> ApiTokenRecord {
    ApiTokenRecord {
        id: r.get(0),
        name: r.get(1),
        role: r.get(2),
        created_at: r.get(3),
        expires_at: r.get(4),
        last_used_at: r.get(5),
    }
}

/// Errors opening the PostgreSQL store; each names the setting to change.
#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    /// The URL does not parse.
    #[error(
        "--store is not a PostgreSQL URL ({url}): {source} (flag --store or --store-file, Helm database.url or database.urlSecretName)"
    )]
    Url {
        /// The redacted URL.
        url: String,
        /// Why.
        source: tokio_postgres::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source} (flag {flag})")]
    File {
        /// The file.
        path: PathBuf,
        /// The flag that named it.
        flag: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The CA file holds no certificate.
    #[error("{0} (flag --store-ca-file)")]
    Ca(String),
    /// The database could not be reached or refused the login.
    #[error(
        "cannot connect to PostgreSQL at {at}: {source} (flags --store or --store-file, --store-password-file; Helm database.*)"
    )]
    Connect {
        /// Where.
        at: String,
        /// Why.
        source: StoreError,
    },
    /// Applying the schema failed.
    #[error("cannot migrate the hub schema in PostgreSQL at {at}: {source}")]
    Migrate {
        /// Where.
        at: String,
        /// Why.
        source: StoreError,
    },
    /// The database was migrated by a newer hub.
    #[error(
        "the hub schema in PostgreSQL at {at} is version {found}, newer than this hub knows ({known}): run the newer hub version (image tag) on every replica"
    )]
    TooNew {
        /// Where.
        at: String,
        /// The database's version.
        found: i32,
        /// This build's.
        known: i32,
    },
}

impl PgStore {
    /// Connects, applies the schema migrations this database has not seen (under a lock shared
    /// by every replica), and returns the store.
    pub async fn open(options: &PgOptions) -> Result<Self, PgOpenError> {
        let mut config = tokio_postgres::Config::from_str(options.url.expose()).map_err(|source| PgOpenError::Url {
            url: redact_url(options.url.expose()),
            source,
        })?;
        if let Some(path) = &options.password_file {
            let password = std::fs::read_to_string(path).map_err(|source| PgOpenError::File {
                path: path.clone(),
                flag: "--store-password-file",
                source,
            })?;
            config.password(password.trim_end_matches(['\n', '\r']));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("argocd-gateway-hub");
        }
        let tls = tls_connector(options.ca_file.as_deref())?;
        let where_ = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| PgOpenError::Connect {
                at: where_.clone(),
                source: StoreError::Postgres(e.to_string()),
            })?;
        let store = Self {
            pool,
            config,
            tls,
            where_,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Where the database is (host, port, database; never the password).
    pub fn describe(&self) -> &str {
        &self.where_
    }

    /// A new connection outside the pool (for `LISTEN`), driven by the returned future.
    pub async fn connect_listener(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, ListenerStream>,
        ),
        StoreError,
    > {
        Ok(self.config.connect(self.tls.clone()).await?)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    async fn migrate(&self) -> Result<(), PgOpenError> {
        let at = self.where_.clone();
        let connect = |source| PgOpenError::Connect { at: at.clone(), source };
        let migrate = |source| PgOpenError::Migrate { at: at.clone(), source };
        let mut client = self.client().await.map_err(connect)?;
        // Session-level: held across the migrations' transactions, released below (or when the
        // connection ends, should this process die meanwhile).
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| migrate(e.into()))?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                )
                .await?;
            let done: i32 = client
                .query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])
                .await?
                .get(0);
            Ok::<_, StoreError>(done)
        }
        .await;
        let done = match result {
            Ok(d) => d,
            Err(e) => {
                let _ = client
                    .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                    .await;
                return Err(migrate(e));
            }
        };
        let known = MIGRATIONS.len() as i32;
        if done > known {
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                .await;
            return Err(PgOpenError::TooNew {
                at: self.where_.clone(),
                found: done,
                known,
            });
        }
        let mut applied = Ok(());
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
            let version = i as i32 + 1;
            let step = async {
                let tx = client.transaction().await?;
                tx.batch_execute(sql).await?;
                tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version])
                    .await?;
                tx.commit().await?;
                Ok::<_, StoreError>(())
            }
            .await;
            if let Err(e) = step {
                applied = Err(e);
                break;
            }
            tracing::info!(version, database = %self.where_, "applied a hub schema migration");
        }
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        applied.map_err(migrate)
    }
}

/// Host, port and database of a configuration, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or("postgres"))
}

/// TLS to the database with rustls and ring: the system's roots plus `--store-ca-file`. Used when
/// the URL's `sslmode` asks for TLS (`prefer`, the default, or `require`); a certificate that does
/// not verify fails the connection rather than falling back to plain text.
fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgOpenError> {
    let mut roots: Vec<rustls_pki_types::CertificateDer<'static>> = crate::tls::system_roots().to_vec();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| PgOpenError::File {
            path: path.to_owned(),
            flag: "--store-ca-file",
            source,
        })?;
        let certs = crate::tls::parse_certs_pem(&pem, "database CA").map_err(|e| PgOpenError::Ca(e.to_string()))?;
        roots.extend(certs);
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgOpenError::Ca(e.to_string()))?
        .with_root_certificates(crate::tls::root_store(&roots))
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The database's own message (and code) is in the source; keep it in one line.
        let detail = match e.as_db_error() {
            Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
            None => match std::error::Error::source(&e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            },
        };
        StoreError::Postgres(detail)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Postgres(format!("no database connection: {other}")),
        }
    }
}

#[async_trait::async_trait]
impl Backend for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn insert_token(&self, record: TokenRecord, secret_hash: Vec<u8>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO registration_tokens (id, secret_hash, name, environments, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&record.id, &secret_hash, &record.name, &envs_to_json(&record.environments), &record.created_at, &record.expires_at],
            )
            .await?;
        Ok(())
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, name, environments, created_at, expires_at, used_at, gateway_id FROM registration_tokens ORDER BY created_at DESC, id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(token_from_row).collect())
    }

    async fn delete_token(&self, id: String) -> Result<bool, StoreError> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM registration_tokens WHERE id = $1", &[&id])
            .await?
            > 0)
    }

    async fn register_with_token(
        &self,
        id: String,
        secret_hash: Vec<u8>,
        now: i64,
        make: MakeGateway,
    ) -> Result<(TokenCheck, Option<NewGateway>), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The row lock makes a second claim wait, then see the token used.
        let row = tx
            .query_opt(
                "SELECT secret_hash, name, environments, expires_at, used_at FROM registration_tokens WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
        let Some(row) = row else {
            return Ok((TokenCheck::Unknown, None));
        };
        let hash: Vec<u8> = row.get(0);
        let (name, envs, expires_at, used_at): (String, String, i64, Option<i64>) =
            (row.get(1), row.get(2), row.get(3), row.get(4));
        if !crate::util::constant_time_eq(&hash, &secret_hash) {
            return Ok((TokenCheck::Unknown, None));
        }
        if used_at.is_some() {
            return Ok((TokenCheck::Used, None));
        }
        if expires_at <= now {
            return Ok((TokenCheck::Expired, None));
        }
        let environments = envs_from_json(&envs);
        let new = make(&name, &environments)?;
        let g = &new.gateway;
        tx.execute(
            &format!("INSERT INTO gateways ({GATEWAY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
            &[
                &g.id,
                &g.name,
                &envs_to_json(&g.environments),
                &g.argocd_web_url,
                &g.created_at,
                &g.last_seen_at,
                &g.version,
                &(g.protocol_version as i32),
                &g.certificate_expires_at,
            ],
        )
        .await?;
        insert_cert(&tx, &new.cert).await?;
        tx.execute(
            "UPDATE registration_tokens SET used_at = $2, gateway_id = $3 WHERE id = $1",
            &[&id, &now, &g.id],
        )
        .await?;
        tx.commit().await?;
        Ok((TokenCheck::Consumed { name, environments }, Some(new)))
    }

    async fn add_certificate(&self, cert: CertRecord, retire_after: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE certificates SET retire_after = $3 WHERE gateway_id = $1 AND fingerprint <> $2 AND (retire_after IS NULL OR retire_after > $3)",
            &[&cert.gateway_id, &cert.fingerprint, &retire_after],
        )
        .await?;
        insert_cert(&tx, &cert).await?;
        tx.execute(
            "UPDATE gateways SET certificate_expires_at = greatest(coalesce(certificate_expires_at, 0), $2) WHERE id = $1",
            &[&cert.gateway_id, &cert.not_after],
        )
        .await?;
        tx.execute(
            "DELETE FROM certificates WHERE gateway_id = $1 AND not_after < $2",
            &[&cert.gateway_id, &(cert.not_after - 400 * 86400)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn certificate(&self, fingerprint: String) -> Result<Option<CertRecord>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT fingerprint, gateway_id, public_key, not_after, retire_after FROM certificates WHERE fingerprint = $1",
                &[&fingerprint],
            )
            .await?;
        Ok(row.map(|r| CertRecord {
            fingerprint: r.get(0),
            gateway_id: r.get(1),
            public_key: r.get(2),
            not_after: r.get(3),
            retire_after: r.get(4),
        }))
    }

    async fn gateway(&self, id: String) -> Result<Option<GatewayRecord>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE id = $1"), &[&id])
            .await?;
        Ok(row.as_ref().map(gateway_from_row))
    }

    async fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {GATEWAY_COLUMNS} FROM gateways ORDER BY name, id"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(gateway_from_row).collect())
    }

    async fn delete_gateway(&self, id: String) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let gone = tx.execute("DELETE FROM gateways WHERE id = $1", &[&id]).await? > 0;
        if gone {
            tx.execute("SELECT pg_notify($1, $2)", &[&channel::GATEWAYS, &id])
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    async fn record_hello(
        &self,
        id: String,
        version: String,
        protocol_version: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE gateways SET version = $2, protocol_version = $3, last_seen_at = $4 WHERE id = $1",
                &[&id, &version, &(protocol_version as i32), &now],
            )
            .await?;
        Ok(())
    }

    async fn load_entities(&self) -> Result<Vec<EntityRow>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT gateway_id, kind, key, hash, json FROM entities WHERE json IS NOT NULL",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i16>(1) as u8, r.get(2), r.get(3), r.get(4)))
            .collect())
    }

    async fn write_entities(
        &self,
        gateway_id: String,
        replace: bool,
        upserts: Vec<EntityUpsert>,
        deletes: Vec<(u8, String)>,
        owner: Option<String>,
    ) -> Result<i64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One writer per gateway at a time, so its revisions commit in order.
        let exists = tx
            .query_opt("SELECT 1 FROM gateways WHERE id = $1 FOR NO KEY UPDATE", &[&gateway_id])
            .await?;
        if exists.is_none() {
            return Err(StoreError::Fenced(gateway_id));
        }
        if let Some(owner) = &owner {
            let current = tx
                .query_opt(
                    "SELECT session_id FROM gateway_sessions WHERE gateway_id = $1",
                    &[&gateway_id],
                )
                .await?;
            if current.map(|r| r.get::<_, String>(0)).as_ref() != Some(owner) {
                return Err(StoreError::Fenced(gateway_id));
            }
        }
        let now = crate::util::unix_ms_now();
        let floor: i64 = tx.query_one("SELECT nextval('entity_rev')", &[]).await?.get(0);
        let up = tx
            .prepare_cached(
                "INSERT INTO entities (gateway_id, kind, key, hash, json, rev, changed_at) VALUES ($1, $2, $3, $4, $5, nextval('entity_rev'), $6)
                 ON CONFLICT (gateway_id, kind, key) DO UPDATE SET hash = excluded.hash, json = excluded.json, rev = excluded.rev, changed_at = excluded.changed_at",
            )
            .await?;
        // Pipelined: one round trip for the whole batch, executed in order.
        let txr = &tx;
        try_join_all(upserts.iter().map(|(kind, key, hash, json)| {
            let kind = i16::from(*kind);
            let json: &[u8] = json.as_slice();
            let up = &up;
            let gateway_id = &gateway_id;
            async move { txr.execute(up, &[gateway_id, &kind, key, hash, &json, &now]).await }
        }))
        .await?;
        if replace {
            // What the snapshot did not carry is gone: tombstones, for the other replicas.
            tx.execute(
                "UPDATE entities SET json = NULL, hash = '\\x', rev = nextval('entity_rev'), changed_at = $3 WHERE gateway_id = $1 AND json IS NOT NULL AND rev <= $2",
                &[&gateway_id, &floor, &now],
            )
            .await?;
        }
        let del = tx
            .prepare_cached(
                "UPDATE entities SET json = NULL, hash = '\\x', rev = nextval('entity_rev'), changed_at = $4 WHERE gateway_id = $1 AND kind = $2 AND key = $3 AND json IS NOT NULL",
            )
            .await?;
        try_join_all(deletes.iter().map(|(kind, key)| {
            let kind = i16::from(*kind);
            let del = &del;
            let gateway_id = &gateway_id;
            async move { txr.execute(del, &[gateway_id, &kind, key, &now]).await }
        }))
        .await?;
        let rev: i64 = tx.query_one("SELECT currval('entity_rev')", &[]).await?.get(0);
        tx.execute("SELECT pg_notify($1, $2)", &[&channel::ENTITIES, &gateway_id])
            .await?;
        tx.commit().await?;
        Ok(rev)
    }

    async fn record_seen(&self, id: String, now: i64) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("UPDATE gateways SET last_seen_at = $2 WHERE id = $1", &[&id, &now])
            .await?;
        Ok(())
    }

    async fn setting(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT value FROM settings WHERE key = $1", &[&key])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn set_setting(&self, key: &'static str, value: String, now: i64) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                &[&key, &value, &now],
            )
            .await?;
        Ok(())
    }

    async fn use_nonce(&self, jti: String, expires_at: i64, now: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM assertion_nonces WHERE expires_at < $1", &[&now])
            .await?;
        let inserted = client
            .execute(
                "INSERT INTO assertion_nonces (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
                &[&jti, &expires_at],
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn record_step(
        &self,
        token_id: String,
        step: &'static str,
        state: &'static str,
        message: String,
        now: i64,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO registration_steps (token_id, step, state, message, at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (token_id, step) DO UPDATE SET state = excluded.state, message = excluded.message, at = excluded.at
                 WHERE registration_steps.state <> 'done'",
                &[&token_id, &step, &state, &message, &now],
            )
            .await?;
        Ok(())
    }

    async fn record_gateway_step(
        &self,
        gateway_id: String,
        step: &'static str,
        state: &'static str,
        message: String,
        now: i64,
        first_only: bool,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let token = client
            .query_opt(
                "SELECT id FROM registration_tokens WHERE gateway_id = $1",
                &[&gateway_id],
            )
            .await?;
        let Some(token) = token.map(|r| r.get::<_, String>(0)) else {
            return Ok(false);
        };
        let sql = if first_only {
            "INSERT INTO registration_steps (token_id, step, state, message, at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_id, step) DO NOTHING"
        } else {
            "INSERT INTO registration_steps (token_id, step, state, message, at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (token_id, step) DO UPDATE SET state = excluded.state, message = excluded.message, at = excluded.at
             WHERE registration_steps.state <> 'done' AND (registration_steps.state <> excluded.state OR registration_steps.message <> excluded.message)"
        };
        Ok(client.execute(sql, &[&token, &step, &state, &message, &now]).await? > 0)
    }

    async fn token_steps(&self, token_id: String) -> Result<Vec<StepRecord>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT step, state, message, at FROM registration_steps WHERE token_id = $1",
                &[&token_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StepRecord {
                step: r.get(0),
                state: r.get(1),
                message: r.get(2),
                at: r.get(3),
            })
            .collect())
    }

    async fn gateway_steps(&self, gateway_id: String) -> Result<Option<Vec<StepRecord>>, StoreError> {
        let token = self
            .client()
            .await?
            .query_opt(
                "SELECT id FROM registration_tokens WHERE gateway_id = $1",
                &[&gateway_id],
            )
            .await?;
        match token {
            Some(t) => Ok(Some(self.token_steps(t.get(0)).await?)),
            None => Ok(None),
        }
    }

    async fn token(&self, id: String) -> Result<Option<TokenRecord>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, name, environments, created_at, expires_at, used_at, gateway_id FROM registration_tokens WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(token_from_row))
    }

    async fn check_token(&self, id: String, secret_hash: Vec<u8>, now: i64) -> Result<TokenState, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT secret_hash, expires_at, used_at FROM registration_tokens WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(match row {
            None => TokenState::Unknown,
            Some(r) => {
                let hash: Vec<u8> = r.get(0);
                let (expires_at, used_at): (i64, Option<i64>) = (r.get(1), r.get(2));
                if !crate::util::constant_time_eq(&hash, &secret_hash) {
                    TokenState::Unknown
                } else if used_at.is_some() {
                    TokenState::Used
                } else if expires_at <= now {
                    TokenState::Expired
                } else {
                    TokenState::Active
                }
            }
        })
    }

    async fn pending_gateways(&self) -> Result<Vec<PendingGateway>, StoreError> {
        let cols = GATEWAY_COLUMNS
            .split(", ")
            .map(|col| format!("g.{col}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {cols}, t.id, t.expires_at FROM gateways g LEFT JOIN registration_tokens t ON t.gateway_id = g.id WHERE g.protocol_version = 0"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let gateway = gateway_from_row(r);
                let token_id: Option<String> = r.get(9);
                let token_expiry: Option<i64> = r.get(10);
                let expires_at = token_expiry.unwrap_or(gateway.created_at + PENDING_WITHOUT_TOKEN);
                PendingGateway {
                    gateway,
                    token_id,
                    expires_at,
                }
            })
            .collect())
    }

    async fn remove_gateway(
        &self,
        id: String,
        reason: String,
        now: i64,
        only_pending: bool,
    ) -> Result<Option<GatewayRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?;
        let Some(g) = row.as_ref().map(gateway_from_row) else {
            return Ok(None);
        };
        if only_pending && g.protocol_version != 0 {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO removed_gateways (id, name, environments, registered_at, removed_at, reason) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, environments = excluded.environments, registered_at = excluded.registered_at, removed_at = excluded.removed_at, reason = excluded.reason",
            &[&g.id, &g.name, &envs_to_json(&g.environments), &g.created_at, &now, &reason],
        )
        .await?;
        tx.execute("DELETE FROM gateways WHERE id = $1", &[&g.id]).await?;
        // Every replica closes the gateway's session and forgets its state at once.
        tx.execute("SELECT pg_notify($1, $2)", &[&channel::GATEWAYS, &g.id])
            .await?;
        tx.commit().await?;
        Ok(Some(g))
    }

    async fn prune_removed_gateways(&self, before: i64) -> Result<usize, StoreError> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM removed_gateways WHERE removed_at < $1", &[&before])
            .await? as usize)
    }

    async fn removed_gateways(&self) -> Result<Vec<RemovedGateway>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, name, environments, registered_at, removed_at, reason FROM removed_gateways ORDER BY removed_at DESC, id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RemovedGateway {
                id: r.get(0),
                name: r.get(1),
                environments: envs_from_json(r.get(2)),
                registered_at: r.get(3),
                removed_at: r.get(4),
                reason: r.get(5),
            })
            .collect())
    }

    async fn set_update_hold(&self, gateway_id: String, reason: Option<String>, now: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        match reason {
            Some(reason) => {
                client
                    .execute(
                        "INSERT INTO update_holds (gateway_id, reason, since) VALUES ($1, $2, $3)
                         ON CONFLICT (gateway_id) DO UPDATE SET reason = excluded.reason",
                        &[&gateway_id, &reason, &now],
                    )
                    .await?
            }
            None => {
                client
                    .execute("DELETE FROM update_holds WHERE gateway_id = $1", &[&gateway_id])
                    .await?
            }
        };
        Ok(())
    }

    async fn update_holds(&self) -> Result<HashMap<String, (String, i64)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT gateway_id, reason, since FROM update_holds", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect())
    }

    async fn record_history(
        &self,
        events: Arc<Vec<NewFeedEvent>>,
        timeline: Arc<Vec<TimelineRow>>,
        timeline_per_app: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Ids are taken and committed under one lock: they become visible in id order, across
        // replicas, so a reader that saw an id never misses a smaller one later.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FEED_LOCK]).await?;
        let ins = tx
            .prepare_cached(
                "INSERT INTO feed_events (at_ms, kind, gateway_id, json) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .await?;
        let rows = try_join_all(events.iter().map(|e| {
            let ins = &ins;
            let tx = &tx;
            async move { tx.query_one(ins, &[&e.at_ms, &e.kind, &e.gateway_id, &e.json]).await }
        }))
        .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let point = tx
            .prepare_cached(
                "INSERT INTO app_timeline (gateway_id, app, at_ms, health, health_message, sync, revision, phase, operation_message, changed)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE EXISTS (SELECT 1 FROM gateways WHERE id = $1)",
            )
            .await?;
        let cap = tx
            .prepare_cached(
                "DELETE FROM app_timeline WHERE gateway_id = $1 AND app = $2 AND id <= (
                     SELECT id FROM app_timeline WHERE gateway_id = $1 AND app = $2 ORDER BY id DESC LIMIT 1 OFFSET $3)",
            )
            .await?;
        let keep = timeline_per_app as i64;
        for t in timeline.iter() {
            tx.execute(
                &point,
                &[
                    &t.gateway_id,
                    &t.app,
                    &t.at_ms,
                    &t.health,
                    &t.health_message,
                    &t.sync,
                    &t.revision,
                    &t.operation_phase,
                    &t.operation_message,
                    &t.changed.join(","),
                ],
            )
            .await?;
            if t.changed.iter().all(|c| c != "first") {
                tx.execute(&cap, &[&t.gateway_id, &t.app, &keep]).await?;
            }
        }
        if !ids.is_empty() {
            tx.execute("SELECT pg_notify($1, '')", &[&channel::FEED]).await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn feed_events_after(&self, after: i64, limit: usize) -> Result<(Vec<FeedEventRow>, FeedBounds), StoreError> {
        let mut client = self.client().await?;
        // One snapshot for the rows and the bounds.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let rows = tx
            .query(
                "SELECT id, at_ms, kind, gateway_id, json FROM feed_events WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        let bounds = feed_bounds_in(&tx).await?;
        tx.commit().await?;
        Ok((
            rows.iter()
                .map(|r| FeedEventRow {
                    id: r.get(0),
                    event: NewFeedEvent {
                        at_ms: r.get(1),
                        kind: r.get(2),
                        gateway_id: r.get(3),
                        json: r.get(4),
                    },
                })
                .collect(),
            bounds,
        ))
    }

    async fn feed_bounds(&self) -> Result<FeedBounds, StoreError> {
        let client = self.client().await?;
        feed_bounds_in(&client).await
    }

    async fn prune_feed(&self, keep: u64, older_than_ms: i64) -> Result<FeedBounds, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FEED_LOCK]).await?;
        let before = feed_bounds_in(&tx).await?;
        let by_count = before.last.saturating_sub(keep as i64);
        let by_age: i64 = tx
            .query_one("SELECT max(id) FROM feed_events WHERE at_ms < $1", &[&older_than_ms])
            .await?
            .get::<_, Option<i64>>(0)
            .unwrap_or(0);
        let through = by_count.max(by_age).max(before.pruned_through);
        if through > before.pruned_through {
            tx.execute("DELETE FROM feed_events WHERE id <= $1", &[&through])
                .await?;
            tx.execute(
                "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                &[&FEED_PRUNED_KEY, &through.to_string(), &(older_than_ms / 1000)],
            )
            .await?;
        }
        let after = feed_bounds_in(&tx).await?;
        tx.commit().await?;
        Ok(after)
    }

    async fn prune_timeline(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM app_timeline WHERE at_ms < $1", &[&older_than_ms])
            .await? as usize)
    }

    async fn app_timeline(
        &self,
        gateway_id: String,
        app: String,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {TIMELINE_COLUMNS} FROM app_timeline WHERE gateway_id = $1 AND app = $2 AND at_ms >= $3 ORDER BY id DESC LIMIT $4"
                ),
                &[&gateway_id, &app, &since_ms, &(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(timeline_from_row).collect())
    }

    async fn gateway_timeline(
        &self,
        gateway_id: String,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {TIMELINE_COLUMNS} FROM app_timeline WHERE gateway_id = $1 AND at_ms >= $2 ORDER BY id DESC LIMIT $3"
                ),
                &[&gateway_id, &since_ms, &(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(timeline_from_row).collect())
    }

    async fn insert_api_token(&self, record: ApiTokenRecord, secret_hash: Vec<u8>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&record.id, &record.name, &record.role, &secret_hash, &record.created_at, &record.expires_at],
            )
            .await?;
        Ok(())
    }

    async fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, id"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(api_token_from_row).collect())
    }

    async fn api_token(&self, id: String) -> Result<Option<(ApiTokenRecord, Vec<u8>)>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {API_TOKEN_COLUMNS}, secret_hash FROM api_tokens WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.map(|r| (api_token_from_row(&r), r.get(6))))
    }

    async fn delete_api_token(&self, id: String) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let gone = tx.execute("DELETE FROM api_tokens WHERE id = $1", &[&id]).await? > 0;
        tx.execute("DELETE FROM web_sessions WHERE credential = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(gone)
    }

    async fn touch_api_token(&self, id: String, now: i64) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1", &[&id, &now])
            .await?;
        Ok(())
    }

    async fn insert_web_session(&self, s: WebSessionRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM web_sessions WHERE expires_at <= $1", &[&s.created_at])
            .await?;
        client
            .execute(
                "INSERT INTO web_sessions (id_hash, credential, name, role, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&s.id_hash, &s.credential, &s.name, &s.role, &s.csrf, &s.created_at, &s.expires_at],
            )
            .await?;
        Ok(())
    }

    async fn web_session(&self, id_hash: Vec<u8>, now: i64) -> Result<Option<WebSessionRecord>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id_hash, credential, name, role, csrf, created_at, expires_at FROM web_sessions WHERE id_hash = $1 AND expires_at > $2",
                &[&id_hash, &now],
            )
            .await?;
        Ok(row.map(|r| WebSessionRecord {
            id_hash: r.get(0),
            credential: r.get(1),
            name: r.get(2),
            role: r.get(3),
            csrf: r.get(4),
            created_at: r.get(5),
            expires_at: r.get(6),
        }))
    }

    async fn delete_web_session(&self, id_hash: Vec<u8>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("DELETE FROM web_sessions WHERE id_hash = $1", &[&id_hash])
            .await?;
        Ok(())
    }
}

async fn insert_cert(c: &impl GenericClient, cert: &CertRecord) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO certificates (fingerprint, gateway_id, public_key, not_after, retire_after) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (fingerprint) DO UPDATE SET gateway_id = excluded.gateway_id, public_key = excluded.public_key, not_after = excluded.not_after, retire_after = excluded.retire_after",
        &[&cert.fingerprint, &cert.gateway_id, &cert.public_key, &cert.not_after, &cert.retire_after],
    )
    .await?;
    Ok(())
}

/// The newest committed id (ids commit in order, so the largest present is the newest) and the
/// pruned watermark.
async fn feed_bounds_in(c: &impl GenericClient) -> Result<FeedBounds, StoreError> {
    let pruned_through = c
        .query_opt("SELECT value FROM settings WHERE key = $1", &[&FEED_PRUNED_KEY])
        .await?
        .and_then(|r| r.get::<_, String>(0).parse::<i64>().ok())
        .unwrap_or(0);
    let last: Option<i64> = c.query_one("SELECT max(id) FROM feed_events", &[]).await?.get(0);
    Ok(FeedBounds {
        pruned_through,
        last: last.unwrap_or(0).max(pruned_through),
    })
}

// ---------------------------------------------------------------------------------------------
// Replica coordination.

/// A gateway's session as the database records it, with where its replica can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The gateway.
    pub gateway_id: String,
    /// The session.
    pub session_id: String,
    /// The replica that holds it.
    pub replica_id: String,
    /// That replica's internal address.
    pub peer_url: String,
    /// Where the gateway runs (copied identities differ).
    pub instance: String,
    /// Gateway build version.
    pub version: String,
    /// Protocol version.
    pub protocol_version: u32,
    /// When it started, Unix seconds.
    pub connected_at: i64,
    /// Whether the replica's lease is current (a replica that stopped renewing is gone).
    pub live: bool,
}

/// What claiming a gateway's session found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This session owns the gateway now; the one it replaced, if any.
    Owned(Option<SessionRecord>),
    /// A live session of another instance holds the gateway: a copied identity.
    Copied(SessionRecord),
    /// The gateway is not registered (deleted meanwhile).
    Unknown,
}

/// A session being claimed.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The gateway.
    pub gateway_id: String,
    /// The session.
    pub session_id: String,
    /// This replica.
    pub replica_id: String,
    /// Where the gateway runs.
    pub instance: String,
    /// Gateway build version.
    pub version: String,
    /// Protocol version.
    pub protocol_version: u32,
    /// Now, Unix seconds.
    pub now: i64,
}

/// One entity row as replicas follow it: kind tag, key, hash, JSON (none: deleted), revision.
pub type RevRow = (u8, String, Vec<u8>, Option<Vec<u8>>, i64);

const SESSION_SELECT: &str = "SELECT s.gateway_id, s.session_id, s.replica_id, coalesce(r.peer_url, ''), s.instance, s.version, s.protocol_version, s.connected_at, coalesce(r.lease_until > now(), false)
     FROM gateway_sessions s LEFT JOIN hub_replicas r ON r.id = s.replica_id";

fn session_from_row(r: &Row) -> SessionRecord {
    SessionRecord {
        gateway_id: r.get(0),
        session_id: r.get(1),
        replica_id: r.get(2),
        peer_url: r.get(3),
        instance: r.get(4),
        version: r.get(5),
        protocol_version: r.get::<_, i32>(6) as u32,
        connected_at: r.get(7),
        live: r.get(8),
    }
}

impl PgStore {
    /// Records (or renews) this replica's lease until `lease` from now, by the database's clock.
    pub async fn renew_replica(
        &self,
        id: &str,
        peer_url: &str,
        started_at: i64,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let ms = lease.as_millis() as f64;
        self.client()
            .await?
            .execute(
                "INSERT INTO hub_replicas (id, peer_url, version, started_at, lease_until) VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::float8 / 1000.0))
                 ON CONFLICT (id) DO UPDATE SET peer_url = excluded.peer_url, lease_until = excluded.lease_until",
                &[&id, &peer_url, &crate::VERSION, &started_at, &ms],
            )
            .await?;
        Ok(())
    }

    /// Removes this replica and its sessions (a clean shutdown: its gateways are told to come
    /// back and go elsewhere); returns the gateways it held.
    pub async fn drop_replica(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "DELETE FROM gateway_sessions WHERE replica_id = $1 RETURNING gateway_id",
                &[&id],
            )
            .await?;
        tx.execute("DELETE FROM hub_replicas WHERE id = $1", &[&id]).await?;
        let gateways: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for g in &gateways {
            tx.execute("SELECT pg_notify($1, $2)", &[&channel::SESSIONS, g]).await?;
        }
        tx.commit().await?;
        Ok(gateways)
    }

    /// Forgets replicas whose lease ended more than `grace` ago and their sessions (they died
    /// without saying so); returns the gateways those sessions held. Exactly one caller gets
    /// each gateway, however many replicas sweep at once.
    pub async fn reap_replicas(&self, grace: Duration) -> Result<Vec<String>, StoreError> {
        let ms = grace.as_millis() as f64;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let dead = tx
            .query(
                "DELETE FROM hub_replicas WHERE lease_until < now() - make_interval(secs => $1::float8 / 1000.0) RETURNING id",
                &[&ms],
            )
            .await?;
        let dead: Vec<String> = dead.iter().map(|r| r.get(0)).collect();
        // Sessions of replicas that are gone, whatever their lease (also ones never recorded).
        let rows = tx
            .query(
                "DELETE FROM gateway_sessions s WHERE s.replica_id = ANY($1) OR NOT EXISTS (SELECT 1 FROM hub_replicas r WHERE r.id = s.replica_id) RETURNING gateway_id",
                &[&dead],
            )
            .await?;
        let gateways: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for g in &gateways {
            tx.execute("SELECT pg_notify($1, $2)", &[&channel::SESSIONS, g]).await?;
        }
        tx.commit().await?;
        Ok(gateways)
    }

    /// Makes `s` the session that owns its gateway, replacing any other of the same instance (or
    /// of a replica that is gone); refuses when a live session of another instance holds it.
    pub async fn claim_session(&self, s: &NewSession) -> Result<Claim, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let gateway = tx
            .query_opt(
                "SELECT 1 FROM gateways WHERE id = $1 FOR NO KEY UPDATE",
                &[&s.gateway_id],
            )
            .await?;
        if gateway.is_none() {
            return Ok(Claim::Unknown);
        }
        let old = tx
            .query_opt(&format!("{SESSION_SELECT} WHERE s.gateway_id = $1"), &[&s.gateway_id])
            .await?
            .as_ref()
            .map(session_from_row);
        if let Some(old) = &old
            && old.live
            && !old.instance.is_empty()
            && !s.instance.is_empty()
            && old.instance != s.instance
        {
            return Ok(Claim::Copied(old.clone()));
        }
        tx.execute(
            "INSERT INTO gateway_sessions (gateway_id, session_id, replica_id, instance, version, protocol_version, connected_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (gateway_id) DO UPDATE SET session_id = excluded.session_id, replica_id = excluded.replica_id, instance = excluded.instance, version = excluded.version, protocol_version = excluded.protocol_version, connected_at = excluded.connected_at",
            &[&s.gateway_id, &s.session_id, &s.replica_id, &s.instance, &s.version, &(s.protocol_version as i32), &s.now],
        )
        .await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&channel::SESSIONS, &s.gateway_id])
            .await?;
        tx.commit().await?;
        Ok(Claim::Owned(old))
    }

    /// Ends a session if it still owns its gateway; true when it did (false: another session
    /// took over, or the gateway is gone).
    pub async fn release_session(&self, gateway_id: &str, session_id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let gone = tx
            .execute(
                "DELETE FROM gateway_sessions WHERE gateway_id = $1 AND session_id = $2",
                &[&gateway_id, &session_id],
            )
            .await?
            > 0;
        if gone {
            tx.execute("SELECT pg_notify($1, $2)", &[&channel::SESSIONS, &gateway_id])
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Every recorded session (live or not).
    pub async fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = self.client().await?.query(SESSION_SELECT, &[]).await?;
        Ok(rows.iter().map(session_from_row).collect())
    }

    /// One gateway's session, if recorded.
    pub async fn session(&self, gateway_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("{SESSION_SELECT} WHERE s.gateway_id = $1"), &[&gateway_id])
            .await?;
        Ok(row.as_ref().map(session_from_row))
    }

    /// A gateway's whole state and its newest revision (tombstones included), read at once.
    pub async fn gateway_entities(&self, gateway_id: &str) -> Result<(Vec<RevRow>, i64), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let rows = tx
            .query(
                "SELECT kind, key, hash, json, rev FROM entities WHERE gateway_id = $1 AND json IS NOT NULL",
                &[&gateway_id],
            )
            .await?;
        let max: Option<i64> = tx
            .query_one("SELECT max(rev) FROM entities WHERE gateway_id = $1", &[&gateway_id])
            .await?
            .get(0);
        tx.commit().await?;
        Ok((rows.iter().map(rev_row).collect(), max.unwrap_or(0)))
    }

    /// The entity rows of each gateway written after the revision given for it, oldest first.
    pub async fn entities_after(&self, cursors: &[(String, i64)]) -> Result<Vec<(String, RevRow)>, StoreError> {
        let gateways: Vec<&str> = cursors.iter().map(|(g, _)| g.as_str()).collect();
        let revs: Vec<i64> = cursors.iter().map(|(_, r)| *r).collect();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT e.gateway_id, e.kind, e.key, e.hash, e.json, e.rev FROM entities e
                 JOIN unnest($1::text[], $2::bigint[]) AS c(g, r) ON e.gateway_id = c.g AND e.rev > c.r
                 ORDER BY e.gateway_id, e.rev",
                &[&gateways, &revs],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    (r.get::<_, i16>(1) as u8, r.get(2), r.get(3), r.get(4), r.get(5)),
                )
            })
            .collect())
    }

    /// The newest revision of every gateway's state.
    pub async fn entity_revisions(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT gateway_id, max(rev) FROM entities GROUP BY gateway_id", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Drops deletion tombstones older than `age` (every replica has long followed them).
    pub async fn prune_tombstones(&self, age: Duration) -> Result<u64, StoreError> {
        let cutoff = crate::util::unix_ms_now() - age.as_millis() as i64;
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM entities WHERE json IS NULL AND changed_at < $1",
                &[&cutoff],
            )
            .await?)
    }

    /// The newest health-check result of every gateway, from the change feed's backlog (a
    /// starting replica shows them before the next checks run).
    pub async fn last_health_events(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT ON (gateway_id) gateway_id, json FROM feed_events WHERE kind = 'gateway.health' ORDER BY gateway_id, id DESC",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

fn rev_row(r: &Row) -> RevRow {
    (r.get::<_, i16>(0) as u8, r.get(1), r.get(2), r.get(3), r.get(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_show_their_password() {
        assert_eq!(
            redact_url("postgres://hub:s3cret@db:5432/hub?sslmode=require"),
            "postgres://hub:***@db:5432/hub?sslmode=require"
        );
        assert_eq!(redact_url("postgres://hub@db/hub"), "postgres://hub@db/hub");
        assert_eq!(
            redact_url("host=db user=hub password=s3cret dbname=hub"),
            "host=db user=hub password=*** dbname=hub"
        );
        let o = PgOptions {
            url: Secret::new("postgres://hub:s3cret@db/hub"),
            password_file: None,
            ca_file: None,
            pool_size: 4,
        };
        assert!(!format!("{o:?}").contains("s3cret"));
    }
}
