//! The hub's store: registration tokens (hashed), gateways and the certificates issued to them,
//! relayed entities, settings, install lifecycle (registration steps, removals, update holds),
//! the change feed (whose ids it assigns), application timelines, API tokens (hashed) and
//! status-page sessions.
//!
//! One interface ([`Backend`]), two implementations: SQLite here ([`SqliteStore`], the embedded
//! default of a single hub, run on blocking threads so the async runtime never waits on disk),
//! and PostgreSQL ([`super::postgres`], for several replicas on one database). [`Store`] is the
//! handle the hub holds; the same behaviour tests run against both.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("hub database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task died.
    #[error("hub database task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A previous database call panicked while holding the connection.
    #[error("hub database connection is unusable after an earlier failure")]
    Poisoned,
    /// Stored JSON is unreadable.
    #[error("hub database holds invalid data: {0}")]
    Corrupt(String),
    /// The session that wrote no longer owns the gateway: another replica took it over, or the
    /// gateway was deleted.
    #[error("gateway {0} is no longer owned by this session (another hub replica took it over, or it was deleted)")]
    Fenced(String),
    /// PostgreSQL failed.
    #[error("hub database error: {0}")]
    Postgres(String),
    /// The database file's permissions could not be set.
    #[error("cannot create or protect {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Outcome of trying to consume a registration token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Valid and now used; carries the name and environments it was created with.
    Consumed {
        /// Name given at creation.
        name: String,
        /// Environments given at creation.
        environments: Vec<String>,
    },
    /// No such token.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Used before.
    Used,
}

/// A registration token as listed (never the secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Public id (the part before the dot).
    pub id: String,
    /// Name for the gateway that registers with it.
    pub name: String,
    /// Environments for that gateway.
    pub environments: Vec<String>,
    /// Creation time, Unix seconds.
    #[serde(skip)]
    pub created_at: i64,
    /// Expiry, Unix seconds.
    #[serde(skip)]
    pub expires_at: i64,
    /// When it was used, Unix seconds.
    #[serde(skip)]
    pub used_at: Option<i64>,
    /// The gateway that used it.
    pub gateway_id: Option<String>,
}

/// A registered gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Environments.
    pub environments: Vec<String>,
    /// Argo CD web UI URL.
    pub argocd_web_url: String,
    /// Registration time, Unix seconds.
    pub created_at: i64,
    /// Last contact, Unix seconds.
    pub last_seen_at: Option<i64>,
    /// Gateway build version.
    pub version: String,
    /// Protocol version of the last session.
    pub protocol_version: u32,
    /// Expiry of the newest certificate, Unix seconds.
    pub certificate_expires_at: Option<i64>,
}

/// A certificate issued to a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// SHA-256 hex.
    pub fingerprint: String,
    /// Owner.
    pub gateway_id: String,
    /// Raw public key (uncompressed P-256 point).
    pub public_key: Vec<u8>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// After a renewal replaced it: when it stops being accepted, Unix seconds.
    pub retire_after: Option<i64>,
}

/// A new gateway and its first certificate.
#[derive(Debug, Clone)]
pub struct NewGateway {
    /// The gateway row.
    pub gateway: GatewayRecord,
    /// Its certificate.
    pub cert: CertRecord,
}

/// The hub database as the hub holds it: either implementation of [`Backend`], cheap to clone.
#[derive(Clone)]
pub struct Store(Arc<dyn Backend>);

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self(Arc::new(SqliteStore::open(path)?)))
    }

    /// A store over any implementation.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self(backend)
    }
}

/// Builds a new gateway from the name and environments its registration token was created
/// with; runs inside the transaction that uses the token.
pub type MakeGateway = Box<dyn FnOnce(&str, &[String]) -> Result<NewGateway, StoreError> + Send>;

/// What the hub stores, whatever holds it. Every method is one atomic step: a transaction where
/// it writes more than one row.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Which implementation this is, for logs and readiness (`sqlite`, `postgres`).
    fn kind(&self) -> &'static str;
    /// Whether the database answers now (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Saves a new registration token by its id and secret hash.
    async fn insert_token(&self, record: TokenRecord, secret_hash: Vec<u8>) -> Result<(), StoreError>;
    /// Every token, newest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Deletes a token; false when there was none.
    async fn delete_token(&self, id: String) -> Result<bool, StoreError>;
    /// Checks a token and, when valid, atomically marks it used and creates the gateway built by
    /// `make`. Two registrations racing with one token — in one hub or in several replicas —
    /// cannot both succeed.
    async fn register_with_token(
        &self,
        id: String,
        secret_hash: Vec<u8>,
        now: i64,
        make: MakeGateway,
    ) -> Result<(TokenCheck, Option<NewGateway>), StoreError>;
    /// Records a renewed certificate and retires every earlier one of the gateway at
    /// `retire_after`.
    async fn add_certificate(&self, cert: CertRecord, retire_after: i64) -> Result<(), StoreError>;
    /// A certificate by fingerprint.
    async fn certificate(&self, fingerprint: String) -> Result<Option<CertRecord>, StoreError>;
    /// A gateway by id.
    async fn gateway(&self, id: String) -> Result<Option<GatewayRecord>, StoreError>;
    /// Every gateway, by name then id.
    async fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError>;
    /// Deletes a gateway and its certificates; false when there was none.
    async fn delete_gateway(&self, id: String) -> Result<bool, StoreError>;
    /// Records a session start.
    async fn record_hello(
        &self,
        id: String,
        version: String,
        protocol_version: u32,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Every stored entity of every gateway.
    async fn load_entities(&self) -> Result<Vec<EntityRow>, StoreError>;
    /// Replaces a gateway's entities (a snapshot), or applies upserts and deletions (a delta), in
    /// one transaction. With `owner` (a session id), the write happens only while that session
    /// still owns the gateway ([`StoreError::Fenced`] otherwise), so a session another replica
    /// took over can no longer change the state. Returns the write's revision (0 where the store
    /// keeps none).
    async fn write_entities(
        &self,
        gateway_id: String,
        replace: bool,
        upserts: Vec<EntityUpsert>,
        deletes: Vec<(u8, String)>,
        owner: Option<String>,
    ) -> Result<i64, StoreError>;
    /// Records the last contact.
    async fn record_seen(&self, id: String, now: i64) -> Result<(), StoreError>;
    /// A hub-wide setting (such as the desired gateway version), if set.
    async fn setting(&self, key: &'static str) -> Result<Option<String>, StoreError>;
    /// Sets a hub-wide setting.
    async fn set_setting(&self, key: &'static str, value: String, now: i64) -> Result<(), StoreError>;
    /// Records an assertion's nonce until it expires; false when it was seen before (a replay).
    async fn use_nonce(&self, jti: String, expires_at: i64, now: i64) -> Result<bool, StoreError>;

    /// Records a step of a token's registration; a step that is done stays done.
    async fn record_step(
        &self,
        token_id: String,
        step: &'static str,
        state: &'static str,
        message: String,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Records a step of the registration a gateway came from; whether a row was written.
    async fn record_gateway_step(
        &self,
        gateway_id: String,
        step: &'static str,
        state: &'static str,
        message: String,
        now: i64,
        first_only: bool,
    ) -> Result<bool, StoreError>;
    /// The recorded steps of a token.
    async fn token_steps(&self, token_id: String) -> Result<Vec<StepRecord>, StoreError>;
    /// The recorded steps of the registration a gateway came from; `None` when its token is not
    /// known.
    async fn gateway_steps(&self, gateway_id: String) -> Result<Option<Vec<StepRecord>>, StoreError>;
    /// One token (never the secret).
    async fn token(&self, id: String) -> Result<Option<TokenRecord>, StoreError>;
    /// Checks a token without using it up.
    async fn check_token(&self, id: String, secret_hash: Vec<u8>, now: i64) -> Result<TokenState, StoreError>;
    /// Gateways that registered but never said hello, with the time their registration expires.
    async fn pending_gateways(&self) -> Result<Vec<PendingGateway>, StoreError>;
    /// Removes a gateway and records when and why; with `only_pending`, only if it never
    /// connected. Returns the removed gateway.
    async fn remove_gateway(
        &self,
        id: String,
        reason: String,
        now: i64,
        only_pending: bool,
    ) -> Result<Option<GatewayRecord>, StoreError>;
    /// Forgets removals older than `before` (Unix seconds).
    async fn prune_removed_gateways(&self, before: i64) -> Result<usize, StoreError>;
    /// Removed gateways, newest first.
    async fn removed_gateways(&self) -> Result<Vec<RemovedGateway>, StoreError>;
    /// Records that a gateway's self-update holds back (with the reason), or clears it.
    async fn set_update_hold(&self, gateway_id: String, reason: Option<String>, now: i64) -> Result<(), StoreError>;
    /// Every gateway whose self-update holds back: id → (reason, since).
    async fn update_holds(&self) -> Result<std::collections::HashMap<String, (String, i64)>, StoreError>;

    /// Appends change-feed events and timeline points in one transaction and returns the events'
    /// ids, in order: ids are unique and increase across restarts, pruning and replicas, and are
    /// visible to readers in id order.
    async fn record_history(
        &self,
        events: Arc<Vec<NewFeedEvent>>,
        timeline: Arc<Vec<TimelineRow>>,
        timeline_per_app: usize,
    ) -> Result<Vec<i64>, StoreError>;
    /// Events after `after`, oldest first, at most `limit`, with the bounds read in the same
    /// call.
    async fn feed_events_after(&self, after: i64, limit: usize) -> Result<(Vec<FeedEventRow>, FeedBounds), StoreError>;
    /// What the change feed can still replay.
    async fn feed_bounds(&self) -> Result<FeedBounds, StoreError>;
    /// Prunes the change feed to its newest `keep` events and to events newer than
    /// `older_than_ms`; returns the new bounds.
    async fn prune_feed(&self, keep: u64, older_than_ms: i64) -> Result<FeedBounds, StoreError>;
    /// Drops timeline points older than `older_than_ms`; returns how many.
    async fn prune_timeline(&self, older_than_ms: i64) -> Result<usize, StoreError>;
    /// An application's timeline, newest first.
    async fn app_timeline(
        &self,
        gateway_id: String,
        app: String,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, StoreError>;
    /// A gateway's timeline across its applications, newest first.
    async fn gateway_timeline(
        &self,
        gateway_id: String,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, StoreError>;

    /// Saves a new API token by its id and secret hash.
    async fn insert_api_token(&self, record: ApiTokenRecord, secret_hash: Vec<u8>) -> Result<(), StoreError>;
    /// Every API token, newest first.
    async fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError>;
    /// One API token and its secret hash.
    async fn api_token(&self, id: String) -> Result<Option<(ApiTokenRecord, Vec<u8>)>, StoreError>;
    /// Revokes an API token and closes the page sessions opened with it.
    async fn delete_api_token(&self, id: String) -> Result<bool, StoreError>;
    /// Records that an API token was used.
    async fn touch_api_token(&self, id: String, now: i64) -> Result<(), StoreError>;
    /// Saves a page session (and drops expired ones).
    async fn insert_web_session(&self, s: WebSessionRecord) -> Result<(), StoreError>;
    /// A page session by the hash of its cookie value, if it has not expired at `now`.
    async fn web_session(&self, id_hash: Vec<u8>, now: i64) -> Result<Option<WebSessionRecord>, StoreError>;
    /// Ends a page session.
    async fn delete_web_session(&self, id_hash: Vec<u8>) -> Result<(), StoreError>;
}

/// Implements [`Backend`] for [`SqliteStore`] by calling its inherent methods of the same names.
macro_rules! sqlite_backend {
    ($( fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        #[async_trait::async_trait]
        impl Backend for SqliteStore {
            fn kind(&self) -> &'static str {
                "sqlite"
            }
            async fn ping(&self) -> Result<(), StoreError> {
                self.call(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?)).await
            }
            async fn register_with_token(
                &self,
                id: String,
                secret_hash: Vec<u8>,
                now: i64,
                make: MakeGateway,
            ) -> Result<(TokenCheck, Option<NewGateway>), StoreError> {
                SqliteStore::register_with_token(self, id, secret_hash, now, make).await
            }
            // One process holds every session: there is nothing to fence and no revision.
            async fn write_entities(
                &self,
                gateway_id: String,
                replace: bool,
                upserts: Vec<EntityUpsert>,
                deletes: Vec<(u8, String)>,
                _owner: Option<String>,
            ) -> Result<i64, StoreError> {
                SqliteStore::write_entities(self, gateway_id, replace, upserts, deletes).await.map(|()| 0)
            }
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    SqliteStore::$name(self $(, $arg)*).await
                }
            )*
        }
    };
}

sqlite_backend! {
    fn insert_token(&self, record: TokenRecord, secret_hash: Vec<u8>) -> Result<(), StoreError>;
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    fn delete_token(&self, id: String) -> Result<bool, StoreError>;
    fn add_certificate(&self, cert: CertRecord, retire_after: i64) -> Result<(), StoreError>;
    fn certificate(&self, fingerprint: String) -> Result<Option<CertRecord>, StoreError>;
    fn gateway(&self, id: String) -> Result<Option<GatewayRecord>, StoreError>;
    fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError>;
    fn delete_gateway(&self, id: String) -> Result<bool, StoreError>;
    fn record_hello(&self, id: String, version: String, protocol_version: u32, now: i64) -> Result<(), StoreError>;
    fn load_entities(&self) -> Result<Vec<EntityRow>, StoreError>;
    fn record_seen(&self, id: String, now: i64) -> Result<(), StoreError>;
    fn setting(&self, key: &'static str) -> Result<Option<String>, StoreError>;
    fn set_setting(&self, key: &'static str, value: String, now: i64) -> Result<(), StoreError>;
    fn use_nonce(&self, jti: String, expires_at: i64, now: i64) -> Result<bool, StoreError>;
    fn record_step(&self, token_id: String, step: &'static str, state: &'static str, message: String, now: i64) -> Result<(), StoreError>;
    fn record_gateway_step(&self, gateway_id: String, step: &'static str, state: &'static str, message: String, now: i64, first_only: bool) -> Result<bool, StoreError>;
    fn token_steps(&self, token_id: String) -> Result<Vec<StepRecord>, StoreError>;
    fn gateway_steps(&self, gateway_id: String) -> Result<Option<Vec<StepRecord>>, StoreError>;
    fn token(&self, id: String) -> Result<Option<TokenRecord>, StoreError>;
    fn check_token(&self, id: String, secret_hash: Vec<u8>, now: i64) -> Result<TokenState, StoreError>;
    fn pending_gateways(&self) -> Result<Vec<PendingGateway>, StoreError>;
    fn remove_gateway(&self, id: String, reason: String, now: i64, only_pending: bool) -> Result<Option<GatewayRecord>, StoreError>;
    fn prune_removed_gateways(&self, before: i64) -> Result<usize, StoreError>;
    fn removed_gateways(&self) -> Result<Vec<RemovedGateway>, StoreError>;
    fn set_update_hold(&self, gateway_id: String, reason: Option<String>, now: i64) -> Result<(), StoreError>;
    fn update_holds(&self) -> Result<std::collections::HashMap<String, (String, i64)>, StoreError>;
    fn record_history(&self, events: Arc<Vec<NewFeedEvent>>, timeline: Arc<Vec<TimelineRow>>, timeline_per_app: usize) -> Result<Vec<i64>, StoreError>;
    fn feed_events_after(&self, after: i64, limit: usize) -> Result<(Vec<FeedEventRow>, FeedBounds), StoreError>;
    fn feed_bounds(&self) -> Result<FeedBounds, StoreError>;
    fn prune_feed(&self, keep: u64, older_than_ms: i64) -> Result<FeedBounds, StoreError>;
    fn prune_timeline(&self, older_than_ms: i64) -> Result<usize, StoreError>;
    fn app_timeline(&self, gateway_id: String, app: String, since_ms: i64, limit: usize) -> Result<Vec<TimelineRow>, StoreError>;
    fn gateway_timeline(&self, gateway_id: String, since_ms: i64, limit: usize) -> Result<Vec<TimelineRow>, StoreError>;
    fn insert_api_token(&self, record: ApiTokenRecord, secret_hash: Vec<u8>) -> Result<(), StoreError>;
    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError>;
    fn api_token(&self, id: String) -> Result<Option<(ApiTokenRecord, Vec<u8>)>, StoreError>;
    fn delete_api_token(&self, id: String) -> Result<bool, StoreError>;
    fn touch_api_token(&self, id: String, now: i64) -> Result<(), StoreError>;
    fn insert_web_session(&self, s: WebSessionRecord) -> Result<(), StoreError>;
    fn web_session(&self, id_hash: Vec<u8>, now: i64) -> Result<Option<WebSessionRecord>, StoreError>;
    fn delete_web_session(&self, id_hash: Vec<u8>) -> Result<(), StoreError>;
}

/// The embedded SQLite database of a single hub.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS registration_tokens (
    id TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    environments TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    gateway_id TEXT
);
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    environments TEXT NOT NULL DEFAULT '[]',
    argocd_web_url TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER,
    version TEXT NOT NULL DEFAULT '',
    protocol_version INTEGER NOT NULL DEFAULT 0,
    certificate_expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS certificates (
    fingerprint TEXT PRIMARY KEY,
    gateway_id TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
    public_key BLOB NOT NULL,
    not_after INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_gateway ON certificates(gateway_id);
CREATE TABLE IF NOT EXISTS entities (
    gateway_id TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
    kind INTEGER NOT NULL,
    key TEXT NOT NULL,
    hash BLOB NOT NULL,
    json BLOB NOT NULL,
    PRIMARY KEY (gateway_id, kind, key)
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS registration_tokens_gateway ON registration_tokens(gateway_id);
CREATE TABLE IF NOT EXISTS registration_steps (
    token_id TEXT NOT NULL,
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    at INTEGER NOT NULL,
    PRIMARY KEY (token_id, step)
);
CREATE TABLE IF NOT EXISTS removed_gateways (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    environments TEXT NOT NULL DEFAULT '[]',
    registered_at INTEGER NOT NULL,
    removed_at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS update_holds (
    gateway_id TEXT PRIMARY KEY REFERENCES gateways(id) ON DELETE CASCADE,
    reason TEXT NOT NULL,
    since INTEGER NOT NULL
);
-- The change feed. AUTOINCREMENT: ids are never reused, so they keep increasing across
-- restarts and after pruning; `settings.feed_pruned_through` says what was pruned.
CREATE TABLE IF NOT EXISTS feed_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feed_events_at ON feed_events(at_ms);
-- Each application's state timeline: one row per transition of health, sync status, revision
-- or operation phase (and when it was first seen and deleted).
CREATE TABLE IF NOT EXISTS app_timeline (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway_id TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
    app TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    health TEXT NOT NULL,
    health_message TEXT NOT NULL,
    sync TEXT NOT NULL,
    revision TEXT NOT NULL,
    phase TEXT NOT NULL,
    operation_message TEXT NOT NULL,
    changed TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS app_timeline_app ON app_timeline(gateway_id, app, id);
CREATE INDEX IF NOT EXISTS app_timeline_at ON app_timeline(at_ms);
-- API tokens with roles; only the secret's hash is kept.
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    last_used_at INTEGER
);
-- Status-page sessions, keyed by the hash of the cookie value.
CREATE TABLE IF NOT EXISTS web_sessions (
    id_hash BLOB PRIMARY KEY,
    credential TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS web_sessions_credential ON web_sessions(credential);
";

/// Schema changes after the first release, applied in order by `PRAGMA user_version`, so an
/// existing database gains them on start.
const MIGRATIONS: &[&str] = &[
    // 1: renewal retires the previous certificate; assertion nonces survive restarts.
    "ALTER TABLE certificates ADD COLUMN retire_after INTEGER;
     CREATE TABLE IF NOT EXISTS assertion_nonces (
         jti TEXT PRIMARY KEY,
         expires_at INTEGER NOT NULL
     );
     CREATE INDEX IF NOT EXISTS assertion_nonces_expiry ON assertion_nonces(expires_at);",
];

/// An entity to write: kind tag, key, content hash, JSON.
pub type EntityUpsert = (u8, String, Vec<u8>, Arc<Vec<u8>>);

/// One relayed entity as stored: gateway, kind tag, key, content hash, JSON.
pub type EntityRow = (String, u8, String, Vec<u8>, Vec<u8>);

/// A token row as read for registration: hash, name, environments, expiry, use time.
type TokenRow = (Vec<u8>, String, String, i64, Option<i64>);

fn envs_to_json(envs: &[String]) -> String {
    serde_json::to_string(envs).unwrap_or_else(|_| "[]".into())
}

fn envs_from_json(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn gateway_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GatewayRecord> {
    Ok(GatewayRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        environments: envs_from_json(&r.get::<_, String>(2)?),
        argocd_web_url: r.get(3)?,
        created_at: r.get(4)?,
        last_seen_at: r.get(5)?,
        version: r.get(6)?,
        protocol_version: r.get(7)?,
        certificate_expires_at: r.get(8)?,
    })
}

const GATEWAY_COLUMNS: &str = "id, name, environments, argocd_web_url, created_at, last_seen_at, version, protocol_version, certificate_expires_at";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, readable by this user only: it
    /// holds gateway records and token hashes.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        private_file(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&mut conn)?;
        // SQLite gives the journal files the database's mode; older hubs made 0644 files.
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                private_file(&p)?;
            }
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::Poisoned)?;
            f(&mut guard)
        })
        .await
        .map_err(StoreError::Task)?
    }

    /// Saves a new registration token by its id and secret hash.
    pub async fn insert_token(&self, record: TokenRecord, secret_hash: Vec<u8>) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO registration_tokens (id, secret_hash, name, environments, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![record.id, secret_hash, record.name, envs_to_json(&record.environments), record.created_at, record.expires_at],
            )?;
            Ok(())
        })
        .await
    }

    /// Every token, newest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, environments, created_at, expires_at, used_at, gateway_id FROM registration_tokens ORDER BY created_at DESC, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(TokenRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    environments: envs_from_json(&r.get::<_, String>(2)?),
                    created_at: r.get(3)?,
                    expires_at: r.get(4)?,
                    used_at: r.get(5)?,
                    gateway_id: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Deletes a token; false when there was none.
    pub async fn delete_token(&self, id: String) -> Result<bool, StoreError> {
        self.call(move |c| Ok(c.execute("DELETE FROM registration_tokens WHERE id = ?1", params![id])? > 0))
            .await
    }

    /// Checks a token and, when valid, atomically marks it used and creates the gateway built by
    /// `make` from the token's name and environments. Two registrations racing with one token
    /// cannot both succeed: the check and the update share one immediate transaction.
    pub async fn register_with_token<F>(
        &self,
        id: String,
        secret_hash: Vec<u8>,
        now: i64,
        make: F,
    ) -> Result<(TokenCheck, Option<NewGateway>), StoreError>
    where
        F: FnOnce(&str, &[String]) -> Result<NewGateway, StoreError> + Send + 'static,
    {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let row: Option<TokenRow> = tx
                .query_row(
                    "SELECT secret_hash, name, environments, expires_at, used_at FROM registration_tokens WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((hash, name, envs, expires_at, used_at)) = row else {
                return Ok((TokenCheck::Unknown, None));
            };
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
                &format!("INSERT INTO gateways ({GATEWAY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![g.id, g.name, envs_to_json(&g.environments), g.argocd_web_url, g.created_at, g.last_seen_at, g.version, g.protocol_version, g.certificate_expires_at],
            )?;
            insert_cert(&tx, &new.cert)?;
            tx.execute("UPDATE registration_tokens SET used_at = ?2, gateway_id = ?3 WHERE id = ?1", params![id, now, g.id])?;
            tx.commit()?;
            Ok((TokenCheck::Consumed { name, environments }, Some(new)))
        })
        .await
    }

    /// Records a renewed certificate and retires every earlier one of the gateway at
    /// `retire_after` (a grace for streams opened with it), so a copy of the identity saved
    /// before the renewal stops working.
    pub async fn add_certificate(&self, cert: CertRecord, retire_after: i64) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE certificates SET retire_after = ?3 WHERE gateway_id = ?1 AND fingerprint != ?2 AND (retire_after IS NULL OR retire_after > ?3)",
                params![cert.gateway_id, cert.fingerprint, retire_after],
            )?;
            insert_cert(&tx, &cert)?;
            tx.execute(
                "UPDATE gateways SET certificate_expires_at = max(coalesce(certificate_expires_at, 0), ?2) WHERE id = ?1",
                params![cert.gateway_id, cert.not_after],
            )?;
            // Certificates long expired can never authenticate again.
            tx.execute("DELETE FROM certificates WHERE gateway_id = ?1 AND not_after < ?2", params![cert.gateway_id, cert.not_after - 400 * 86400])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// A certificate by fingerprint.
    pub async fn certificate(&self, fingerprint: String) -> Result<Option<CertRecord>, StoreError> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT fingerprint, gateway_id, public_key, not_after, retire_after FROM certificates WHERE fingerprint = ?1",
                params![fingerprint],
                |r| {
                    Ok(CertRecord {
                        fingerprint: r.get(0)?,
                        gateway_id: r.get(1)?,
                        public_key: r.get(2)?,
                        not_after: r.get(3)?,
                        retire_after: r.get(4)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// A gateway by id.
    pub async fn gateway(&self, id: String) -> Result<Option<GatewayRecord>, StoreError> {
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE id = ?1"),
                params![id],
                gateway_from_row,
            )
            .optional()?)
        })
        .await
    }

    /// Every gateway, by name then id.
    pub async fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        self.call(|c| {
            let mut stmt = c.prepare(&format!("SELECT {GATEWAY_COLUMNS} FROM gateways ORDER BY name, id"))?;
            let rows = stmt.query_map([], gateway_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Deletes a gateway and its certificates; false when there was none.
    pub async fn delete_gateway(&self, id: String) -> Result<bool, StoreError> {
        self.call(move |c| Ok(c.execute("DELETE FROM gateways WHERE id = ?1", params![id])? > 0))
            .await
    }

    /// Records a session start.
    pub async fn record_hello(
        &self,
        id: String,
        version: String,
        protocol_version: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "UPDATE gateways SET version = ?2, protocol_version = ?3, last_seen_at = ?4 WHERE id = ?1",
                params![id, version, protocol_version, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Every stored entity of every gateway.
    pub async fn load_entities(&self) -> Result<Vec<EntityRow>, StoreError> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT gateway_id, kind, key, hash, json FROM entities")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Replaces a gateway's entities (a snapshot), or applies upserts and deletions (a delta),
    /// in one transaction. Upserts are (kind, key, hash, json); deletions (kind, key).
    pub async fn write_entities(
        &self,
        gateway_id: String,
        replace: bool,
        upserts: Vec<EntityUpsert>,
        deletes: Vec<(u8, String)>,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            if replace {
                tx.execute("DELETE FROM entities WHERE gateway_id = ?1", params![gateway_id])?;
            }
            {
                let mut up = tx.prepare_cached(
                    "INSERT OR REPLACE INTO entities (gateway_id, kind, key, hash, json) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (kind, key, hash, json) in &upserts {
                    up.execute(params![gateway_id, kind, key, hash, json.as_slice()])?;
                }
                let mut del =
                    tx.prepare_cached("DELETE FROM entities WHERE gateway_id = ?1 AND kind = ?2 AND key = ?3")?;
                for (kind, key) in &deletes {
                    del.execute(params![gateway_id, kind, key])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Records the last contact.
    pub async fn record_seen(&self, id: String, now: i64) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute("UPDATE gateways SET last_seen_at = ?2 WHERE id = ?1", params![id, now])?;
            Ok(())
        })
        .await
    }

    /// A hub-wide setting (such as the desired gateway version), if set.
    pub async fn setting(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.call(move |c| {
            Ok(
                c.query_row("SELECT value FROM settings WHERE key = ?1", params![key], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    /// Sets a hub-wide setting.
    pub async fn set_setting(&self, key: &'static str, value: String, now: i64) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![key, value, now],
            )?;
            Ok(())
        })
        .await
    }
}

fn insert_cert(c: &Connection, cert: &CertRecord) -> Result<(), StoreError> {
    c.execute(
        "INSERT OR REPLACE INTO certificates (fingerprint, gateway_id, public_key, not_after, retire_after) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![cert.fingerprint, cert.gateway_id, cert.public_key, cert.not_after, cert.retire_after],
    )?;
    Ok(())
}

/// Applies the migrations the database has not seen yet, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

/// Creates `path` with mode 0600 if it is missing, and sets 0600 if it exists.
fn private_file(path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::File {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Records an assertion's nonce until it expires; false when it was seen before (a replay),
    /// also across hub restarts. Expired nonces are forgotten on the way.
    pub async fn use_nonce(&self, jti: String, expires_at: i64, now: i64) -> Result<bool, StoreError> {
        self.call(move |c| {
            c.execute("DELETE FROM assertion_nonces WHERE expires_at < ?1", params![now])?;
            let inserted = c.execute(
                "INSERT OR IGNORE INTO assertion_nonces (jti, expires_at) VALUES (?1, ?2)",
                params![jti, expires_at],
            )?;
            Ok(inserted == 1)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Install lifecycle: registration progress, pending registrations, removals, update holds.

/// A registration step as stored: its state (`done` or `failed`), message and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// Step name.
    pub step: String,
    /// `done` or `failed`.
    pub state: String,
    /// Why it failed, or a detail.
    pub message: String,
    /// When, Unix seconds.
    pub at: i64,
}

/// A gateway that registered but never connected, with the expiry of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingGateway {
    /// The gateway.
    pub gateway: GatewayRecord,
    /// The token it registered with, if it is still known.
    pub token_id: Option<String>,
    /// When the registration expires: the token's expiry (or an hour after registering).
    pub expires_at: i64,
}

/// A gateway that was removed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedGateway {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its environments.
    pub environments: Vec<String>,
    /// When it registered, Unix seconds.
    pub registered_at: i64,
    /// When it was removed, Unix seconds.
    pub removed_at: i64,
    /// Why.
    pub reason: String,
}

/// What a registration token is, checked without using it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    /// Valid and unused.
    Active,
    /// Unknown, or the secret does not match.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Used before.
    Used,
}

/// How long a registration without a known token may stay pending.
const PENDING_WITHOUT_TOKEN: i64 = 3600;

impl SqliteStore {
    /// Records a step of a token's registration. A step that is done stays done: a later
    /// failure of the same step (a repeated health check, say) does not undo it.
    pub async fn record_step(
        &self,
        token_id: String,
        step: &'static str,
        state: &'static str,
        message: String,
        now: i64,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO registration_steps (token_id, step, state, message, at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(token_id, step) DO UPDATE SET state = excluded.state, message = excluded.message, at = excluded.at
                 WHERE registration_steps.state != 'done'",
                params![token_id, step, state, message, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Records a step of the registration a gateway came from; returns whether a row was
    /// written (false when the token is unknown or the step was already done). With
    /// `first_only`, only a step not recorded before is written.
    pub async fn record_gateway_step(
        &self,
        gateway_id: String,
        step: &'static str,
        state: &'static str,
        message: String,
        now: i64,
        first_only: bool,
    ) -> Result<bool, StoreError> {
        self.call(move |c| {
            let token: Option<String> = c
                .query_row(
                    "SELECT id FROM registration_tokens WHERE gateway_id = ?1",
                    params![gateway_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(token) = token else { return Ok(false) };
            let sql = if first_only {
                "INSERT OR IGNORE INTO registration_steps (token_id, step, state, message, at) VALUES (?1, ?2, ?3, ?4, ?5)"
            } else {
                "INSERT INTO registration_steps (token_id, step, state, message, at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(token_id, step) DO UPDATE SET state = excluded.state, message = excluded.message, at = excluded.at
                 WHERE registration_steps.state != 'done' AND (registration_steps.state != excluded.state OR registration_steps.message != excluded.message)"
            };
            Ok(c.execute(sql, params![token, step, state, message, now])? > 0)
        })
        .await
    }

    /// The recorded steps of a token.
    pub async fn token_steps(&self, token_id: String) -> Result<Vec<StepRecord>, StoreError> {
        self.call(move |c| {
            let mut stmt = c.prepare("SELECT step, state, message, at FROM registration_steps WHERE token_id = ?1")?;
            let rows = stmt.query_map(params![token_id], |r| {
                Ok(StepRecord {
                    step: r.get(0)?,
                    state: r.get(1)?,
                    message: r.get(2)?,
                    at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The recorded steps of the registration a gateway came from; `None` when its token is
    /// not known (a gateway registered before steps were recorded, or a deleted token).
    pub async fn gateway_steps(&self, gateway_id: String) -> Result<Option<Vec<StepRecord>>, StoreError> {
        let token: Option<String> = self
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT id FROM registration_tokens WHERE gateway_id = ?1",
                    params![gateway_id],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        match token {
            Some(t) => Ok(Some(self.token_steps(t).await?)),
            None => Ok(None),
        }
    }

    /// One token (never the secret).
    pub async fn token(&self, id: String) -> Result<Option<TokenRecord>, StoreError> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT id, name, environments, created_at, expires_at, used_at, gateway_id FROM registration_tokens WHERE id = ?1",
                params![id],
                |r| {
                    Ok(TokenRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        environments: envs_from_json(&r.get::<_, String>(2)?),
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                        used_at: r.get(5)?,
                        gateway_id: r.get(6)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Checks a token without using it up.
    pub async fn check_token(&self, id: String, secret_hash: Vec<u8>, now: i64) -> Result<TokenState, StoreError> {
        self.call(move |c| {
            let row: Option<(Vec<u8>, i64, Option<i64>)> = c
                .query_row(
                    "SELECT secret_hash, expires_at, used_at FROM registration_tokens WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            Ok(match row {
                None => TokenState::Unknown,
                Some((hash, _, _)) if !crate::util::constant_time_eq(&hash, &secret_hash) => TokenState::Unknown,
                Some((_, _, Some(_))) => TokenState::Used,
                Some((_, expires_at, None)) if expires_at <= now => TokenState::Expired,
                Some(_) => TokenState::Active,
            })
        })
        .await
    }

    /// Gateways that registered but never said hello, with the time their registration expires.
    pub async fn pending_gateways(&self) -> Result<Vec<PendingGateway>, StoreError> {
        self.call(|c| {
            let cols = GATEWAY_COLUMNS
                .split(", ")
                .map(|col| format!("g.{col}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut stmt = c.prepare(&format!(
                "SELECT {cols}, t.id, t.expires_at FROM gateways g LEFT JOIN registration_tokens t ON t.gateway_id = g.id WHERE g.protocol_version = 0"
            ))?;
            let rows = stmt.query_map([], |r| {
                let gateway = gateway_from_row(r)?;
                let token_id: Option<String> = r.get(9)?;
                let token_expiry: Option<i64> = r.get(10)?;
                let expires_at = token_expiry.unwrap_or(gateway.created_at + PENDING_WITHOUT_TOKEN);
                Ok(PendingGateway {
                    gateway,
                    token_id,
                    expires_at,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Removes a gateway (its certificates and state go with it) and records when and why;
    /// with `only_pending`, only if it never connected. Returns the removed gateway.
    pub async fn remove_gateway(
        &self,
        id: String,
        reason: String,
        now: i64,
        only_pending: bool,
    ) -> Result<Option<GatewayRecord>, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let gateway = tx
                .query_row(
                    &format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE id = ?1"),
                    params![id],
                    gateway_from_row,
                )
                .optional()?;
            let Some(g) = gateway else { return Ok(None) };
            if only_pending && g.protocol_version != 0 {
                return Ok(None);
            }
            tx.execute(
                "INSERT OR REPLACE INTO removed_gateways (id, name, environments, registered_at, removed_at, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![g.id, g.name, envs_to_json(&g.environments), g.created_at, now, reason],
            )?;
            tx.execute("DELETE FROM gateways WHERE id = ?1", params![g.id])?;
            tx.commit()?;
            Ok(Some(g))
        })
        .await
    }

    /// Forgets removals older than `before` (Unix seconds), so the list stays bounded.
    pub async fn prune_removed_gateways(&self, before: i64) -> Result<usize, StoreError> {
        self.call(move |c| Ok(c.execute("DELETE FROM removed_gateways WHERE removed_at < ?1", params![before])?))
            .await
    }

    /// Removed gateways, newest first.
    pub async fn removed_gateways(&self) -> Result<Vec<RemovedGateway>, StoreError> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, environments, registered_at, removed_at, reason FROM removed_gateways ORDER BY removed_at DESC, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(RemovedGateway {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    environments: envs_from_json(&r.get::<_, String>(2)?),
                    registered_at: r.get(3)?,
                    removed_at: r.get(4)?,
                    reason: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Records that a gateway's self-update holds back (with the reason), or clears it.
    pub async fn set_update_hold(
        &self,
        gateway_id: String,
        reason: Option<String>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            match reason {
                Some(reason) => c.execute(
                    "INSERT INTO update_holds (gateway_id, reason, since) VALUES (?1, ?2, ?3)
                     ON CONFLICT(gateway_id) DO UPDATE SET reason = excluded.reason",
                    params![gateway_id, reason, now],
                )?,
                None => c.execute("DELETE FROM update_holds WHERE gateway_id = ?1", params![gateway_id])?,
            };
            Ok(())
        })
        .await
    }

    /// Every gateway whose self-update holds back: id → (reason, since).
    pub async fn update_holds(&self) -> Result<std::collections::HashMap<String, (String, i64)>, StoreError> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT gateway_id, reason, since FROM update_holds")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))?;
            Ok(rows.collect::<Result<std::collections::HashMap<_, _>, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod lifecycle_tests {
    use super::*;

    fn gateway(id: &str, protocol_version: u32) -> NewGateway {
        NewGateway {
            gateway: GatewayRecord {
                id: id.into(),
                name: format!("name-{id}"),
                environments: vec!["prod".into()],
                argocd_web_url: String::new(),
                created_at: 100,
                last_seen_at: None,
                version: String::new(),
                protocol_version,
                certificate_expires_at: None,
            },
            cert: CertRecord {
                fingerprint: format!("fp-{id}"),
                gateway_id: id.into(),
                public_key: vec![1],
                not_after: 10_000,
                retire_after: None,
            },
        }
    }

    #[tokio::test]
    async fn steps_stay_done_and_only_pending_registrations_are_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let token = |id: &str| TokenRecord {
            id: id.into(),
            name: String::new(),
            environments: vec![],
            created_at: 100,
            expires_at: 200,
            used_at: None,
            gateway_id: None,
        };
        for (t, g) in [("t1", "gw-1"), ("t2", "gw-2")] {
            store.insert_token(token(t), vec![7]).await.unwrap();
            let (check, _) = store
                .register_with_token(t.into(), vec![7], 150, Box::new(move |_, _| Ok(gateway(g, 0))))
                .await
                .unwrap();
            assert!(matches!(check, TokenCheck::Consumed { .. }));
        }
        // gw-2 said hello; gw-1 never did.
        store.record_hello("gw-2".into(), "1.0.0".into(), 2, 160).await.unwrap();
        let pending = store.pending_gateways().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].gateway.id.as_str(), pending[0].expires_at), ("gw-1", 200));
        assert!(
            store
                .remove_gateway("gw-2".into(), "x".into(), 300, true)
                .await
                .unwrap()
                .is_none()
        );
        let removed = store
            .remove_gateway("gw-1".into(), "never connected".into(), 300, true)
            .await
            .unwrap();
        assert_eq!(removed.unwrap().id, "gw-1");
        let listed = store.removed_gateways().await.unwrap();
        assert_eq!(
            (listed[0].id.as_str(), listed[0].reason.as_str()),
            ("gw-1", "never connected")
        );
        assert!(store.gateway("gw-1".into()).await.unwrap().is_none());

        // A step once done stays done; the first connection is recorded once.
        assert!(
            store
                .record_gateway_step("gw-2".into(), "connected", "done", String::new(), 170, true)
                .await
                .unwrap()
        );
        assert!(
            !store
                .record_gateway_step("gw-2".into(), "connected", "done", String::new(), 171, true)
                .await
                .unwrap()
        );
        store
            .record_gateway_step("gw-2".into(), "firstHealthCheck", "failed", "no".into(), 172, false)
            .await
            .unwrap();
        store
            .record_gateway_step("gw-2".into(), "firstHealthCheck", "done", String::new(), 173, false)
            .await
            .unwrap();
        store
            .record_gateway_step("gw-2".into(), "firstHealthCheck", "failed", "later".into(), 174, false)
            .await
            .unwrap();
        let steps = store.token_steps("t2".into()).await.unwrap();
        let health = steps.iter().find(|s| s.step == "firstHealthCheck").unwrap();
        assert_eq!((health.state.as_str(), health.at), ("done", 173));
        assert_eq!(store.prune_removed_gateways(301).await.unwrap(), 1);
        assert!(store.removed_gateways().await.unwrap().is_empty());
    }
}

/// A change-feed event to append: when it happened (Unix ms), its type, its gateway and its JSON
/// (everything but the id, which the store assigns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewFeedEvent {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The event type, e.g. `application.upserted`.
    pub kind: String,
    /// The gateway it concerns.
    pub gateway_id: String,
    /// The event body as served, without `id`.
    pub json: String,
}

/// A stored change-feed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEventRow {
    /// Monotonically increasing id.
    pub id: i64,
    /// The event.
    pub event: NewFeedEvent,
}

/// One point of an application's state timeline: the state after a transition and what changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineRow {
    /// Row id (assigned by the store; 0 before).
    #[serde(skip)]
    pub id: i64,
    /// The gateway.
    pub gateway_id: String,
    /// The application, `namespace/name`.
    #[serde(skip)]
    pub app: String,
    /// When the hub saw it, Unix milliseconds.
    #[serde(skip)]
    pub at_ms: i64,
    /// Health status after the transition.
    pub health: String,
    /// Health message.
    pub health_message: String,
    /// Sync status.
    pub sync: String,
    /// Revision(s), comma-separated for multi-source applications.
    pub revision: String,
    /// Phase of the last or current operation ("" when none).
    pub operation_phase: String,
    /// Operation message.
    pub operation_message: String,
    /// What changed: `first`, `health`, `sync`, `revision`, `operation`, `deleted`.
    pub changed: Vec<String>,
}

/// Where the change feed stands: ids at or below `pruned_through` are gone; `last` is the newest
/// id ever assigned (0 when none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedBounds {
    /// Highest pruned id.
    pub pruned_through: i64,
    /// Highest assigned id.
    pub last: i64,
}

/// An API token as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    /// Public id.
    pub id: String,
    /// Who or what holds it (`ci-deploy`).
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Creation, Unix seconds.
    pub created_at: i64,
    /// Expiry, Unix seconds; none: never.
    pub expires_at: Option<i64>,
    /// Last use, Unix seconds (updated at most once a minute).
    pub last_used_at: Option<i64>,
}

/// A status-page session.
#[derive(Clone, PartialEq, Eq)]
pub struct WebSessionRecord {
    /// SHA-256 of the cookie value.
    pub id_hash: Vec<u8>,
    /// The credential it was opened with: an API token id, or `admin:<hash prefix>`.
    pub credential: String,
    /// The credential's name, for display.
    pub name: String,
    /// The role.
    pub role: String,
    /// The per-session anti-CSRF token state-changing requests must echo.
    pub csrf: String,
    /// Creation, Unix seconds.
    pub created_at: i64,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for WebSessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSessionRecord")
            .field("credential", &self.credential)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("csrf", &"***")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

const FEED_PRUNED_KEY: &str = "feed_pruned_through";

fn feed_bounds_in(c: &Connection) -> rusqlite::Result<FeedBounds> {
    let pruned_through: i64 = c
        .query_row(
            "SELECT value FROM settings WHERE key = ?1",
            params![FEED_PRUNED_KEY],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // sqlite_sequence keeps the highest id ever assigned, even after every row is pruned.
    let seq: Option<i64> = c
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'feed_events'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(FeedBounds {
        pruned_through,
        last: seq.unwrap_or(0).max(pruned_through),
    })
}

fn timeline_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TimelineRow> {
    let changed: String = r.get(10)?;
    Ok(TimelineRow {
        id: r.get(0)?,
        gateway_id: r.get(1)?,
        app: r.get(2)?,
        at_ms: r.get(3)?,
        health: r.get(4)?,
        health_message: r.get(5)?,
        sync: r.get(6)?,
        revision: r.get(7)?,
        operation_phase: r.get(8)?,
        operation_message: r.get(9)?,
        changed: changed
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

const TIMELINE_COLUMNS: &str =
    "id, gateway_id, app, at_ms, health, health_message, sync, revision, phase, operation_message, changed";

fn api_token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiTokenRecord> {
    Ok(ApiTokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        last_used_at: r.get(5)?,
    })
}

const API_TOKEN_COLUMNS: &str = "id, name, role, created_at, expires_at, last_used_at";

impl SqliteStore {
    /// Appends change-feed events and timeline points in one transaction and returns the events'
    /// ids, in order. The id source is the store's: ids increase across restarts and pruning.
    /// Each application that got a timeline point keeps at most `timeline_per_app` points.
    pub async fn record_history(
        &self,
        events: Arc<Vec<NewFeedEvent>>,
        timeline: Arc<Vec<TimelineRow>>,
        timeline_per_app: usize,
    ) -> Result<Vec<i64>, StoreError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let mut ids = Vec::with_capacity(events.len());
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO feed_events (at_ms, kind, gateway_id, json) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for e in events.iter() {
                    ins.execute(params![e.at_ms, e.kind, e.gateway_id, e.json])?;
                    ids.push(tx.last_insert_rowid());
                }
                let mut point = tx.prepare_cached(
                    "INSERT INTO app_timeline (gateway_id, app, at_ms, health, health_message, sync, revision, phase, operation_message, changed)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 WHERE EXISTS (SELECT 1 FROM gateways WHERE id = ?1)",
                )?;
                let mut cap = tx.prepare_cached(
                    "DELETE FROM app_timeline WHERE gateway_id = ?1 AND app = ?2 AND id <= (
                         SELECT id FROM app_timeline WHERE gateway_id = ?1 AND app = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3)",
                )?;
                for t in timeline.iter() {
                    point.execute(params![
                        t.gateway_id,
                        t.app,
                        t.at_ms,
                        t.health,
                        t.health_message,
                        t.sync,
                        t.revision,
                        t.operation_phase,
                        t.operation_message,
                        t.changed.join(",")
                    ])?;
                    // A first sighting has nothing older to drop.
                    if t.changed.iter().all(|c| c != "first") {
                        cap.execute(params![t.gateway_id, t.app, timeline_per_app as i64])?;
                    }
                }
            }
            tx.commit()?;
            Ok(ids)
        })
        .await
    }

    /// Events after `after`, oldest first, at most `limit`, with the bounds read in the same
    /// call: when `after` is below `pruned_through`, events after it are gone and the rows do
    /// not continue from it.
    pub async fn feed_events_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<FeedEventRow>, FeedBounds), StoreError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let rows = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id, at_ms, kind, gateway_id, json FROM feed_events WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![after, limit as i64], |r| {
                    Ok(FeedEventRow {
                        id: r.get(0)?,
                        event: NewFeedEvent {
                            at_ms: r.get(1)?,
                            kind: r.get(2)?,
                            gateway_id: r.get(3)?,
                            json: r.get(4)?,
                        },
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            let bounds = feed_bounds_in(&tx)?;
            tx.commit()?;
            Ok((rows, bounds))
        })
        .await
    }

    /// What the change feed can still replay.
    pub async fn feed_bounds(&self) -> Result<FeedBounds, StoreError> {
        self.call(|c| Ok(feed_bounds_in(c)?)).await
    }

    /// Prunes the change feed to its newest `keep` events and to events newer than
    /// `older_than_ms`, and moves the pruned watermark; returns the new bounds.
    pub async fn prune_feed(&self, keep: u64, older_than_ms: i64) -> Result<FeedBounds, StoreError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let before = feed_bounds_in(&tx)?;
            let by_count = before.last.saturating_sub(keep as i64);
            let by_age: i64 = tx
                .query_row("SELECT max(id) FROM feed_events WHERE at_ms < ?1", params![older_than_ms], |r| {
                    r.get::<_, Option<i64>>(0)
                })?
                .unwrap_or(0);
            let through = by_count.max(by_age).max(before.pruned_through);
            if through > before.pruned_through {
                tx.execute("DELETE FROM feed_events WHERE id <= ?1", params![through])?;
                tx.execute(
                    "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    params![FEED_PRUNED_KEY, through.to_string(), older_than_ms / 1000],
                )?;
            }
            let after = feed_bounds_in(&tx)?;
            tx.commit()?;
            Ok(after)
        })
        .await
    }

    /// Drops timeline points older than `older_than_ms`; returns how many.
    pub async fn prune_timeline(&self, older_than_ms: i64) -> Result<usize, StoreError> {
        self.call(move |c| Ok(c.execute("DELETE FROM app_timeline WHERE at_ms < ?1", params![older_than_ms])?))
            .await
    }

    /// An application's timeline, newest first: at most `limit` points at or after `since_ms`.
    pub async fn app_timeline(
        &self,
        gateway_id: String,
        app: String,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, StoreError> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {TIMELINE_COLUMNS} FROM app_timeline WHERE gateway_id = ?1 AND app = ?2 AND at_ms >= ?3 ORDER BY id DESC LIMIT ?4"
            ))?;
            let rows = stmt.query_map(params![gateway_id, app, since_ms, limit as i64], timeline_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// A gateway's timeline across its applications, newest first: at most `limit` points at or
    /// after `since_ms`.
    pub async fn gateway_timeline(
        &self,
        gateway_id: String,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, StoreError> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {TIMELINE_COLUMNS} FROM app_timeline WHERE gateway_id = ?1 AND at_ms >= ?2 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![gateway_id, since_ms, limit as i64], timeline_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Saves a new API token by its id and secret hash.
    pub async fn insert_api_token(&self, record: ApiTokenRecord, secret_hash: Vec<u8>) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![record.id, record.name, record.role, secret_hash, record.created_at, record.expires_at],
            )?;
            Ok(())
        })
        .await
    }

    /// Every API token, newest first.
    pub async fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        self.call(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, id"
            ))?;
            let rows = stmt.query_map([], api_token_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One API token and its secret hash.
    pub async fn api_token(&self, id: String) -> Result<Option<(ApiTokenRecord, Vec<u8>)>, StoreError> {
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {API_TOKEN_COLUMNS}, secret_hash FROM api_tokens WHERE id = ?1"),
                params![id],
                |r| Ok((api_token_from_row(r)?, r.get(6)?)),
            )
            .optional()?)
        })
        .await
    }

    /// Revokes an API token and closes the page sessions opened with it; false when there was none.
    pub async fn delete_api_token(&self, id: String) -> Result<bool, StoreError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let gone = tx.execute("DELETE FROM api_tokens WHERE id = ?1", params![id])? > 0;
            tx.execute("DELETE FROM web_sessions WHERE credential = ?1", params![id])?;
            tx.commit()?;
            Ok(gone)
        })
        .await
    }

    /// Records that an API token was used.
    pub async fn touch_api_token(&self, id: String, now: i64) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Saves a page session (and drops expired ones).
    pub async fn insert_web_session(&self, s: WebSessionRecord) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute("DELETE FROM web_sessions WHERE expires_at <= ?1", params![s.created_at])?;
            c.execute(
                "INSERT INTO web_sessions (id_hash, credential, name, role, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![s.id_hash, s.credential, s.name, s.role, s.csrf, s.created_at, s.expires_at],
            )?;
            Ok(())
        })
        .await
    }

    /// A page session by the hash of its cookie value, if it has not expired at `now`.
    pub async fn web_session(&self, id_hash: Vec<u8>, now: i64) -> Result<Option<WebSessionRecord>, StoreError> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT id_hash, credential, name, role, csrf, created_at, expires_at FROM web_sessions WHERE id_hash = ?1 AND expires_at > ?2",
                params![id_hash, now],
                |r| {
                    Ok(WebSessionRecord {
                        id_hash: r.get(0)?,
                        credential: r.get(1)?,
                        name: r.get(2)?,
                        role: r.get(3)?,
                        csrf: r.get(4)?,
                        created_at: r.get(5)?,
                        expires_at: r.get(6)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Ends a page session.
    pub async fn delete_web_session(&self, id_hash: Vec<u8>) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute("DELETE FROM web_sessions WHERE id_hash = ?1", params![id_hash])?;
            Ok(())
        })
        .await
    }
}
