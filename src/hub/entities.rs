//! What the hub knows of every gateway's Argo CD: the latest applications, clusters,
//! ApplicationSets and projects as typed items of the relayed schema ([`crate::wire::item`]), in memory for queries and persisted in
//! SQLite so a restarted hub serves the last known state (stale until the gateway is back). Also
//! the change signal `wait` listens to, and the source of the change feed's application events
//! (what each snapshot or delta really changed, published after it is stored).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::feed::{AppChange, Feed};
use super::store::Store;
use crate::wire::item::{Application, ApplicationSet, Cluster, Project};
use crate::wire::proto::{self, Delta};
use crate::wire::{DigestKind, Hash, Kind, SetDigest, digest};

/// One stored entity: the gateway's content hash and the typed item.
#[derive(Debug)]
pub struct Stored<T> {
    /// Content hash sent by the gateway.
    pub hash: Hash,
    /// The item.
    pub item: Arc<T>,
}

impl<T> Clone for Stored<T> {
    fn clone(&self) -> Self {
        Self {
            hash: self.hash,
            item: self.item.clone(),
        }
    }
}

/// One gateway's relayed state.
#[derive(Debug, Default)]
pub struct GatewayEntities {
    /// Applications by `namespace/name`.
    pub apps: BTreeMap<String, Stored<Application>>,
    /// Clusters by server URL.
    pub clusters: BTreeMap<String, Stored<Cluster>>,
    /// ApplicationSets by `namespace/name`.
    pub appsets: BTreeMap<String, Stored<ApplicationSet>>,
    /// Projects by name.
    pub projects: BTreeMap<String, Stored<Project>>,
    /// JSON bytes held, for the state limit.
    bytes: usize,
    /// Entities refused lately, newest last.
    pub refused: Refusals,
    /// The set digest of what is held, kept up to date entity by entity, so answering a delta
    /// costs the same whatever the gateway's size.
    set: SetDigest,
}

/// Entities the hub refused from a gateway (limits, invalid items): a count and the latest few,
/// shown on the gateway.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusals {
    /// Refused since the hub started.
    pub count: u64,
    /// The latest refusals.
    pub recent: std::collections::VecDeque<Refusal>,
}

/// One refused entity.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// Its key.
    pub key: String,
    /// Why, naming the limit and its flag.
    pub reason: String,
    /// When, RFC 3339.
    pub at: String,
}

/// Refusals kept per gateway.
const RECENT_REFUSALS: usize = 16;

impl Refusals {
    fn record(&mut self, key: &str, reason: String) {
        self.count += 1;
        if self.recent.len() == RECENT_REFUSALS {
            self.recent.pop_front();
        }
        self.recent.push_back(Refusal {
            key: key.chars().take(256).collect(),
            reason,
            at: crate::util::rfc3339_now(),
        });
    }
}

/// What the hub accepts from one gateway.
#[derive(Debug, Clone)]
pub struct EntityLimits {
    /// The kinds this hub reads (others are refused as unknown, as an older hub would).
    pub kinds: Vec<Kind>,
    /// Entities per gateway.
    pub max_entities: usize,
    /// JSON bytes per entity.
    pub max_entity_bytes: usize,
    /// JSON bytes per gateway.
    pub max_state_bytes: usize,
}

impl From<&super::limits::Limits> for EntityLimits {
    fn from(l: &super::limits::Limits) -> Self {
        Self {
            kinds: Kind::ALL.to_vec(),
            max_entities: l.max_entities,
            max_entity_bytes: l.max_entity_bytes,
            max_state_bytes: l.max_state_bytes,
        }
    }
}

/// A decoded upsert.
enum Item {
    App(Stored<Application>),
    Cluster(Stored<Cluster>),
    AppSet(Stored<ApplicationSet>),
    Project(Stored<Project>),
}

/// Sizes of the stored JSON, by key, so the state limit is checked without re-encoding.
type Sizes = HashMap<(Kind, String), usize>;

impl GatewayEntities {
    fn insert(&mut self, key: String, item: Item) {
        match item {
            Item::App(s) => {
                self.set.add(Kind::Application, &key, &s.hash);
                if let Some(old) = self.apps.insert(key.clone(), s) {
                    self.set.remove(Kind::Application, &key, &old.hash);
                }
            }
            Item::Cluster(s) => {
                self.set.add(Kind::Cluster, &key, &s.hash);
                if let Some(old) = self.clusters.insert(key.clone(), s) {
                    self.set.remove(Kind::Cluster, &key, &old.hash);
                }
            }
            Item::AppSet(s) => {
                self.set.add(Kind::ApplicationSet, &key, &s.hash);
                if let Some(old) = self.appsets.insert(key.clone(), s) {
                    self.set.remove(Kind::ApplicationSet, &key, &old.hash);
                }
            }
            Item::Project(s) => {
                self.set.add(Kind::Project, &key, &s.hash);
                if let Some(old) = self.projects.insert(key.clone(), s) {
                    self.set.remove(Kind::Project, &key, &old.hash);
                }
            }
        }
    }

    /// Removes an entity; returns the application it was, if one.
    fn remove(&mut self, kind: Kind, key: &str) -> Option<Arc<Application>> {
        match kind {
            Kind::Application => self.apps.remove(key).map(|s| {
                self.set.remove(kind, key, &s.hash);
                s.item
            }),
            Kind::Cluster => {
                if let Some(s) = self.clusters.remove(key) {
                    self.set.remove(kind, key, &s.hash);
                }
                None
            }
            Kind::ApplicationSet => {
                if let Some(s) = self.appsets.remove(key) {
                    self.set.remove(kind, key, &s.hash);
                }
                None
            }
            Kind::Project => {
                if let Some(s) = self.projects.remove(key) {
                    self.set.remove(kind, key, &s.hash);
                }
                None
            }
        }
    }

    fn contains(&self, kind: Kind, key: &str) -> bool {
        match kind {
            Kind::Application => self.apps.contains_key(key),
            Kind::Cluster => self.clusters.contains_key(key),
            Kind::ApplicationSet => self.appsets.contains_key(key),
            Kind::Project => self.projects.contains_key(key),
        }
    }

    /// How many entities are held.
    pub fn len(&self) -> usize {
        self.apps.len() + self.clusters.len() + self.appsets.len() + self.projects.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state digest of `kind`: the set digest is kept up to date; the ordered one (for
    /// gateways of the previous version) visits every entity, in kind order.
    pub fn digest(&self, kind: DigestKind) -> Hash {
        match kind {
            DigestKind::Set => self.set.finish(),
            DigestKind::Ordered => digest(
                self.apps
                    .iter()
                    .map(|(k, s)| (Kind::Application, k.as_str(), &s.hash))
                    .chain(self.clusters.iter().map(|(k, s)| (Kind::Cluster, k.as_str(), &s.hash)))
                    .chain(
                        self.appsets
                            .iter()
                            .map(|(k, s)| (Kind::ApplicationSet, k.as_str(), &s.hash)),
                    )
                    .chain(self.projects.iter().map(|(k, s)| (Kind::Project, k.as_str(), &s.hash))),
            ),
        }
    }
}

/// Errors applying relay messages.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Persisting failed.
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
}

/// What a snapshot changed: applications new or with another hash, and those gone.
fn snapshot_changes(
    old: &BTreeMap<String, Stored<Application>>,
    new: Option<&BTreeMap<String, Stored<Application>>>,
) -> Vec<AppChange> {
    let empty = BTreeMap::new();
    let new = new.unwrap_or(&empty);
    let mut changes: Vec<AppChange> = new
        .iter()
        .filter_map(|(key, s)| match old.get(key) {
            Some(o) if o.hash == s.hash => None,
            before => Some(AppChange {
                key: key.clone(),
                before: before.map(|o| o.item.clone()),
                after: Some(s.item.clone()),
            }),
        })
        .collect();
    changes.extend(
        old.iter()
            .filter(|(key, _)| !new.contains_key(*key))
            .map(|(key, o)| AppChange {
                key: key.clone(),
                before: Some(o.item.clone()),
                after: None,
            }),
    );
    changes
}

/// The relayed state of all gateways.
pub struct EntityState {
    db: Store,
    gateways: RwLock<HashMap<String, GatewayEntities>>,
    sizes: RwLock<HashMap<String, Sizes>>,
    /// Per gateway, the newest store revision held (replicas follow each other's writes from
    /// it; 0 where the store keeps no revisions).
    revs: RwLock<HashMap<String, i64>>,
    changed: watch::Sender<u64>,
    feed: Feed,
}

/// Who writes relayed state, and how long a failing write is retried.
#[derive(Default, Clone, Copy)]
pub struct Writer<'a> {
    /// The session that owns the gateway: a write happens only while it still does.
    pub owner: Option<&'a str>,
    /// Retry a write the store refused (the database is away) until this is cancelled, for at
    /// most [`STORE_PATIENCE`]: the gateway's message stays unacknowledged meanwhile, and the
    /// gateway keeps it.
    pub retry_until: Option<&'a tokio_util::sync::CancellationToken>,
}

/// How long a session waits for the store to take a write before it gives up (and the session
/// is drained, so the gateway comes back later with what was not acknowledged). Well below
/// the gateway's keepalive tolerance: the session answers nothing while it waits.
pub const STORE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// An entity row followed from another replica's write: kind tag, key, hash, JSON (none:
/// deleted), store revision.
pub type Replicated = (u8, String, Vec<u8>, Option<Vec<u8>>, i64);

fn typed<T: DeserializeOwned>(hash: Hash, json: &[u8]) -> Result<Stored<T>, String> {
    let item: T = serde_json::from_slice(json).map_err(|e| format!("not an item of the relayed schema: {e}"))?;
    Ok(Stored {
        hash,
        item: Arc::new(item),
    })
}

/// Decodes a stored or relayed upsert of `kind`, checking it is an object of the item schema
/// whose key is the one it travels under.
fn decode_item(kind: Kind, key: &str, hash: &[u8], json: &[u8]) -> Result<Item, String> {
    let hash: Hash = hash.try_into().map_err(|_| "its hash is not 32 bytes".to_owned())?;
    if json.first() != Some(&b'{') {
        return Err("its JSON is not an object".to_owned());
    }
    match kind {
        Kind::Application => {
            let s: Stored<Application> = typed(hash, json)?;
            let own = format!("{}/{}", s.item.namespace, s.item.name);
            if own != key || s.item.name.is_empty() {
                return Err(format!("it names application {own:?}, not its key"));
            }
            Ok(Item::App(s))
        }
        Kind::Cluster => {
            let s: Stored<Cluster> = typed(hash, json)?;
            if s.item.server != key || key.is_empty() {
                return Err(format!("it names cluster {:?}, not its key", s.item.server));
            }
            Ok(Item::Cluster(s))
        }
        Kind::ApplicationSet => {
            let s: Stored<ApplicationSet> = typed(hash, json)?;
            let own = format!("{}/{}", s.item.namespace, s.item.name);
            if own != key || s.item.name.is_empty() {
                return Err(format!("it names ApplicationSet {own:?}, not its key"));
            }
            Ok(Item::AppSet(s))
        }
        Kind::Project => {
            let s: Stored<Project> = typed(hash, json)?;
            if s.item.name != key || key.is_empty() {
                return Err(format!("it names project {:?}, not its key", s.item.name));
            }
            Ok(Item::Project(s))
        }
    }
}

/// A relayed entity's kind and, unless it is a deletion, the decoded item; the error says why
/// it is refused.
fn decode(e: &proto::Entity, limits: &EntityLimits) -> Result<(Kind, Option<Item>), String> {
    let kind = Kind::from_proto(e.kind)
        .filter(|k| limits.kinds.contains(k))
        .ok_or_else(|| format!("unknown entity kind {}", e.kind))?;
    if e.json.is_empty() {
        return Ok((kind, None));
    }
    if e.json.len() > limits.max_entity_bytes {
        return Err(format!(
            "its JSON is {} bytes, over the limit of {} (hub flag --max-entity-bytes)",
            e.json.len(),
            limits.max_entity_bytes
        ));
    }
    Ok((kind, Some(decode_item(kind, &e.key, &e.hash, &e.json)?)))
}

impl EntityState {
    /// Loads every gateway's state from the database; changes from now on are published to
    /// `feed`.
    pub async fn load(db: Store, feed: Feed) -> Result<Self, StateError> {
        let mut gateways: HashMap<String, GatewayEntities> = HashMap::new();
        let mut sizes: HashMap<String, Sizes> = HashMap::new();
        for (gw, tag, key, hash, json) in db.load_entities().await? {
            let Some(kind) = Kind::from_tag(tag) else {
                tracing::warn!(gateway_id = %gw, key = %key, tag, "skipping a stored entity of an unknown kind");
                continue;
            };
            let item = match decode_item(kind, &key, &hash, &json) {
                Ok(item) => item,
                Err(reason) => {
                    tracing::warn!(gateway_id = %gw, key = %key, %reason, "skipping an unreadable stored entity");
                    continue;
                }
            };
            let entry = gateways.entry(gw.clone()).or_default();
            entry.bytes += json.len();
            sizes.entry(gw).or_default().insert((kind, key.clone()), json.len());
            entry.insert(key, item);
        }
        let (changed, _) = watch::channel(0);
        Ok(Self {
            db,
            gateways: RwLock::new(gateways),
            sizes: RwLock::new(sizes),
            revs: RwLock::new(HashMap::new()),
            changed,
            feed,
        })
    }

    /// Writes to the store, retrying while `writer` asks for it; returns the write's revision.
    async fn write(
        &self,
        writer: &Writer<'_>,
        gateway_id: &str,
        replace: bool,
        upserts: Vec<super::store::EntityUpsert>,
        deletes: Vec<(u8, String)>,
    ) -> Result<i64, StateError> {
        let mut failures = 0u32;
        let started = std::time::Instant::now();
        loop {
            let result = self
                .db
                .write_entities(
                    gateway_id.to_owned(),
                    replace,
                    upserts.clone(),
                    deletes.clone(),
                    writer.owner.map(str::to_owned),
                )
                .await;
            let e = match result {
                Ok(rev) => {
                    if failures > 0 {
                        tracing::info!(
                            gateway_id,
                            attempts = failures + 1,
                            "stored relayed state after the store came back"
                        );
                    }
                    return Ok(rev);
                }
                Err(e @ super::store::StoreError::Fenced(_)) => return Err(e.into()),
                Err(e) => e,
            };
            let Some(stop) = writer.retry_until else {
                return Err(e.into());
            };
            if started.elapsed() >= STORE_PATIENCE {
                tracing::warn!(gateway_id, error = %e, attempts = failures + 1, "the store did not come back in time; the session gives way and the gateway will resend");
                return Err(e.into());
            }
            failures += 1;
            if failures == 1 || failures.is_multiple_of(30) {
                tracing::error!(gateway_id, error = %e, attempts = failures, "cannot store relayed state; keeping it unacknowledged and retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => return Err(e.into()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// Notes that the state of a gateway is current up to `rev` (a write of this replica).
    fn advance(&self, gateway_id: &str, rev: i64) {
        if rev > 0 {
            let mut revs = self.revs.write().unwrap_or_else(|e| e.into_inner());
            let r = revs.entry(gateway_id.to_owned()).or_default();
            *r = (*r).max(rev);
        }
    }

    /// Sets the revisions the loaded state is current from (read before it was loaded).
    pub fn set_revisions(&self, revs: HashMap<String, i64>) {
        *self.revs.write().unwrap_or_else(|e| e.into_inner()) = revs;
    }

    /// The newest store revision held for each gateway.
    pub fn revisions(&self) -> HashMap<String, i64> {
        self.revs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces a gateway's state with what the store holds (`rows`, current up to `rev`), as
    /// read by a replica taking over its session or catching up: no change-feed events (the
    /// replica that stored them published those).
    pub fn reload(&self, gateway_id: &str, rows: Vec<Replicated>, rev: i64) {
        let mut fresh = GatewayEntities::default();
        let mut sizes = Sizes::new();
        for (tag, key, hash, json, _) in rows {
            let (Some(kind), Some(json)) = (Kind::from_tag(tag), json) else {
                continue;
            };
            match decode_item(kind, &key, &hash, &json) {
                Ok(item) => {
                    fresh.bytes += json.len();
                    sizes.insert((kind, key.clone()), json.len());
                    fresh.insert(key, item);
                }
                Err(reason) => tracing::warn!(gateway_id, key = %key, %reason, "skipping an unreadable stored entity"),
            }
        }
        {
            let mut g = self.gateways.write().unwrap_or_else(|e| e.into_inner());
            fresh.refused = g.get(gateway_id).map(|old| old.refused.clone()).unwrap_or_default();
            g.insert(gateway_id.to_owned(), fresh);
            self.sizes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(gateway_id.to_owned(), sizes);
            self.revs
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(gateway_id.to_owned(), rev);
        }
        self.bump();
    }

    /// Applies rows another replica stored for a gateway, oldest first; rows at or below the
    /// revision already held are skipped, so replays and races with this replica's own writes
    /// change nothing. No change-feed events: the writing replica published them.
    pub fn replicate(&self, gateway_id: &str, rows: Vec<Replicated>) {
        let mut applied = false;
        {
            let mut g = self.gateways.write().unwrap_or_else(|e| e.into_inner());
            let mut all_sizes = self.sizes.write().unwrap_or_else(|e| e.into_inner());
            let mut revs = self.revs.write().unwrap_or_else(|e| e.into_inner());
            let held = revs.entry(gateway_id.to_owned()).or_default();
            let entry = g.entry(gateway_id.to_owned()).or_default();
            let sizes = all_sizes.entry(gateway_id.to_owned()).or_default();
            for (tag, key, hash, json, rev) in rows {
                if rev <= *held {
                    continue;
                }
                *held = rev;
                applied = true;
                let Some(kind) = Kind::from_tag(tag) else { continue };
                let old = match json {
                    None => {
                        entry.remove(kind, &key);
                        sizes.remove(&(kind, key))
                    }
                    Some(json) => match decode_item(kind, &key, &hash, &json) {
                        Ok(item) => {
                            entry.insert(key.clone(), item);
                            let old = sizes.insert((kind, key), json.len());
                            entry.bytes += json.len();
                            old
                        }
                        Err(reason) => {
                            tracing::warn!(gateway_id, key = %key, %reason, "skipping an unreadable replicated entity");
                            None
                        }
                    },
                };
                entry.bytes = entry.bytes.saturating_sub(old.unwrap_or(0));
            }
        }
        if applied {
            self.bump();
        }
    }

    /// A receiver that changes whenever any state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The digest of `kind` of a gateway's state (of nothing, when unknown).
    pub fn digest(&self, gateway_id: &str, kind: DigestKind) -> Hash {
        let g = self.gateways.read().unwrap_or_else(|e| e.into_inner());
        g.get(gateway_id)
            .map(|e| e.digest(kind))
            .unwrap_or_else(|| GatewayEntities::default().digest(kind))
    }

    /// Reads a gateway's state.
    pub fn with<R>(&self, gateway_id: &str, f: impl FnOnce(Option<&GatewayEntities>) -> R) -> R {
        let g = self.gateways.read().unwrap_or_else(|e| e.into_inner());
        f(g.get(gateway_id))
    }

    /// Reads every gateway's state.
    pub fn with_all<R>(&self, f: impl FnOnce(&HashMap<String, GatewayEntities>) -> R) -> R {
        let g = self.gateways.read().unwrap_or_else(|e| e.into_inner());
        f(&g)
    }

    /// One ApplicationSet of a gateway.
    pub fn appset(&self, gateway_id: &str, key: &str) -> Option<Arc<ApplicationSet>> {
        self.with(gateway_id, |g| {
            g.and_then(|g| g.appsets.get(key)).map(|s| s.item.clone())
        })
    }

    /// One application of a gateway.
    pub fn app(&self, gateway_id: &str, key: &str) -> Option<Arc<Application>> {
        self.with(gateway_id, |g| g.and_then(|g| g.apps.get(key)).map(|s| s.item.clone()))
    }

    /// Replaces a gateway's state with a complete snapshot (assembled from its chunks by the
    /// session); returns the new digest. Entities over the limits or not of the item schema are
    /// refused one by one (counted, logged and kept on the gateway); the rest is stored.
    pub async fn apply_snapshot(
        &self,
        gateway_id: &str,
        entities: Vec<proto::Entity>,
        digest: &[u8],
        limits: &EntityLimits,
        refused: &(dyn Fn(&str) + Sync),
        digest_kind: DigestKind,
    ) -> Result<Hash, StateError> {
        self.apply_snapshot_as(
            &Writer::default(),
            gateway_id,
            entities,
            digest,
            limits,
            refused,
            digest_kind,
        )
        .await
    }

    /// [`EntityState::apply_snapshot`] written by `writer`.
    // apply_snapshot's arguments plus the writer; a struct for them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_snapshot_as(
        &self,
        writer: &Writer<'_>,
        gateway_id: &str,
        entities: Vec<proto::Entity>,
        digest: &[u8],
        limits: &EntityLimits,
        refused: &(dyn Fn(&str) + Sync),
        digest_kind: DigestKind,
    ) -> Result<Hash, StateError> {
        let mut fresh = GatewayEntities::default();
        let mut sizes = Sizes::new();
        let mut rows = Vec::with_capacity(entities.len());
        let mut refusals = vec![];
        for e in entities {
            let checked = decode(&e, limits).and_then(|(kind, item)| match item {
                None => Err("a snapshot carries no deletions".to_owned()),
                Some(_) if fresh.len() >= limits.max_entities => Err(format!(
                    "the gateway relays more than {} entities (hub flag --max-entities)",
                    limits.max_entities
                )),
                Some(_) if fresh.bytes + e.json.len() > limits.max_state_bytes => Err(format!(
                    "the gateway's state is over {} bytes (hub flag --max-state-bytes)",
                    limits.max_state_bytes
                )),
                Some(item) => Ok((kind, item)),
            });
            match checked {
                Ok((kind, item)) => {
                    // A key sent twice counts once, as its last copy (as the database keeps it).
                    let replaced = sizes.insert((kind, e.key.clone()), e.json.len()).unwrap_or(0);
                    fresh.bytes = fresh.bytes - replaced + e.json.len();
                    fresh.insert(e.key.clone(), item);
                    rows.push((kind.tag(), e.key, e.hash, Arc::new(e.json)));
                }
                Err(reason) => refusals.push((e.key, reason)),
            }
        }
        let new_digest = fresh.digest(digest_kind);
        if !digest.is_empty() && digest != new_digest && refusals.is_empty() {
            tracing::warn!(gateway_id, "snapshot digest mismatch; keeping what was received");
        }
        let count = rows.len();
        let rev = self.write(writer, gateway_id, true, rows, vec![]).await?;
        let changes = {
            let mut g = self.gateways.write().unwrap_or_else(|e| e.into_inner());
            // Refusals seen before stay visible.
            fresh.refused = g.get(gateway_id).map(|old| old.refused.clone()).unwrap_or_default();
            for (key, reason) in refusals {
                tracing::warn!(gateway_id, key = %key, %reason, "refused an entity of a snapshot");
                refused(&reason);
                fresh.refused.record(&key, reason);
            }
            let old = g.insert(gateway_id.to_owned(), fresh).unwrap_or_default();
            self.advance(gateway_id, rev);
            let new = g.get(gateway_id).map(|e| &e.apps);
            snapshot_changes(&old.apps, new)
        };
        self.sizes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gateway_id.to_owned(), sizes);
        tracing::info!(
            gateway_id,
            entities = count,
            changed = changes.len(),
            "applied a state snapshot"
        );
        self.bump();
        self.feed.applications(gateway_id, changes).await;
        Ok(new_digest)
    }

    /// Applies upserts and deletions; returns the new digest. Refused entities (limits,
    /// invalid items) keep their previous state and are recorded on the gateway.
    pub async fn apply_delta(
        &self,
        gateway_id: &str,
        delta: Delta,
        limits: &EntityLimits,
        refused: &(dyn Fn(&str) + Sync),
        digest_kind: DigestKind,
    ) -> Result<Hash, StateError> {
        self.apply_delta_as(&Writer::default(), gateway_id, delta, limits, refused, digest_kind)
            .await
    }

    /// [`EntityState::apply_delta`] written by `writer`.
    pub async fn apply_delta_as(
        &self,
        writer: &Writer<'_>,
        gateway_id: &str,
        delta: Delta,
        limits: &EntityLimits,
        refused: &(dyn Fn(&str) + Sync),
        digest_kind: DigestKind,
    ) -> Result<Hash, StateError> {
        let mut upserts = vec![];
        let mut deletes = vec![];
        let mut decoded = vec![];
        let mut refusals = vec![];
        {
            let g = self.gateways.read().unwrap_or_else(|e| e.into_inner());
            let sizes = self.sizes.read().unwrap_or_else(|e| e.into_inner());
            let current = g.get(gateway_id);
            let sizes = sizes.get(gateway_id);
            let mut count = current.map(GatewayEntities::len).unwrap_or(0);
            let mut bytes = current.map(|c| c.bytes).unwrap_or(0);
            // A key carried twice counts once, as its last: the database and memory must agree
            // on what the delta means whatever a gateway sends.
            let mut last = HashMap::new();
            for (i, e) in delta.entities.iter().enumerate() {
                last.insert((e.kind, e.key.clone()), i);
            }
            let entities = delta
                .entities
                .into_iter()
                .enumerate()
                .filter(|(i, e)| last.get(&(e.kind, e.key.clone())) == Some(i))
                .map(|(_, e)| e);
            for e in entities {
                let (kind, item) = match decode(&e, limits) {
                    Ok(d) => d,
                    Err(reason) => {
                        refusals.push((e.key, reason));
                        continue;
                    }
                };
                let old = sizes.and_then(|s| s.get(&(kind, e.key.clone()))).copied();
                let exists = current.is_some_and(|c| c.contains(kind, &e.key));
                match item {
                    None => {
                        bytes = bytes.saturating_sub(old.unwrap_or(0));
                        if exists {
                            count -= 1;
                        }
                        deletes.push((kind.tag(), e.key.clone()));
                        decoded.push((kind, e.key, None, 0));
                    }
                    Some(item) => {
                        let new_count = count + usize::from(!exists);
                        let new_bytes = bytes.saturating_sub(old.unwrap_or(0)) + e.json.len();
                        if new_count > limits.max_entities {
                            refusals.push((
                                e.key,
                                format!(
                                    "the gateway relays more than {} entities (hub flag --max-entities)",
                                    limits.max_entities
                                ),
                            ));
                            continue;
                        }
                        if new_bytes > limits.max_state_bytes {
                            refusals.push((
                                e.key,
                                format!(
                                    "the gateway's state would exceed {} bytes (hub flag --max-state-bytes)",
                                    limits.max_state_bytes
                                ),
                            ));
                            continue;
                        }
                        count = new_count;
                        bytes = new_bytes;
                        let size = e.json.len();
                        upserts.push((kind.tag(), e.key.clone(), e.hash, Arc::new(e.json)));
                        decoded.push((kind, e.key, Some(item), size));
                    }
                }
            }
        }
        let rev = self.write(writer, gateway_id, false, upserts, deletes).await?;
        let mut changes = vec![];
        let new_digest = {
            let mut g = self.gateways.write().unwrap_or_else(|e| e.into_inner());
            self.advance(gateway_id, rev);
            let mut all_sizes = self.sizes.write().unwrap_or_else(|e| e.into_inner());
            let entry = g.entry(gateway_id.to_owned()).or_default();
            let sizes = all_sizes.entry(gateway_id.to_owned()).or_default();
            for (kind, key, item, size) in decoded {
                let old = match item {
                    Some(Item::App(s)) => {
                        let before = entry
                            .apps
                            .get(&key)
                            .filter(|old| old.hash != s.hash)
                            .map(|old| old.item.clone());
                        let new = !entry.apps.contains_key(&key);
                        if new || before.is_some() {
                            changes.push(AppChange {
                                key: key.clone(),
                                before,
                                after: Some(s.item.clone()),
                            });
                        }
                        entry.insert(key.clone(), Item::App(s));
                        sizes.insert((kind, key), size)
                    }
                    Some(item) => {
                        entry.insert(key.clone(), item);
                        sizes.insert((kind, key), size)
                    }
                    None => {
                        if let Some(before) = entry.remove(kind, &key) {
                            changes.push(AppChange {
                                key: key.clone(),
                                before: Some(before),
                                after: None,
                            });
                        }
                        sizes.remove(&(kind, key))
                    }
                };
                entry.bytes = entry.bytes.saturating_sub(old.unwrap_or(0)) + size;
            }
            for (key, reason) in refusals {
                tracing::warn!(gateway_id, key = %key, %reason, "refused an entity of a delta");
                refused(&reason);
                entry.refused.record(&key, reason);
            }
            entry.digest(digest_kind)
        };
        self.bump();
        self.feed.applications(gateway_id, changes).await;
        Ok(new_digest)
    }

    /// Forgets a deleted gateway's state (the database rows go with the gateway).
    pub fn forget(&self, gateway_id: &str) {
        self.gateways
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(gateway_id);
        self.sizes.write().unwrap_or_else(|e| e.into_inner()).remove(gateway_id);
        self.revs.write().unwrap_or_else(|e| e.into_inner()).remove(gateway_id);
        self.bump();
    }
}
