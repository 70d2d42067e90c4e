//! What the hub knows of every gateway's Argo CD: the latest applications and clusters, in
//! memory for queries and persisted in SQLite so a restarted hub serves the last known state
//! (stale until the gateway is back). Also the change signal `wait` listens to.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::watch;

use super::store::Store;
use crate::proto::{Delta, SnapshotChunk};
use crate::relay::{Hash, Kind, digest};

/// One stored entity.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Content hash sent by the gateway.
    pub hash: Hash,
    /// The entity.
    pub value: Arc<Value>,
}

/// One gateway's relayed state.
#[derive(Debug, Default)]
pub struct GatewayEntities {
    /// Applications by `namespace/name`.
    pub apps: BTreeMap<String, Stored>,
    /// Clusters by server URL.
    pub clusters: BTreeMap<String, Stored>,
    /// Snapshot chunks received so far.
    pending_snapshot: Vec<crate::proto::Entity>,
}

impl GatewayEntities {
    fn map(&mut self, kind: Kind) -> &mut BTreeMap<String, Stored> {
        match kind {
            Kind::Application => &mut self.apps,
            Kind::Cluster => &mut self.clusters,
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

fn kind_tag(kind: Kind) -> u8 {
    match kind {
        Kind::Application => 1,
        Kind::Cluster => 2,
    }
}

fn kind_from_tag(tag: u8) -> Option<Kind> {
    match tag {
        1 => Some(Kind::Application),
        2 => Some(Kind::Cluster),
        _ => None,
    }
}

/// Errors applying relay messages.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Persisting failed.
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
}

/// The relayed state of all gateways.
pub struct EntityState {
    db: Store,
    gateways: RwLock<HashMap<String, GatewayEntities>>,
    changed: watch::Sender<u64>,
}

fn decode(e: &crate::proto::Entity) -> Option<(Kind, Option<Stored>)> {
    let kind = Kind::from_proto(e.kind)?;
    if e.json.is_empty() {
        return Some((kind, None));
    }
    let value: Value = serde_json::from_slice(&e.json).ok()?;
    let hash: Hash = e.hash.as_slice().try_into().ok()?;
    Some((
        kind,
        Some(Stored {
            hash,
            value: Arc::new(value),
        }),
    ))
}

impl EntityState {
    /// Loads every gateway's state from the database.
    pub async fn load(db: Store) -> Result<Self, StateError> {
        let mut gateways: HashMap<String, GatewayEntities> = HashMap::new();
        for (gw, tag, key, hash, json) in db.load_entities().await? {
            let (Some(kind), Ok(hash), Ok(value)) = (
                kind_from_tag(tag),
                <Hash>::try_from(hash.as_slice()),
                serde_json::from_slice::<Value>(&json),
            ) else {
                tracing::warn!(gateway_id = %gw, key = %key, "skipping an unreadable stored entity");
                continue;
            };
            gateways.entry(gw).or_default().map(kind).insert(
                key,
                Stored {
                    hash,
                    value: Arc::new(value),
                },
            );
        }
        let (changed, _) = watch::channel(0);
        Ok(Self {
            db,
            gateways: RwLock::new(gateways),
            changed,
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
                Some((kind, Some(stored))) => {
                    rows.push((kind_tag(kind), e.key.clone(), e.hash.clone(), Arc::new(e.json.clone())));
                    fresh.map(kind).insert(e.key.clone(), stored);
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
        self.gateways
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gateway_id.to_owned(), fresh);
        tracing::info!(gateway_id, entities = entities.len(), "applied a state snapshot");
        self.bump();
        Ok(Some(new_digest))
    }

    /// Applies upserts and deletions; returns the new digest.
    pub async fn apply_delta(&self, gateway_id: &str, delta: Delta) -> Result<Hash, StateError> {
        let mut upserts = vec![];
        let mut deletes = vec![];
        let mut decoded = vec![];
        for e in &delta.entities {
            match decode(e) {
                Some((kind, Some(stored))) => {
                    upserts.push((kind_tag(kind), e.key.clone(), e.hash.clone(), Arc::new(e.json.clone())));
                    decoded.push((kind, e.key.clone(), Some(stored)));
                }
                Some((kind, None)) => {
                    deletes.push((kind_tag(kind), e.key.clone()));
                    decoded.push((kind, e.key.clone(), None));
                }
                None => tracing::warn!(gateway_id, key = %e.key, "skipping an undecodable entity in a delta"),
            }
        }
        self.db
            .write_entities(gateway_id.to_owned(), false, upserts, deletes)
            .await?;
        let new_digest = {
            let mut g = self.gateways.write().unwrap_or_else(|e| e.into_inner());
            let entry = g.entry(gateway_id.to_owned()).or_default();
            for (kind, key, stored) in decoded {
                match stored {
                    Some(s) => entry.map(kind).insert(key, s),
                    None => entry.map(kind).remove(&key),
                };
            }
            entry.digest()
        };
        self.bump();
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
