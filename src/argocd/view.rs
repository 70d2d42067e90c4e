//! The converging view: Argo CD's applications and clusters kept in memory as the compact model,
//! plus a stream of the changes.
//!
//! Shape:
//! - [`View::spawn`] starts one application loop per token scope (one for an account token or a
//!   login, one per project token file; the token directory is re-read every few seconds and
//!   loops start and stop with its files), one cluster loop, one ApplicationSet loop (list and
//!   watch where Argo CD has the stream, 3.4 and later, else polled; an Argo CD without the API
//!   is detected once and skipped) and one project loop (listed with the clusters, each sync
//!   window's activity decided at every list), all stopped by the given `CancellationToken`.
//! - An application loop lists (`GET /api/v1/applications`), then watches from the list's
//!   `resourceVersion`; it re-lists after any watch failure or end and every `resync_interval`
//!   (Argo CD drops watch events under load). With `watch = false` it lists every
//!   `poll_interval`. The cluster loop lists every `cluster_interval`.
//! - [`ViewHandle`] exposes the state (`BTreeMap<AppKey, Arc<Application>>`, clusters by server
//!   URL), a broadcast of [`ViewEvent`]s, "synced at least once" and a [`ViewStatus`] for
//!   readiness. Events are sent only when the compact model changed, so a re-list of unchanged
//!   state emits nothing. [`ViewHandle::snapshot_and_subscribe`] returns a snapshot and a receiver
//!   taken atomically, so no change falls between them; a receiver that lags behind (broadcast
//!   `Lagged`) must take a new snapshot.
//! - Argo CD 3.x lists omit per-resource health (`status.resourceHealthSource: appTree`); the
//!   view keeps the health it learned for such list items instead of erasing it. While watching
//!   it opens the watch without a resourceVersion so Argo CD replays every app with health
//!   (twice the data per resync on 3.x, but per-resource health converges too; a replayed app
//!   whose bytes are those the view last decoded from the watch is not decoded again); when
//!   polling it fetches, with bounded concurrency, the apps whose resourceVersion changed since
//!   their last complete object.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{AppQuery, AppRef, Client, HeldCheck, ListSink, WatchItem};
use super::error::ArgoCdError;
use super::model::{
    AppKey, Application, ApplicationSet, Cluster, DecodedApp, DecodedAppSet, ListItem, ObjectId, Project, Skipped,
    WatchEventType, quick_app_key,
};
use crate::util::Backoff;

/// Parallel Gets when polling Argo CD 3.x for per-resource health.
const POLL_FETCH_CONCURRENCY: usize = 8;

/// Tuning of the view's loops; what to read and how often comes from the client's
/// [`ArgoCdConfig`].
#[derive(Clone, Debug)]
pub struct ViewOptions {
    /// First retry delay ceiling after a failure.
    pub retry_base: Duration,
    /// Largest retry delay ceiling.
    pub retry_max: Duration,
    /// Capacity of the change broadcast.
    pub channel_capacity: usize,
}

impl Default for ViewOptions {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            channel_capacity: 16 * 1024,
        }
    }
}

/// A change to the view.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewEvent {
    /// An application appeared or changed.
    AppUpsert(Arc<Application>),
    /// An application disappeared.
    AppDelete(AppKey),
    /// A cluster appeared or changed.
    ClusterUpsert(Arc<Cluster>),
    /// A cluster disappeared (by server URL).
    ClusterDelete(String),
    /// An ApplicationSet appeared or changed.
    AppSetUpsert(Arc<ApplicationSet>),
    /// An ApplicationSet disappeared.
    AppSetDelete(AppKey),
    /// A project appeared or changed.
    ProjectUpsert(Arc<Project>),
    /// A project disappeared (by name).
    ProjectDelete(String),
}

/// Health of the view, for readiness and the health check.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ViewStatus {
    /// Every application scope has listed successfully at least once.
    pub apps_synced: bool,
    /// The cluster list succeeded at least once.
    pub clusters_synced: bool,
    /// ApplicationSets were listed once, or will not be (no API, no unscoped token).
    pub appsets_synced: bool,
    /// Projects were listed once, or will not be (no unscoped token).
    pub projects_synced: bool,
    /// Why ApplicationSets are not relayed, when they are not (an Argo CD without the API, no
    /// unscoped token); polling instead of watching is said here too.
    pub appsets_note: Option<String>,
    /// Loops whose most recent attempt failed, with that failure.
    pub failing: BTreeMap<String, ArgoCdError>,
    /// The most recent failure of any loop.
    pub last_error: Option<ArgoCdError>,
    /// When a list last succeeded.
    pub last_success: Option<jiff::Timestamp>,
    /// What the last complete application list carried.
    pub last_app_list: ListFigures,
}

/// What one application list carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListFigures {
    /// Items in the list.
    pub items: usize,
    /// Items byte for byte as the view last decoded them, so not decoded again.
    pub unchanged: usize,
}

impl ViewStatus {
    /// True when no loop is currently failing.
    pub fn is_healthy(&self) -> bool {
        self.failing.is_empty()
    }
}

/// A consistent copy of the view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Applications by namespace/name.
    pub apps: BTreeMap<AppKey, Arc<Application>>,
    /// Clusters by server URL.
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// ApplicationSets by namespace/name.
    pub appsets: BTreeMap<AppKey, Arc<ApplicationSet>>,
    /// Projects by name.
    pub projects: BTreeMap<String, Arc<Project>>,
}

/// An ApplicationSet and the resourceVersion of the object applied last.
struct AppSetEntry {
    appset: Arc<ApplicationSet>,
    rv: Option<u64>,
}

struct Entry {
    app: Arc<Application>,
    scope: usize,
    /// resourceVersion of the last complete object applied (with per-resource health); a 3.x
    /// list item with another resourceVersion changed in ways the list cannot show.
    full_rv: String,
    /// The object applied last was complete (not a 3.x list item awaiting its full object).
    complete: bool,
    /// resourceVersion of the object applied last, numerically: an event older than it is
    /// stale (it was already reflected by a list) and is not applied.
    rv: Option<u64>,
    /// The list pass that last carried it: after a list, its scope's entries from older passes
    /// are gone from Argo CD.
    listed: u64,
    /// Hash of the raw list item this entry was last decoded from, while nothing newer was
    /// applied (0: none). A later list item with the same bytes is the same object at the same
    /// resourceVersion, so it is not decoded again: an unchanged re-list costs a hash and a
    /// partial parse per item instead of a full decode.
    raw: u64,
    /// That list item came without per-resource health (Argo CD 3.x).
    raw_health_in_tree: bool,
    /// Hash of the application JSON of the watch event this entry was last decoded from, while
    /// nothing newer was applied (0: none): Argo CD 3.x replays every application after each
    /// list, and a replay with the same bytes is not decoded again.
    watched: u64,
}

/// A Kubernetes resourceVersion as a number (they are etcd revisions in practice); `None` when
/// it is not one, and then it orders nothing.
fn rv_number(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

#[derive(Default)]
struct State {
    apps: BTreeMap<AppKey, Entry>,
    /// Per scope, the resourceVersion of its last list: an event for an application the list
    /// did not have is applied only if it is newer.
    list_rv: std::collections::HashMap<usize, u64>,
    clusters: BTreeMap<String, Arc<Cluster>>,
    scopes_synced: HashSet<usize>,
    appsets: BTreeMap<AppKey, AppSetEntry>,
    /// resourceVersion of the last ApplicationSet list.
    appset_list_rv: Option<u64>,
    projects: BTreeMap<String, Arc<Project>>,
    /// The last list pass started.
    list_pass: u64,
}

/// How often one kind of failure of one loop is logged at most.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// When each kind of failure of each loop was last logged, and how often it happened since.
type FailureLog = std::collections::HashMap<(String, std::mem::Discriminant<ArgoCdError>), (Instant, u64)>;

struct Shared {
    logged: std::sync::Mutex<FailureLog>,
    state: RwLock<State>,
    events: broadcast::Sender<ViewEvent>,
    status: watch::Sender<ViewStatus>,
    scope_count: RwLock<usize>,
    filter: Filter,
    /// Keys for [`Entry::raw`] and [`Entry::watched`], random per process so that nobody can
    /// craft an object whose bytes hash like another version's.
    raw_hasher: std::hash::RandomState,
    /// Watch events not decoded because the view held their application byte for byte.
    watch_held: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Debug)]
struct Filter {
    projects: Vec<String>,
    app_namespaces: Vec<String>,
}

impl Filter {
    fn admits(&self, app: &Application, scope: Option<&str>) -> bool {
        self.admits_parts(&app.project, &app.namespace, scope)
    }

    fn admits_id(&self, id: &ObjectId, scope: Option<&str>) -> bool {
        self.admits_parts(&id.project, &id.namespace, scope)
    }

    fn admits_parts(&self, project: &str, namespace: &str, scope: Option<&str>) -> bool {
        (self.projects.is_empty() || self.projects.iter().any(|p| p == project))
            && (self.app_namespaces.is_empty() || self.app_namespaces.iter().any(|n| n == namespace))
            && scope.is_none_or(|s| s == project)
    }
}

/// Starts the view's loops.
pub struct View;

/// Access to a running view; cheap to clone.
#[derive(Clone)]
pub struct ViewHandle {
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl std::fmt::Debug for ViewHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewHandle").finish_non_exhaustive()
    }
}

impl View {
    /// Spawns the loops on the current runtime; they stop when `cancel` is cancelled.
    pub fn spawn(client: Client, options: ViewOptions, cancel: CancellationToken) -> ViewHandle {
        let (events, _) = broadcast::channel(options.channel_capacity.max(16));
        let (status, _) = watch::channel(ViewStatus::default());
        let shared = Arc::new(Shared {
            logged: Default::default(),
            state: RwLock::new(State::default()),
            events,
            status,
            scope_count: RwLock::new(usize::MAX),
            filter: Filter {
                projects: client.config().projects.clone(),
                app_namespaces: client.config().app_namespaces.clone(),
            },
            raw_hasher: std::hash::RandomState::new(),
            watch_held: Default::default(),
        });
        let tracker = TaskTracker::new();
        {
            let (shared, client, options, cancel, t2) = (
                shared.clone(),
                client.clone(),
                options.clone(),
                cancel.clone(),
                tracker.clone(),
            );
            tracker.spawn(async move { start_app_loops(shared, client, options, cancel, t2).await });
        }
        tracker.spawn(cluster_loop(
            shared.clone(),
            client.clone(),
            options.clone(),
            cancel.clone(),
        ));
        tracker.spawn(appset_loop(
            shared.clone(),
            client.clone(),
            options.clone(),
            cancel.clone(),
        ));
        tracker.spawn(project_loop(shared.clone(), client, options, cancel));
        tracker.close();
        ViewHandle { shared, tracker }
    }
}

impl ViewHandle {
    /// All applications.
    pub fn applications(&self) -> BTreeMap<AppKey, Arc<Application>> {
        self.shared
            .read()
            .apps
            .iter()
            .map(|(k, e)| (k.clone(), e.app.clone()))
            .collect()
    }

    /// One application.
    pub fn application(&self, key: &AppKey) -> Option<Arc<Application>> {
        self.shared.read().apps.get(key).map(|e| e.app.clone())
    }

    /// Number of applications.
    pub fn application_count(&self) -> usize {
        self.shared.read().apps.len()
    }

    /// Number of applications whose latest version could not be read.
    pub fn undecodable_applications(&self) -> usize {
        self.shared
            .read()
            .apps
            .values()
            .filter(|e| e.app.undecodable.is_some())
            .count()
    }

    /// All clusters by server URL.
    pub fn clusters(&self) -> BTreeMap<String, Arc<Cluster>> {
        self.shared.read().clusters.clone()
    }

    /// All ApplicationSets.
    pub fn appsets(&self) -> BTreeMap<AppKey, Arc<ApplicationSet>> {
        self.shared
            .read()
            .appsets
            .iter()
            .map(|(k, e)| (k.clone(), e.appset.clone()))
            .collect()
    }

    /// All projects.
    pub fn projects(&self) -> BTreeMap<String, Arc<Project>> {
        self.shared.read().projects.clone()
    }

    /// A receiver of subsequent changes.
    pub fn subscribe(&self) -> broadcast::Receiver<ViewEvent> {
        self.shared.events.subscribe()
    }

    /// The current state and a receiver of every change after it, taken atomically.
    pub fn snapshot_and_subscribe(&self) -> (Snapshot, broadcast::Receiver<ViewEvent>) {
        // Changes are applied and broadcast under the write lock, so holding the read lock here
        // means no change can fall between the copy and the subscription.
        let state = self.shared.read();
        let rx = self.shared.events.subscribe();
        let snap = Snapshot {
            apps: state.apps.iter().map(|(k, e)| (k.clone(), e.app.clone())).collect(),
            clusters: state.clusters.clone(),
            appsets: state
                .appsets
                .iter()
                .map(|(k, e)| (k.clone(), e.appset.clone()))
                .collect(),
            projects: state.projects.clone(),
        };
        (snap, rx)
    }

    /// Applications whose last object came from a 3.x list (no per-resource health) and whose
    /// complete object has not arrived yet.
    pub fn incomplete_applications(&self) -> usize {
        self.shared
            .state
            .read()
            .map(|st| st.apps.values().filter(|e| !e.complete).count())
            .unwrap_or(0)
    }

    /// Whether every application scope has listed successfully at least once.
    pub fn has_synced(&self) -> bool {
        self.shared.status.borrow().apps_synced
    }

    /// Waits until the applications have been listed once.
    pub async fn wait_synced(&self) {
        let mut rx = self.shared.status.subscribe();
        let _ = rx.wait_for(|s| s.apps_synced).await;
    }

    /// Application watch events not decoded since the view started, because it held their
    /// application byte for byte (Argo CD 3.x replays every application after each list).
    pub fn watch_events_held(&self) -> u64 {
        self.shared.watch_held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current status.
    pub fn status(&self) -> ViewStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn status_watch(&self) -> watch::Receiver<ViewStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until every loop has stopped (after cancellation).
    pub async fn stopped(&self) {
        self.tracker.wait().await;
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, ev: ViewEvent) {
        crate::util::heap::churned();
        // No receiver is fine: the state is still updated.
        let _ = self.events.send(ev);
    }

    /// Upserts under the lock, emitting an event only when the compact model changed. Returns
    /// true when the item came from a list without per-resource health and changed since the
    /// last complete object, i.e. its health is unknown.
    fn upsert_locked(&self, st: &mut State, scope: usize, decoded: DecodedApp, from_list: bool) -> bool {
        let mut app = decoded.app;
        let key = app.key();
        let partial = from_list && decoded.resource_health_in_tree;
        let old = st.apps.get(&key);
        if partial && let Some(old) = old {
            for r in app.resources.iter_mut().filter(|r| r.health.is_none()) {
                if let Some(o) = old.app.resources.iter().find(|o| o.same_object(r)) {
                    r.health = o.health.clone();
                }
            }
        }
        let full_rv = if partial {
            old.map(|e| e.full_rv.clone()).unwrap_or_default()
        } else {
            decoded.resource_version.clone()
        };
        let stale = partial && full_rv != decoded.resource_version;
        let rv = rv_number(&decoded.resource_version);
        match st.apps.get_mut(&key) {
            Some(e) if *e.app == app => {
                if rv.is_none() || e.rv != rv {
                    // Another version of the object: the last list item's and watch event's
                    // bytes are not it.
                    e.raw = 0;
                    e.watched = 0;
                }
                e.scope = scope;
                e.full_rv = full_rv;
                e.complete = !stale;
                e.rv = rv;
            }
            _ => {
                let app = Arc::new(app);
                st.apps.insert(
                    key,
                    Entry {
                        app: app.clone(),
                        scope,
                        full_rv,
                        complete: !stale,
                        rv,
                        listed: 0,
                        raw: 0,
                        raw_health_in_tree: false,
                        watched: 0,
                    },
                );
                self.emit(ViewEvent::AppUpsert(app));
            }
        }
        stale
    }

    fn delete_locked(&self, st: &mut State, scope: usize, key: &AppKey) {
        if st.apps.get(key).is_some_and(|e| e.scope == scope) {
            st.apps.remove(key);
            self.emit(ViewEvent::AppDelete(key.clone()));
        }
    }

    /// Starts a list pass of `scope`: items are applied as they arrive ([`ListPass`]), and
    /// [`Shared::finish_list`] removes what the list no longer has.
    fn begin_list(self: &Arc<Self>, scope: usize, scope_name: Option<String>) -> ListPass {
        let pass = {
            let mut st = self.write();
            st.list_pass += 1;
            st.list_pass
        };
        ListPass {
            shared: self.clone(),
            scope,
            scope_name,
            pass,
            stale: Vec::new(),
            unidentified: 0,
            health_in_tree: false,
            listed: 0,
            unchanged: 0,
            raw: 0,
        }
    }

    /// Ends a list pass whose list was read whole: applications of the scope it did not carry
    /// are removed, unless an object could not even be identified (known state is never dropped
    /// because something could not be read). Returns the apps whose per-resource health the
    /// list could not show (Argo CD 3.x) and that changed since their last complete object.
    fn finish_list(&self, pass: ListPass, list_rv: &str) -> Vec<AppRef> {
        // A list decodes every changed item and frees the text it read.
        crate::util::heap::churned();
        let mut st = self.write();
        match rv_number(list_rv) {
            Some(rv) => st.list_rv.insert(pass.scope, rv),
            None => st.list_rv.remove(&pass.scope),
        };
        if pass.unidentified > 0 {
            tracing::warn!(
                unidentified = pass.unidentified,
                "Argo CD objects that could not even be identified; no application is removed on this list"
            );
        } else {
            let gone: Vec<AppKey> = st
                .apps
                .iter()
                .filter(|(_, e)| e.scope == pass.scope && e.listed != pass.pass)
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                self.delete_locked(&mut st, pass.scope, &k);
            }
        }
        st.scopes_synced.insert(pass.scope);
        let all = st.scopes_synced.len() >= *self.scope_count.read().unwrap_or_else(|p| p.into_inner());
        drop(st);
        if all {
            self.status
                .send_if_modified(|s| !std::mem::replace(&mut s.apps_synced, true));
        }
        pass.stale
    }

    /// Keeps an application's last known state, marked with why its latest could not be read.
    fn mark_undecodable_locked(&self, st: &mut State, scope: usize, key: AppKey, project: &str, reason: String) {
        match st.apps.get_mut(&key) {
            Some(e) if e.app.undecodable.as_deref() == Some(reason.as_str()) => {
                e.scope = scope;
                e.raw = 0;
                e.watched = 0;
            }
            Some(e) => {
                e.raw = 0;
                e.watched = 0;
                let mut app = (*e.app).clone();
                app.undecodable = Some(reason);
                let app = Arc::new(app);
                e.app = app.clone();
                e.scope = scope;
                self.emit(ViewEvent::AppUpsert(app));
            }
            None => {
                let app = Arc::new(Application {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    project: project.to_owned(),
                    undecodable: Some(reason),
                    ..Application::default()
                });
                st.apps.insert(
                    key,
                    Entry {
                        app: app.clone(),
                        scope,
                        full_rv: String::new(),
                        complete: true,
                        rv: None,
                        listed: 0,
                        raw: 0,
                        raw_health_in_tree: false,
                        watched: 0,
                    },
                );
                self.emit(ViewEvent::AppUpsert(app));
            }
        }
    }

    /// Applies a watch event, unless it is older than what the view holds: events that arrive
    /// on a watch opened before a list may already be reflected by it. `raw` is the hash of the
    /// event's application JSON (0: unknown), kept so that the same bytes are not decoded again.
    fn apply_watch(&self, scope: usize, scope_name: Option<&str>, kind: WatchEventType, d: DecodedApp, raw: u64) {
        let mut st = self.write();
        let key = d.app.key();
        if let Some(rv) = rv_number(&d.resource_version) {
            let older = match st.apps.get(&key) {
                Some(e) => e.rv.is_some_and(|held| rv < held),
                None => st.list_rv.get(&scope).is_some_and(|listed| rv <= *listed),
            };
            if older {
                return;
            }
        }
        if kind == WatchEventType::Deleted || !self.filter.admits(&d.app, scope_name) {
            self.delete_locked(&mut st, scope, &key);
        } else {
            self.upsert_locked(&mut st, scope, d, false);
            if let Some(e) = st.apps.get_mut(&key) {
                e.watched = raw;
            }
        }
    }

    /// The keyed hash of an object's raw JSON, as [`Entry::raw`] and [`Entry::watched`] keep it:
    /// never 0, which marks an entry without one.
    fn raw_hash(&self, raw: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.raw_hasher, raw) | 1
    }

    /// Whether this scope's entry for the application in `raw` was last decoded from a watch
    /// event with exactly these bytes: `None` if so (applying them again would change nothing),
    /// else their hash.
    fn held_from_watch(&self, scope: usize, raw: &[u8]) -> Option<u64> {
        let hash = self.raw_hash(raw);
        let Some(key) = quick_app_key(raw) else {
            return Some(hash);
        };
        let held = self
            .read()
            .apps
            .get(&key)
            .is_some_and(|e| e.scope == scope && e.watched == hash);
        if held {
            self.watch_held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        Some(hash)
    }

    /// Applies a complete object fetched with Get.
    fn apply_fetched(&self, scope: usize, scope_name: Option<&str>, d: DecodedApp) {
        if !self.filter.admits(&d.app, scope_name) {
            return;
        }
        let mut st = self.write();
        // Only refresh an app the list still holds: a concurrent delete must not be undone.
        if st.apps.get(&d.app.key()).is_some_and(|e| e.scope == scope) {
            self.upsert_locked(&mut st, scope, d, false);
        }
    }

    fn apply_clusters(&self, items: Vec<Cluster>, skipped: Vec<Skipped>) {
        let mut st = self.write();
        let mut seen = HashSet::with_capacity(items.len() + skipped.len());
        let unidentified = skipped.iter().any(|s| s.id.is_none());
        for Skipped { id, error } in skipped {
            let Some(id) = id else { continue };
            let reason = error.to_string();
            seen.insert(id.name.clone());
            let marked = match st.clusters.get(&id.name) {
                Some(c) if c.undecodable.as_deref() == Some(reason.as_str()) => continue,
                Some(c) => Cluster {
                    undecodable: Some(reason),
                    ..(**c).clone()
                },
                None => Cluster {
                    server: id.name.clone(),
                    undecodable: Some(reason),
                    ..Cluster::default()
                },
            };
            let c = Arc::new(marked);
            st.clusters.insert(id.name, c.clone());
            self.emit(ViewEvent::ClusterUpsert(c));
        }
        for c in items {
            seen.insert(c.server.clone());
            if st.clusters.get(&c.server).is_some_and(|old| **old == c) {
                continue;
            }
            let c = Arc::new(c);
            st.clusters.insert(c.server.clone(), c.clone());
            self.emit(ViewEvent::ClusterUpsert(c));
        }
        let gone: Vec<String> = if unidentified {
            vec![]
        } else {
            st.clusters.keys().filter(|k| !seen.contains(*k)).cloned().collect()
        };
        for k in gone {
            st.clusters.remove(&k);
            self.emit(ViewEvent::ClusterDelete(k));
        }
    }

    fn appset_admitted(&self, a: &ApplicationSet) -> bool {
        (self.filter.projects.is_empty() || self.filter.projects.contains(&a.project))
            && (self.filter.app_namespaces.is_empty() || self.filter.app_namespaces.contains(&a.namespace))
    }

    fn upsert_appset_locked(&self, st: &mut State, d: DecodedAppSet) {
        let key = AppKey::new(&d.appset.namespace, &d.appset.name);
        let rv = rv_number(&d.resource_version);
        match st.appsets.get_mut(&key) {
            Some(e) if *e.appset == d.appset => e.rv = rv,
            _ => {
                let a = Arc::new(d.appset);
                st.appsets.insert(key, AppSetEntry { appset: a.clone(), rv });
                self.emit(ViewEvent::AppSetUpsert(a));
            }
        }
    }

    /// Applies an ApplicationSet list: unreadable ones keep their last known state (marked),
    /// and nothing is removed when one could not even be identified.
    fn apply_appsets(&self, list_rv: &str, items: Vec<DecodedAppSet>, skipped: Vec<Skipped>) {
        let mut st = self.write();
        st.appset_list_rv = rv_number(list_rv);
        let mut seen = HashSet::new();
        let unidentified = skipped.iter().any(|s| s.id.is_none());
        for Skipped { id, error } in skipped {
            let Some(id) = id else { continue };
            let key = AppKey::new(&id.namespace, &id.name);
            let reason = error.to_string();
            seen.insert(key.clone());
            let marked = match st.appsets.get(&key) {
                Some(e) if e.appset.undecodable.as_deref() == Some(reason.as_str()) => continue,
                Some(e) => ApplicationSet {
                    undecodable: Some(reason),
                    ..(*e.appset).clone()
                },
                None => ApplicationSet {
                    namespace: id.namespace.clone(),
                    name: id.name.clone(),
                    undecodable: Some(reason),
                    ..ApplicationSet::default()
                },
            };
            let a = Arc::new(marked);
            st.appsets.insert(
                key,
                AppSetEntry {
                    appset: a.clone(),
                    rv: None,
                },
            );
            self.emit(ViewEvent::AppSetUpsert(a));
        }
        for d in items {
            if !self.appset_admitted(&d.appset) {
                continue;
            }
            seen.insert(AppKey::new(&d.appset.namespace, &d.appset.name));
            self.upsert_appset_locked(&mut st, d);
        }
        if !unidentified {
            let gone: Vec<AppKey> = st.appsets.keys().filter(|k| !seen.contains(*k)).cloned().collect();
            for k in gone {
                st.appsets.remove(&k);
                self.emit(ViewEvent::AppSetDelete(k));
            }
        }
    }

    /// Applies an ApplicationSet watch event unless the view already holds something newer.
    fn apply_appset_watch(&self, kind: WatchEventType, d: DecodedAppSet) {
        let mut st = self.write();
        let key = AppKey::new(&d.appset.namespace, &d.appset.name);
        if let Some(rv) = rv_number(&d.resource_version) {
            let older = match st.appsets.get(&key) {
                Some(e) => e.rv.is_some_and(|held| rv < held),
                None => st.appset_list_rv.is_some_and(|listed| rv <= listed),
            };
            if older {
                return;
            }
        }
        if kind == WatchEventType::Deleted || !self.appset_admitted(&d.appset) {
            if st.appsets.remove(&key).is_some() {
                self.emit(ViewEvent::AppSetDelete(key));
            }
        } else {
            self.upsert_appset_locked(&mut st, d);
        }
    }

    /// Applies a project list; each sync window's activity is decided now.
    fn apply_projects(&self, items: Vec<Project>, skipped: Vec<Skipped>) {
        let now = jiff::Timestamp::now();
        let mut st = self.write();
        let mut seen = HashSet::new();
        let unidentified = skipped.iter().any(|s| s.id.is_none());
        let wanted = |name: &str| self.filter.projects.is_empty() || self.filter.projects.iter().any(|p| p == name);
        for Skipped { id, error } in skipped {
            let Some(id) = id else { continue };
            if !wanted(&id.name) {
                continue;
            }
            let reason = error.to_string();
            seen.insert(id.name.clone());
            let marked = match st.projects.get(&id.name) {
                Some(p) if p.undecodable.as_deref() == Some(reason.as_str()) => continue,
                Some(p) => Project {
                    undecodable: Some(reason),
                    ..(**p).clone()
                },
                None => Project {
                    name: id.name.clone(),
                    undecodable: Some(reason),
                    ..Project::default()
                },
            };
            let p = Arc::new(marked);
            st.projects.insert(id.name, p.clone());
            self.emit(ViewEvent::ProjectUpsert(p));
        }
        for mut p in items {
            if !wanted(&p.name) {
                continue;
            }
            for w in &mut p.sync_windows {
                w.active = match super::syncwindow::active(&w.schedule, &w.duration, &w.time_zone, now) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::debug!(project = %p.name, error = %e, "cannot decide whether a sync window is active");
                        None
                    }
                };
            }
            seen.insert(p.name.clone());
            if st.projects.get(&p.name).is_some_and(|old| **old == p) {
                continue;
            }
            let p = Arc::new(p);
            st.projects.insert(p.name.clone(), p.clone());
            self.emit(ViewEvent::ProjectUpsert(p));
        }
        if !unidentified {
            let gone: Vec<String> = st.projects.keys().filter(|k| !seen.contains(*k)).cloned().collect();
            for k in gone {
                st.projects.remove(&k);
                self.emit(ViewEvent::ProjectDelete(k));
            }
        }
    }

    /// Forgets the applications a token scope listed (its token file is gone).
    fn drop_scope(&self, scope: usize) {
        let mut st = self.write();
        let keys: Vec<AppKey> = st
            .apps
            .iter()
            .filter(|(_, e)| e.scope == scope)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.delete_locked(&mut st, scope, &k);
        }
        st.list_rv.remove(&scope);
    }

    fn record_ok(&self, loop_name: &str) {
        self.status.send_modify(|s| {
            s.failing.remove(loop_name);
            s.last_success = Some(jiff::Timestamp::now());
        });
    }

    fn record_error(&self, loop_name: &str, e: &ArgoCdError) {
        // One useful line per failure, but a failure that repeats (Argo CD down, a token
        // revoked) is logged once a minute with how often it happened meanwhile.
        let key = (loop_name.to_owned(), std::mem::discriminant(e));
        let now = Instant::now();
        let repeated = {
            let mut seen = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            match seen.get_mut(&key) {
                Some((last, suppressed)) if now.duration_since(*last) < FAILURE_LOG_INTERVAL => {
                    *suppressed += 1;
                    None
                }
                Some((last, suppressed)) => {
                    *last = now;
                    Some(std::mem::take(suppressed))
                }
                None => {
                    seen.insert(key, (now, 0));
                    Some(0)
                }
            }
        };
        match repeated {
            Some(0) => tracing::warn!(view_loop = loop_name, error = %e, "Argo CD view loop failed; will retry"),
            Some(n) => {
                tracing::warn!(view_loop = loop_name, error = %e, repeated = n, "Argo CD view loop failed again; will retry")
            }
            None => tracing::debug!(view_loop = loop_name, error = %e, "Argo CD view loop failed; will retry"),
        }
        self.status.send_modify(|s| {
            s.failing.insert(loop_name.to_owned(), e.clone());
            s.last_error = Some(e.clone());
        });
    }
}

/// A list being applied as it arrives: each item is compared with the view (and applied when
/// it differs) as soon as it is decoded, so a re-list never holds a second copy of the state.
/// An item that could not be decoded keeps its application's last known state, marked
/// `undecodable` with the reason (a new one appears as a marked stub). Dropped without
/// [`Shared::finish_list`] (the list broke), it removes nothing.
struct ListPass {
    shared: Arc<Shared>,
    scope: usize,
    scope_name: Option<String>,
    pass: u64,
    stale: Vec<AppRef>,
    unidentified: usize,
    health_in_tree: bool,
    listed: usize,
    unchanged: usize,
    /// [`Entry::raw`] of the item offered last to [`ListSink::known`] (0: none).
    raw: u64,
}

impl ListSink<DecodedApp> for ListPass {
    fn known(&mut self, raw: &[u8]) -> bool {
        let shared = &self.shared;
        let hash = shared.raw_hash(raw);
        self.raw = hash;
        let Some(key) = quick_app_key(raw) else {
            return false;
        };
        let mut st = shared.write();
        let Some(e) = st.apps.get_mut(&key) else {
            return false;
        };
        if e.raw != hash || e.scope != self.scope {
            return false;
        }
        // What applying the item again would do: it was admitted, changes nothing, is listed.
        e.listed = self.pass;
        self.listed += 1;
        self.unchanged += 1;
        self.health_in_tree |= e.raw_health_in_tree;
        if !e.complete {
            let project = Some(e.app.project.clone());
            self.stale.push(AppRef { key, project });
        }
        true
    }

    fn item(&mut self, item: ListItem<DecodedApp>) {
        let shared = &self.shared;
        let scope_name = self.scope_name.as_deref();
        let raw = std::mem::take(&mut self.raw);
        match item {
            ListItem::Decoded(d) => {
                self.listed += 1;
                self.health_in_tree |= d.resource_health_in_tree;
                if !shared.filter.admits(&d.app, scope_name) {
                    return;
                }
                let key = d.app.key();
                let project = d.app.project.clone();
                let in_tree = d.resource_health_in_tree;
                let mut st = shared.write();
                let stale = shared.upsert_locked(&mut st, self.scope, d, true);
                if let Some(e) = st.apps.get_mut(&key) {
                    e.listed = self.pass;
                    e.raw = raw;
                    e.raw_health_in_tree = in_tree;
                }
                drop(st);
                if stale {
                    self.stale.push(AppRef {
                        key,
                        project: Some(project),
                    });
                }
            }
            ListItem::Skipped(Skipped { id, error }) => {
                let Some(id) = id else {
                    self.unidentified += 1;
                    return;
                };
                if !shared.filter.admits_id(&id, scope_name) {
                    return;
                }
                let key = AppKey::new(&id.namespace, &id.name);
                let mut st = shared.write();
                shared.mark_undecodable_locked(&mut st, self.scope, key.clone(), &id.project, error.to_string());
                if let Some(e) = st.apps.get_mut(&key) {
                    e.listed = self.pass;
                }
            }
        }
    }

    fn restart(&mut self) {
        // Items already applied are applied again, which changes nothing; what the pass learned
        // about the list starts over.
        self.stale.clear();
        self.unidentified = 0;
        self.health_in_tree = false;
        self.listed = 0;
        self.unchanged = 0;
        self.raw = 0;
    }
}

/// Sleeps, returning false if cancelled first.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// How often the project tokens directory is re-read for added or removed token files.
const SCOPE_RESCAN: Duration = Duration::from_secs(5);

async fn start_app_loops(
    shared: Arc<Shared>,
    client: Client,
    options: ViewOptions,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Backoff::new(options.retry_base, options.retry_max);
    let config = client.config().clone();
    let scopes = loop {
        match client.scopes(&config.projects) {
            Ok(s) => break s,
            Err(e) => {
                shared.record_error("applications", &e);
                if !pause(&cancel, backoff.next_delay()).await {
                    return;
                }
            }
        }
    };
    *shared.scope_count.write().unwrap_or_else(|p| p.into_inner()) = scopes.len();
    if scopes.is_empty() {
        tracing::warn!("no project token files in --argocd-project-tokens-dir; no applications will be listed");
        shared.status.send_modify(|s| s.apps_synced = true);
    }
    // Each scope's loop, by scope, with its index and its own stop.
    let mut running: std::collections::HashMap<Option<String>, (usize, CancellationToken)> = Default::default();
    let mut next_index = 0usize;
    let mut start = |scope: Option<String>, running: &mut std::collections::HashMap<_, _>| {
        let i = next_index;
        next_index += 1;
        let stop = cancel.child_token();
        let query = AppQuery::configured(&config, scope.clone());
        tracker.spawn(app_loop(
            shared.clone(),
            client.clone(),
            options.clone(),
            i,
            scope.clone(),
            query,
            stop.clone(),
        ));
        running.insert(scope, (i, stop));
    };
    for scope in scopes {
        start(scope, &mut running);
    }
    if !matches!(config.auth, super::config::AuthSource::ProjectTokensDir(_)) {
        return;
    }
    // Project token files come and go with the Secret: follow them.
    loop {
        if !pause(&cancel, SCOPE_RESCAN).await {
            return;
        }
        let Ok(now) = client.scopes(&config.projects) else {
            continue;
        };
        let now: HashSet<Option<String>> = now.into_iter().collect();
        let gone: Vec<Option<String>> = running.keys().filter(|s| !now.contains(*s)).cloned().collect();
        for scope in gone {
            if let Some((i, stop)) = running.remove(&scope) {
                tracing::info!(project = ?scope, "a project token file was removed; its applications are no longer listed");
                stop.cancel();
                shared.drop_scope(i);
            }
        }
        for scope in now {
            if !running.contains_key(&scope) {
                tracing::info!(project = ?scope, "a project token file was added; listing its applications");
                start(scope, &mut running);
            }
        }
    }
}

/// A watch opened on its own task, so it is subscribed (and its events buffered) while the view
/// lists; dropping it closes the watch.
struct Feed {
    rx: tokio::sync::mpsc::Receiver<Result<WatchItem, ArgoCdError>>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl Feed {
    /// Opens the watch of `scope`; applications its entries hold byte for byte are not decoded.
    fn open(
        client: &Client,
        query: &AppQuery,
        resource_version: Option<String>,
        shared: &Arc<Shared>,
        scope: usize,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (client, query) = (client.clone(), query.clone());
        let shared = shared.clone();
        let held: HeldCheck = Arc::new(move |raw: &[u8]| shared.held_from_watch(scope, raw));
        let task = tokio::spawn(async move {
            let mut stream = match client
                .watch_applications_held(&query, resource_version.as_deref(), held)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }
}

/// How long a watch opened before a list has to be subscribed at the server before the list is
/// taken: the request's own round trip, with room to spare.
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(300);

async fn app_loop(
    shared: Arc<Shared>,
    client: Client,
    options: ViewOptions,
    scope: usize,
    scope_name: Option<String>,
    query: AppQuery,
    cancel: CancellationToken,
) {
    let loop_name = match &scope_name {
        Some(p) => format!("applications[{p}]"),
        None => "applications".to_owned(),
    };
    let mut list_backoff = Backoff::new(options.retry_base, options.retry_max);
    let mut watch_backoff = Backoff::new(options.retry_base, options.retry_max);
    // Whether this Argo CD lists per-resource health (2.x): then the watch resumes from a
    // resourceVersion and must be subscribed before the list, or a change made between the
    // list and the subscription would be lost until the next resync. (Argo CD 3.x is watched
    // without a resourceVersion: its replay of every application closes that gap.)
    let mut resumable = false;
    let mut last_rv: Option<String> = None;
    'outer: loop {
        let watching = client.config().watch;
        let early = if watching && resumable {
            let feed = Feed::open(
                &client,
                &query,
                Some(last_rv.clone().unwrap_or_else(|| "0".into())),
                &shared,
                scope,
            );
            if !pause(&cancel, SUBSCRIBE_SETTLE).await {
                return;
            }
            Some(feed)
        } else {
            None
        };
        let mut pass = shared.begin_list(scope, scope_name.clone());
        let listed = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.list_applications_into(&query, &mut pass) => r,
        };
        let (health_in_tree, stale, listed) = match listed {
            Ok(resource_version) => {
                let (health_in_tree, listed) = (pass.health_in_tree, pass.listed);
                let figures = ListFigures {
                    items: pass.listed,
                    unchanged: pass.unchanged,
                };
                let stale = shared.finish_list(pass, &resource_version);
                shared.status.send_modify(|s| s.last_app_list = figures);
                shared.record_ok(&loop_name);
                list_backoff.reset();
                last_rv = Some(resource_version).filter(|rv| !rv.is_empty());
                (health_in_tree, stale, listed)
            }
            Err(e) => {
                shared.record_error(&loop_name, &e);
                if !pause(&cancel, list_backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        if !watching {
            // Polling Argo CD 3.x: the list omits per-resource health, so apps that changed
            // since their last complete object are fetched one by one (bounded concurrency).
            if !stale.is_empty() {
                let fetch = futures_util::stream::iter(stale)
                    .map(|r| {
                        let client = client.clone();
                        async move { client.get_application(&r, None).await }
                    })
                    .buffer_unordered(POLL_FETCH_CONCURRENCY)
                    .for_each(|res| {
                        match res {
                            Ok(d) => shared.apply_fetched(scope, scope_name.as_deref(), d),
                            Err(e) => tracing::debug!(view_loop = %loop_name, error = %e, "fetching an app for its resource health failed"),
                        }
                        std::future::ready(())
                    });
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = fetch => {}
                }
            }
            if !pause(&cancel, client.config().poll_interval).await {
                return;
            }
            continue;
        }
        let learned_resumable = !health_in_tree && !resumable;
        resumable = !health_in_tree;
        if learned_resumable {
            // This list was taken before any watch was open: take it again, watch first.
            continue 'outer;
        }
        let resync_at = Instant::now() + client.config().resync_interval;
        let mut feed = match early {
            Some(feed) if resumable => feed,
            // Argo CD 3.x lists carry no per-resource health, so a change to it that the watch
            // dropped could never be repaired from the list. Watching without a resourceVersion
            // makes Argo CD replay every app (with health) as ADDED first; unchanged ones emit
            // nothing here, changed ones are repaired.
            _ => Feed::open(&client, &query, None, &shared, scope),
        };
        // argocd-server drops watch events for a subscriber whose buffer is full instead of
        // closing its stream, so a burst can lose changes silently. Whether that may have
        // happened is decided from what arrived, not from how fast it arrived: once the watch
        // has delivered more events since the list than argocd-server's per-watcher buffer
        // could have held without risk, the view re-lists as soon as the stream has been quiet
        // for a moment. A slow (CPU-throttled) gateway sees the same count as a fast one.
        // A watch opened without a resourceVersion first replays every listed app; those
        // replays are not changes and do not count.
        let replayed = if health_in_tree { listed } else { 0 };
        let mut since_list = 0usize;
        let mut relist_after: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(resync_at) => {
                    tracing::debug!(view_loop = %loop_name, "periodic re-list");
                    continue 'outer;
                }
                _ = tokio::time::sleep_until(relist_after.unwrap_or(resync_at)), if relist_after.is_some() => {
                    tracing::info!(view_loop = %loop_name, events = since_list, "re-listing after a burst of watch events (Argo CD drops events for watchers that fall behind)");
                    continue 'outer;
                }
                ev = feed.rx.recv() => match ev {
                    Some(Ok(item)) => {
                        watch_backoff.reset();
                        if let WatchItem::Event { event, raw } = item {
                            shared.apply_watch(scope, scope_name.as_deref(), event.kind, event.app, raw);
                        }
                        // A held application counts as an event: replays are counted whole.
                        since_list += 1;
                        if since_list >= replayed + BURST_EVENTS {
                            relist_after = Some(Instant::now() + BURST_QUIET);
                        }
                    }
                    Some(Err(e)) => {
                        // A broken watch may have lost events: re-list before trusting the view.
                        shared.record_error(&loop_name, &e);
                        if !pause(&cancel, watch_backoff.next_delay()).await {
                            return;
                        }
                        continue 'outer;
                    }
                    None => {
                        tracing::info!(view_loop = %loop_name, "the Argo CD watch ended; re-listing");
                        if !pause(&cancel, watch_backoff.next_delay()).await {
                            return;
                        }
                        continue 'outer;
                    }
                }
            }
        }
    }
}

/// Watch events since the last list after which a burst may have overflowed argocd-server's
/// per-watcher buffer (1000 events), so the view re-lists once the stream is quiet. At most one
/// extra list per this many changes; steady churn is covered by the periodic resync anyway.
const BURST_EVENTS: usize = 500;
/// Quiet time after a burst before the re-list.
const BURST_QUIET: Duration = Duration::from_secs(2);

async fn cluster_loop(shared: Arc<Shared>, client: Client, options: ViewOptions, cancel: CancellationToken) {
    let mut backoff = Backoff::new(options.retry_base, options.retry_max);
    loop {
        let listed = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.list_clusters() => r,
        };
        let delay = match listed {
            Ok(list) => {
                shared.apply_clusters(list.items, list.skipped);
                shared.record_ok("clusters");
                shared
                    .status
                    .send_if_modified(|s| !std::mem::replace(&mut s.clusters_synced, true));
                backoff.reset();
                client.config().cluster_interval
            }
            Err(e) => {
                shared.record_error("clusters", &e);
                backoff.next_delay().min(client.config().cluster_interval)
            }
        };
        if !pause(&cancel, delay).await {
            return;
        }
    }
}

/// An ApplicationSet watch opened on its own task (see [`Feed`]).
struct AppSetFeed {
    rx: tokio::sync::mpsc::Receiver<Result<super::model::AppSetWatchEvent, ArgoCdError>>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl AppSetFeed {
    fn open(client: &Client, resource_version: String) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let client = client.clone();
        let task = tokio::spawn(async move {
            let mut stream = match client.watch_applicationsets(Some(&resource_version)).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }
}

/// Why an optional loop (ApplicationSets, projects) stops for good: the Argo CD has no such
/// API, or no unscoped token serves it. Said once.
fn stops_for_good(e: &ArgoCdError) -> bool {
    matches!(
        e,
        ArgoCdError::NotFound { .. } | ArgoCdError::Token(super::token::TokenError::NoProjectToken { .. })
    )
}

async fn appset_loop(shared: Arc<Shared>, client: Client, options: ViewOptions, cancel: CancellationToken) {
    const LOOP: &str = "applicationsets";
    let mut backoff = Backoff::new(options.retry_base, options.retry_max);
    let mut watch_backoff = Backoff::new(options.retry_base, options.retry_max);
    // Argo CD has the ApplicationSet stream from 3.4; an older one answers 404 to it once.
    let mut streams = true;
    let mut last_rv: Option<String> = None;
    'outer: loop {
        let watching = client.config().watch && streams;
        let feed = if watching {
            let feed = AppSetFeed::open(&client, last_rv.clone().unwrap_or_else(|| "0".into()));
            if !pause(&cancel, SUBSCRIBE_SETTLE).await {
                return;
            }
            Some(feed)
        } else {
            None
        };
        let listed = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.list_applicationsets() => r,
        };
        match listed {
            Ok(list) => {
                last_rv = Some(list.resource_version.clone()).filter(|rv| !rv.is_empty());
                shared.apply_appsets(&list.resource_version, list.items, list.skipped);
                shared.record_ok(LOOP);
                shared
                    .status
                    .send_if_modified(|s| !std::mem::replace(&mut s.appsets_synced, true));
                backoff.reset();
            }
            Err(e) if stops_for_good(&e) => {
                let why = match e {
                    ArgoCdError::NotFound { .. } => {
                        "this Argo CD has no ApplicationSet API (GET /api/v1/applicationsets answers 404); ApplicationSets are not relayed".to_owned()
                    }
                    other => format!("ApplicationSets are not relayed: {other}"),
                };
                tracing::info!("{why}");
                shared.status.send_modify(|s| {
                    s.appsets_synced = true;
                    s.appsets_note = Some(why);
                });
                return;
            }
            Err(e) => {
                shared.record_error(LOOP, &e);
                if !pause(&cancel, backoff.next_delay().min(client.config().poll_interval)).await {
                    return;
                }
                continue;
            }
        }
        let Some(mut feed) = feed else {
            if !pause(&cancel, client.config().poll_interval).await {
                return;
            }
            continue;
        };
        let resync_at = Instant::now() + client.config().resync_interval;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(resync_at) => continue 'outer,
                ev = feed.rx.recv() => match ev {
                    Some(Ok(ev)) => {
                        watch_backoff.reset();
                        shared.apply_appset_watch(ev.kind, ev.appset);
                    }
                    Some(Err(ArgoCdError::NotFound { .. })) => {
                        let note = format!(
                            "this Argo CD has no ApplicationSet watch (added in 3.4); polling ApplicationSets every {:?} (flag --poll-interval, Helm gateway.argocd.pollInterval)",
                            client.config().poll_interval
                        );
                        tracing::info!("{note}");
                        shared.status.send_modify(|s| s.appsets_note = Some(note));
                        streams = false;
                        continue 'outer;
                    }
                    Some(Err(e)) => {
                        shared.record_error(LOOP, &e);
                        if !pause(&cancel, watch_backoff.next_delay()).await {
                            return;
                        }
                        continue 'outer;
                    }
                    None => {
                        if !pause(&cancel, watch_backoff.next_delay()).await {
                            return;
                        }
                        continue 'outer;
                    }
                }
            }
        }
    }
}

async fn project_loop(shared: Arc<Shared>, client: Client, options: ViewOptions, cancel: CancellationToken) {
    const LOOP: &str = "projects";
    let mut backoff = Backoff::new(options.retry_base, options.retry_max);
    loop {
        let listed = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.list_projects() => r,
        };
        let delay = match listed {
            Ok(list) => {
                shared.apply_projects(list.items, list.skipped);
                shared.record_ok(LOOP);
                shared
                    .status
                    .send_if_modified(|s| !std::mem::replace(&mut s.projects_synced, true));
                backoff.reset();
                client.config().cluster_interval
            }
            Err(e) if stops_for_good(&e) => {
                tracing::info!(error = %e, "AppProjects are not relayed");
                shared.status.send_modify(|s| s.projects_synced = true);
                return;
            }
            Err(e) => {
                shared.record_error(LOOP, &e);
                backoff.next_delay().min(client.config().cluster_interval)
            }
        };
        if !pause(&cancel, delay).await {
            return;
        }
    }
}
