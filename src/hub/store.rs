//! The hub's SQLite store: registration tokens (hashed), gateways and the certificates issued to
//! them, relayed entities, settings, the change feed (whose ids it assigns), application
//! timelines, API tokens (hashed) and status-page sessions. SQLite runs on blocking threads so
//! the async runtime never waits on disk.

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
}

/// A new gateway and its first certificate.
#[derive(Debug, Clone)]
pub struct NewGateway {
    /// The gateway row.
    pub gateway: GatewayRecord,
    /// Its certificate.
    pub cert: CertRecord,
}

/// The hub database.
#[derive(Clone)]
pub struct Store {
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

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
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

    /// Records a renewed certificate.
    pub async fn add_certificate(&self, cert: CertRecord) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction()?;
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
                "SELECT fingerprint, gateway_id, public_key, not_after FROM certificates WHERE fingerprint = ?1",
                params![fingerprint],
                |r| {
                    Ok(CertRecord {
                        fingerprint: r.get(0)?,
                        gateway_id: r.get(1)?,
                        public_key: r.get(2)?,
                        not_after: r.get(3)?,
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
        "INSERT OR REPLACE INTO certificates (fingerprint, gateway_id, public_key, not_after) VALUES (?1, ?2, ?3, ?4)",
        params![cert.fingerprint, cert.gateway_id, cert.public_key, cert.not_after],
    )?;
    Ok(())
}

/// A change-feed event to append: when it happened (Unix ms), its type, its gateway and its JSON
/// (everything but the id, which the store assigns).
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Store {
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
