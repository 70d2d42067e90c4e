//! What the hub knows of every gateway's Argo CD: the latest applications and clusters as typed
//! items of the relayed schema ([`crate::wire::item`]), in memory for queries and persisted in
//! SQLite so a restarted hub serves the last known state (stale until the gateway is back). Also
//! the change signal `wait` listens to, and the source of the change feed's application events
//! (what each snapshot or delta really changed, published after it is stored).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::feed::{AppChange, Feed};
use super::store::Store;
use crate::wire::item::{Application, Cluster};
use crate::wire::proto::{self, Delta, SnapshotChunk};
use crate::wire::{Hash, Kind, digest};

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
    /// Snapshot chunks received so far.
    pending_snapshot: Vec<proto::Entity>,
}

/// A decoded upsert.
enum Item {
    App(Stored<Application>),
    Cluster(Stored<Cluster>),
}

impl GatewayEntities {
    fn insert(&mut self, key: String, item: Item) {
        match item {
            Item::App(s) => {
                self.apps.insert(key, s);
            }
            Item::Cluster(s) => {
                self.clusters.insert(key, s);
            }
        }
    }

    /// Removes an entity; returns the application it was, if one.
    fn remove(&mut self, kind: Kind, key: &str) -> Option<Arc<Application>> {
        match kind {
            Kind::Application => self.apps.remove(key).map(|s| s.item),
            Kind::Cluster => {
                self.clusters.remove(key);
                None
            }
        }
    }

    /// The state digest.
    pub fn digest(&self) -> Hash {
        digest(
            self.apps
                .iter()
                .map(|(k, s)| (Kind::Application, k.as_str(), &s.hash))
                .chain(self.clusters.iter().map(|(k, s)| (Kind::Cluster, k.as_str(), &s.hash))),
        )
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
    changed: watch::Sender<u64>,
    feed: Feed,
}

fn typed<T: DeserializeOwned>(hash: Hash, json: &[u8]) -> Option<Stored<T>> {
    let item: T = serde_json::from_slice(json).ok()?;
    Some(Stored {
        hash,
        item: Arc::new(item),
    })
}

/// Decodes a stored or relayed upsert of `kind`; `None` when it does not match the item schema.
fn decode_item(kind: Kind, hash: &[u8], json: &[u8]) -> Option<Item> {
    let hash: Hash = hash.try_into().ok()?;
    match kind {
        Kind::Application => typed(hash, json).map(Item::App),
        Kind::Cluster => typed(hash, json).map(Item::Cluster),
    }
}

/// A relayed entity: its kind and, unless it is a deletion, the decoded item.
fn decode(e: &proto::Entity) -> Option<(Kind, Option<Item>)> {
    let kind = Kind::from_proto(e.kind)?;
    if e.json.is_empty() {
        return Some((kind, None));
    }
    Some((kind, Some(decode_item(kind, &e.hash, &e.json)?)))
}

impl EntityState {
    /// Loads every gateway's state from the database; changes from now on are published to
    /// `feed`.
    pub async fn load(db: Store, feed: Feed) -> Result<Self, StateError> {
        let mut gateways: HashMap<String, GatewayEntities> = HashMap::new();
        for (gw, tag, key, hash, json) in db.load_entities().await? {
            let Some(item) = Kind::from_tag(tag).and_then(|kind| decode_item(kind, &hash, &json)) else {
                tracing::warn!(gateway_id = %gw, key = %key, "skipping an unreadable stored entity");
                continue;
            };
            gateways.entry(gw).or_default().insert(key, item);
        }
        let (changed, _) = watch::channel(0);
        Ok(Self {
            db,
            gateways: RwLock::new(gateways),
            changed,
            feed,
        })
    }

    /// A receiver that changes whenever any state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The digest of a gateway's state (of nothing, when unknown).
    pub fn digest(&self, gateway_id: &str) -> Hash {
        let g = self.gateways.read().unwrap_or_else(|e| e.into_inner());
        g.get(gateway_id)
            .map(GatewayEntities::digest)
            .unwrap_or_else(|| digest([]))
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

    /// One application of a gateway.
    pub fn app(&self, gateway_id: &str, key: &str) -> Option<Arc<Application>> {
        self.with(gateway_id, |g| g.and_then(|g| g.apps.get(key)).map(|s| s.item.clone()))
    }

    /// Applies a snapshot chunk; on the last chunk the gateway's state is replaced and the new
    /// digest returned.
    pub async fn apply_snapshot(&self, gateway_id: &str, chunk: SnapshotChunk) -> Result<Option<Hash>, StateError> {
        let entities = {
            let mut g = self.gateways.write().unwrap_or_else(|e| e.into_inner());
            let entry = g.entry(gateway_id.to_owned()).or_default();
            if chunk.index == 0 {
                entry.pending_snapshot.clear();
            }
            entry.pending_snapshot.extend(chunk.entities);
            if !chunk.last {
                return Ok(None);
            }
            std::mem::take(&mut entry.pending_snapshot)
        };
        let mut fresh = GatewayEntities::default();
        let mut rows = Vec::with_capacity(entities.len());
        for e in &entities {
            match decode(e) {
                Some((kind, Some(item))) => {
                    rows.push((kind.tag(), e.key.clone(), e.hash.clone(), Arc::new(e.json.clone())));
                    fresh.insert(e.key.clone(), item);
                }
                _ => tracing::warn!(gateway_id, key = %e.key, "skipping an undecodable entity in a snapshot"),
            }
        }
        let new_digest = fresh.digest();
        if !chunk.digest.is_empty() && chunk.digest != new_digest {
            tracing::warn!(gateway_id, "snapshot digest mismatch; keeping what was received");
        }
        self.db
            .write_entities(gateway_id.to_owned(), true, rows, vec![])
            .await?;
        let changes = {
            let mut g = self.gateways.write().unwrap_or_else(|e| e.into_inner());
            let old = g.insert(gateway_id.to_owned(), fresh).unwrap_or_default();
            let new = g.get(gateway_id).map(|e| &e.apps);
            snapshot_changes(&old.apps, new)
        };
        tracing::info!(
            gateway_id,
            entities = entities.len(),
            changed = changes.len(),
            "applied a state snapshot"
        );
        self.bump();
        self.feed.applications(gateway_id, changes).await;
        Ok(Some(new_digest))
    }

    /// Applies upserts and deletions; returns the new digest.
    pub async fn apply_delta(&self, gateway_id: &str, delta: Delta) -> Result<Hash, StateError> {
        let mut upserts = vec![];
        let mut deletes = vec![];
        let mut decoded = vec![];
        for e in &delta.entities {
            match decode(e) {
                Some((kind, Some(item))) => {
                    upserts.push((kind.tag(), e.key.clone(), e.hash.clone(), Arc::new(e.json.clone())));
                    decoded.push((kind, e.key.clone(), Some(item)));
                }
                Some((kind, None)) => {
                    deletes.push((kind.tag(), e.key.clone()));
                    decoded.push((kind, e.key.clone(), None));
                }
                None => tracing::warn!(gateway_id, key = %e.key, "skipping an undecodable entity in a delta"),
            }
        }
        self.db
            .write_entities(gateway_id.to_owned(), false, upserts, deletes)
            .await?;
        let mut changes = vec![];
        let new_digest = {
            let mut g = self.gateways.write().unwrap_or_else(|e| e.into_inner());
            let entry = g.entry(gateway_id.to_owned()).or_default();
            for (kind, key, item) in decoded {
                match item {
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
                        entry.insert(key, Item::App(s));
                    }
                    Some(item) => entry.insert(key, item),
                    None => {
                        if let Some(before) = entry.remove(kind, &key) {
                            changes.push(AppChange {
                                key,
                                before: Some(before),
                                after: None,
                            });
                        }
                    }
                }
            }
            entry.digest()
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
        self.bump();
    }
}
