//! The relay's source in the daemon: the Argo CD view's applications and clusters, each
//! serialized once when it changes (not on every relay pass), fed by the view's change events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::engine::{Dirty, Source};
use super::{Entity, EntityKey, Kind};
use crate::argocd::model::{AppKey, Application, Cluster};
use crate::argocd::view::{Snapshot, ViewEvent, ViewHandle};

/// How long readiness waits for the cluster list once applications are listed. Clusters need
/// an unscoped token, which a project-token-only install may not have; without this bound such
/// an install would never relay anything.
const CLUSTER_GRACE: Duration = Duration::from_secs(5);

/// The key an application travels under.
pub fn app_key(key: &AppKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

/// The entity of an application: its model JSON (camelCase, the hub API's item shape).
pub fn app_entity(app: &Application) -> Entity {
    let value = serde_json::to_value(app).unwrap_or_default();
    Entity::from_value(Kind::Application, app_key(&app.key()), &value)
}

/// The entity of a cluster.
pub fn cluster_entity(cluster: &Cluster) -> Entity {
    let value = serde_json::to_value(cluster).unwrap_or_default();
    Entity::from_value(Kind::Cluster, cluster.server.clone(), &value)
}

/// The view as a relay source.
#[derive(Default)]
pub struct ViewSource {
    entities: RwLock<HashMap<EntityKey, Entity>>,
    ready: AtomicBool,
}

impl Source for ViewSource {
    fn entities(&self) -> Vec<Entity> {
        self.entities
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn get(&self, kind: Kind, key: &str) -> Option<Entity> {
        self.entities.read().ok()?.get(&(kind, key.to_owned())).cloned()
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl ViewSource {
    /// Starts following `view`, marking what changes in `dirty`, until `cancel`.
    pub fn spawn(view: ViewHandle, dirty: Arc<Dirty>, cancel: CancellationToken) -> Arc<Self> {
        let source = Arc::new(Self::default());
        let feed = source.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = feed.follow(view, dirty) => {}
            }
        });
        source
    }

    fn replace_all(&self, snap: Snapshot) {
        let mut map = HashMap::with_capacity(snap.apps.len() + snap.clusters.len());
        for app in snap.apps.values() {
            let e = app_entity(app);
            map.insert((e.kind, e.key.clone()), e);
        }
        for cluster in snap.clusters.values() {
            let e = cluster_entity(cluster);
            map.insert((e.kind, e.key.clone()), e);
        }
        if let Ok(mut m) = self.entities.write() {
            *m = map;
        }
    }

    fn upsert(&self, e: Entity, dirty: &Dirty) {
        let key = (e.kind, e.key.clone());
        if let Ok(mut m) = self.entities.write() {
            m.insert(key.clone(), e);
        }
        dirty.mark(key.0, key.1);
    }

    fn remove(&self, kind: Kind, key: String, dirty: &Dirty) {
        if let Ok(mut m) = self.entities.write() {
            m.remove(&(kind, key.clone()));
        }
        dirty.mark(kind, key);
    }

    async fn follow(&self, view: ViewHandle, dirty: Arc<Dirty>) {
        view.wait_synced().await;
        let mut status = view.status_watch();
        let clusters = async {
            let _ = status.wait_for(|s| s.clusters_synced).await;
        };
        if tokio::time::timeout(CLUSTER_GRACE, clusters).await.is_err() {
            tracing::info!("the cluster list is not available yet; relaying applications without waiting for it");
        }
        loop {
            // Subscribing and copying the state at one instant means no event falls between.
            let (snap, mut events) = view.snapshot_and_subscribe();
            self.replace_all(snap);
            // Whatever changed while the feed was not listening (startup, lag) is found by
            // comparing every key, including ones the relay sent before and that are gone now.
            dirty.mark_all();
            if !self.ready.swap(true, Ordering::AcqRel) {
                tracing::info!("Argo CD state loaded; relaying it to the hub");
                dirty.wake();
            }
            loop {
                match events.recv().await {
                    Ok(ViewEvent::AppUpsert(app)) => self.upsert(app_entity(&app), &dirty),
                    Ok(ViewEvent::AppDelete(key)) => self.remove(Kind::Application, app_key(&key), &dirty),
                    Ok(ViewEvent::ClusterUpsert(c)) => self.upsert(cluster_entity(&c), &dirty),
                    Ok(ViewEvent::ClusterDelete(server)) => self.remove(Kind::Cluster, server, &dirty),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "the relay fell behind the Argo CD view; comparing everything"
                        );
                        break;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }
}
