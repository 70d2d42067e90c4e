//! The relay's source in the daemon: the Argo CD view's applications and clusters, fed by the
//! view's change events. It keeps each entity's significance hash (computed once per change)
//! and shares the view's objects; the JSON is made only when the relay sends an entity, so a
//! large Argo CD is not held in memory twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::engine::{Dirty, Source};
use super::{Entity, EntityKey, Hash, Kind, model_hash};
use crate::argocd::model::{AppKey, Application, ApplicationSet, Cluster, Project};
use crate::argocd::view::{Snapshot, ViewEvent, ViewHandle};
use crate::shutdown::Tree;
use crate::wire::item::TooLarge;

/// How long readiness waits for the cluster list once applications are listed. Clusters need
/// an unscoped token, which a project-token-only install may not have; without this bound such
/// an install would never relay anything.
const CLUSTER_GRACE: Duration = Duration::from_secs(5);
/// How long readiness waits for the complete objects of applications an Argo CD 3.x list
/// showed without per-resource health. Relaying before they arrive would make a restarted
/// gateway's state differ from the hub's (a needless snapshot); an object that never arrives
/// must not hold the relay back for good.
const COMPLETE_GRACE: Duration = Duration::from_secs(10);

/// The key an application travels under.
pub fn app_key(key: &AppKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

/// The entity of an application: its model JSON (camelCase, the hub API's item shape).
pub fn app_entity(app: &Application) -> Entity {
    let value = serde_json::to_value(app).unwrap_or_default();
    Entity::from_value(Kind::Application, app_key(&app.key()), &value)
}

/// A view object and its significance hash.
#[derive(Clone)]
enum Stored {
    App(Arc<Application>, Hash),
    Cluster(Arc<Cluster>, Hash),
    AppSet(Arc<ApplicationSet>, Hash),
    Project(Arc<Project>, Hash),
}

impl Stored {
    fn app(app: Arc<Application>) -> (EntityKey, Self) {
        let hash = model_hash(Kind::Application, app.as_ref());
        ((Kind::Application, app_key(&app.key())), Self::App(app, hash))
    }

    fn cluster(cluster: Arc<Cluster>) -> (EntityKey, Self) {
        let hash = model_hash(Kind::Cluster, cluster.as_ref());
        ((Kind::Cluster, cluster.server.clone()), Self::Cluster(cluster, hash))
    }

    fn appset(appset: Arc<ApplicationSet>) -> (EntityKey, Self) {
        let hash = model_hash(Kind::ApplicationSet, appset.as_ref());
        let key = format!("{}/{}", appset.namespace, appset.name);
        ((Kind::ApplicationSet, key), Self::AppSet(appset, hash))
    }

    fn project(project: Arc<Project>) -> (EntityKey, Self) {
        let hash = model_hash(Kind::Project, project.as_ref());
        ((Kind::Project, project.name.clone()), Self::Project(project, hash))
    }

    /// The entity as sent: the JSON is made now, the hash was made when the object changed.
    /// An object whose JSON exceeds `max_bytes` travels as a stub marked `tooLarge` (with the
    /// real hash, so digests still match): a message the hub would refuse is never sent, and
    /// one huge application cannot end every session.
    fn entity(&self, key: &str, max_bytes: usize) -> Entity {
        let (kind, json, hash) = match self {
            Self::App(a, h) => (Kind::Application, serde_json::to_vec(a.as_ref()), *h),
            Self::Cluster(c, h) => (Kind::Cluster, serde_json::to_vec(c.as_ref()), *h),
            Self::AppSet(a, h) => (Kind::ApplicationSet, serde_json::to_vec(a.as_ref()), *h),
            Self::Project(p, h) => (Kind::Project, serde_json::to_vec(p.as_ref()), *h),
        };
        let mut json = json.unwrap_or_default();
        if json.len() > max_bytes {
            let too_large = Some(TooLarge {
                bytes: json.len() as u64,
                limit: max_bytes as u64,
            });
            tracing::warn!(
                key,
                bytes = json.len(),
                limit = max_bytes,
                "an Argo CD object is too large to relay; the hub gets a stub (flag --max-entity-bytes, Helm gateway.hub.maxEntityBytes)"
            );
            let stub = match self {
                Self::App(a, _) => serde_json::to_vec(&Application {
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                    project: a.project.clone(),
                    too_large,
                    ..Application::default()
                }),
                Self::Cluster(c, _) => serde_json::to_vec(&Cluster {
                    server: c.server.clone(),
                    name: c.name.clone(),
                    too_large,
                    ..Cluster::default()
                }),
                Self::AppSet(a, _) => serde_json::to_vec(&ApplicationSet {
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                    project: a.project.clone(),
                    too_large,
                    ..ApplicationSet::default()
                }),
                Self::Project(p, _) => serde_json::to_vec(&Project {
                    name: p.name.clone(),
                    too_large,
                    ..Project::default()
                }),
            };
            json = stub.unwrap_or_default();
        }
        Entity {
            kind,
            key: key.to_owned(),
            hash,
            json: Arc::new(json),
        }
    }
}

/// The view as a relay source.
pub struct ViewSource {
    entities: RwLock<HashMap<EntityKey, Stored>>,
    ready: AtomicBool,
    max_entity_bytes: usize,
}

impl Source for ViewSource {
    fn entities(&self) -> Vec<Entity> {
        self.entities
            .read()
            .map(|m| {
                m.iter()
                    .map(|((_, key), s)| s.entity(key, self.max_entity_bytes))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn get(&self, kind: Kind, key: &str) -> Option<Entity> {
        let key = (kind, key.to_owned());
        self.entities
            .read()
            .ok()?
            .get(&key)
            .map(|s| s.entity(&key.1, self.max_entity_bytes))
    }

    fn keys(&self) -> Vec<EntityKey> {
        self.entities
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn hashes(&self) -> Vec<(EntityKey, Hash)> {
        self.entities
            .read()
            .map(|m| {
                m.iter()
                    .map(|(k, s)| {
                        let hash = match s {
                            Stored::App(_, h)
                            | Stored::Cluster(_, h)
                            | Stored::AppSet(_, h)
                            | Stored::Project(_, h) => *h,
                        };
                        (k.clone(), hash)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl ViewSource {
    /// Starts following `view`, marking what changes in `dirty`, as a critical task of `tree`
    /// (it runs until the tree drains; the view going away ends it early, and the process).
    pub fn spawn(view: ViewHandle, dirty: Arc<Dirty>, tree: &Tree, max_entity_bytes: usize) -> Arc<Self> {
        let source = Arc::new(Self {
            entities: RwLock::default(),
            ready: AtomicBool::default(),
            max_entity_bytes,
        });
        let feed = source.clone();
        let stop = tree.token().clone();
        tree.spawn_critical("relay source", async move {
            tokio::select! {
                _ = stop.cancelled() => Ok(()),
                _ = feed.follow(view, dirty) => Err("the Argo CD view's change feed closed"),
            }
        });
        source
    }

    fn replace_all(&self, snap: Snapshot) {
        let mut map = HashMap::with_capacity(snap.apps.len() + snap.clusters.len() + snap.appsets.len());
        map.extend(snap.apps.into_values().map(Stored::app));
        map.extend(snap.clusters.into_values().map(Stored::cluster));
        map.extend(snap.appsets.into_values().map(Stored::appset));
        map.extend(snap.projects.into_values().map(Stored::project));
        if let Ok(mut m) = self.entities.write() {
            *m = map;
        }
    }

    fn upsert(&self, (key, stored): (EntityKey, Stored), dirty: &Dirty) {
        if let Ok(mut m) = self.entities.write() {
            m.insert(key.clone(), stored);
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
            let _ = status
                .wait_for(|s| s.clusters_synced && s.appsets_synced && s.projects_synced)
                .await;
        };
        if tokio::time::timeout(CLUSTER_GRACE, clusters).await.is_err() {
            tracing::info!(
                "the cluster, ApplicationSet or project list is not available yet; relaying applications without waiting for it"
            );
        }
        let complete = async {
            while view.incomplete_applications() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(COMPLETE_GRACE, complete).await.is_err() {
            tracing::info!(
                incomplete = view.incomplete_applications(),
                "some applications' resource health has not arrived yet; relaying without waiting longer"
            );
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
                    Ok(ViewEvent::AppUpsert(app)) => self.upsert(Stored::app(app), &dirty),
                    Ok(ViewEvent::AppDelete(key)) => self.remove(Kind::Application, app_key(&key), &dirty),
                    Ok(ViewEvent::ClusterUpsert(c)) => self.upsert(Stored::cluster(c), &dirty),
                    Ok(ViewEvent::ClusterDelete(server)) => self.remove(Kind::Cluster, server, &dirty),
                    Ok(ViewEvent::AppSetUpsert(a)) => self.upsert(Stored::appset(a), &dirty),
                    Ok(ViewEvent::AppSetDelete(key)) => self.remove(Kind::ApplicationSet, app_key(&key), &dirty),
                    Ok(ViewEvent::ProjectUpsert(p)) => self.upsert(Stored::project(p), &dirty),
                    Ok(ViewEvent::ProjectDelete(name)) => self.remove(Kind::Project, name, &dirty),
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

#[cfg(test)]
mod hash_tests {
    use super::*;

    /// The hash made when a change reaches the view is the one the wire has always carried
    /// (the hub compares digests made of it across versions).
    #[test]
    fn the_view_hash_equals_the_entity_hash() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/argocd");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let Ok(decoded) = crate::argocd::model::decode_application(&text) else {
                continue;
            };
            let app = Arc::new(decoded.app);
            let entity = app_entity(&app);
            let (key, stored) = Stored::app(app);
            let Stored::App(_, hash) = stored else {
                panic!("an application is stored as one")
            };
            assert_eq!(
                (key, hash),
                ((entity.kind, entity.key), entity.hash),
                "{}",
                path.display()
            );
            checked += 1;
        }
        assert!(checked >= 5, "only {checked} fixtures were applications");
    }
}
