//! Applications the simulator runs like Argo CD's controller does, for deployment checks: a Git
//! history per application (commits per source, each with the manifests the application renders
//! after it), what Argo CD has seen of it (a refresh moves that to the newest commit), the live
//! objects in the cluster, and sync operations that run in phases and waves — PreSync hooks,
//! then each wave of resources (Sync hooks with them), then PostSync hooks — one step at a time,
//! with history, termination, rollback and automated sync.
//!
//! Everything the API shows is written into the application's raw JSON the way Argo CD writes
//! it (`status.operationState` with `syncResult.resources[].hookPhase/hookType/syncPhase`,
//! `status.resources[].syncWave`, `status.history`, `status.sync.revision(s)`), and managed
//! resources answer the rendered target and the live object as JSON text. Tests drive time:
//! [`SimHandle::step_operation`] finishes the running batch and starts the next.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{SimHandle, State, now_rfc3339};

/// Argo CD's hook annotation.
const HOOK: &str = "argocd.argoproj.io/hook";
/// Argo CD's sync-wave annotation.
const WAVE: &str = "argocd.argoproj.io/sync-wave";
/// Argo CD's default history limit.
const HISTORY_LIMIT: usize = 10;

/// One push: a source moved to a revision; `manifests` is what the application renders after it
/// (None: the same as before).
#[derive(Clone, Debug)]
struct Commit {
    source: usize,
    revision: String,
    manifests: Option<Arc<Vec<Value>>>,
}

/// One step of an operation: the tasks that run together.
#[derive(Clone, Debug)]
struct Batch {
    sync_phase: &'static str,
    tasks: Vec<Task>,
}

#[derive(Clone, Debug)]
struct Task {
    manifest: Value,
    /// PreSync, Sync, PostSync; None for a plain resource.
    hook: Option<String>,
}

/// A sync operation in progress.
#[derive(Clone, Debug)]
struct Op {
    revisions: Vec<String>,
    batches: Vec<Batch>,
    current: usize,
    dry_run: bool,
    prune: bool,
    selective: bool,
    manifests: Arc<Vec<Value>>,
    history_sources: Vec<Value>,
    initiated_by: Value,
}

/// The simulator's model of one application's Git history, cluster state and operation.
#[derive(Clone, Debug, Default)]
pub(super) struct Repo {
    sources: usize,
    commits: Vec<Commit>,
    /// Argo CD compares against `commits[..seen]`.
    seen: usize,
    live: Vec<Value>,
    op: Option<Op>,
    next_history_id: i64,
    /// The revisions of the last failed operation: automated sync does not retry them.
    failed_revisions: Option<Vec<String>>,
}

/// `(group, kind, namespace, name)` of a manifest.
fn identity(m: &Value, default_ns: &str) -> (String, String, String, String) {
    let api = m["apiVersion"].as_str().unwrap_or("");
    let group = api.rsplit_once('/').map(|(g, _)| g).unwrap_or("").to_owned();
    let ns = m["metadata"]["namespace"].as_str().unwrap_or(default_ns).to_owned();
    (
        group,
        m["kind"].as_str().unwrap_or("").to_owned(),
        ns,
        m["metadata"]["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn version_of(m: &Value) -> String {
    let api = m["apiVersion"].as_str().unwrap_or("");
    api.rsplit_once('/').map(|(_, v)| v).unwrap_or(api).to_owned()
}

fn hook_of(m: &Value) -> Option<String> {
    m["metadata"]["annotations"][HOOK]
        .as_str()
        .and_then(|h| h.split(',').next())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

fn wave_of(m: &Value) -> i64 {
    m["metadata"]["annotations"][WAVE]
        .as_str()
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0)
}

impl Repo {
    fn revisions_at(&self, upto: usize) -> Vec<String> {
        let mut out = vec![String::new(); self.sources];
        for c in &self.commits[..upto.min(self.commits.len())] {
            if let Some(slot) = out.get_mut(c.source) {
                slot.clone_from(&c.revision);
            }
        }
        out
    }

    fn manifests_at(&self, upto: usize) -> Arc<Vec<Value>> {
        self.commits[..upto.min(self.commits.len())]
            .iter()
            .rev()
            .find_map(|c| c.manifests.clone())
            .unwrap_or_default()
    }

    /// The position after the commit of `revision` on `source`.
    fn find(&self, source: usize, revision: &str) -> Option<usize> {
        self.commits
            .iter()
            .rposition(|c| c.source == source && c.revision == revision)
            .map(|i| i + 1)
    }
}

/// How `revisions` are written: `revision` for one source, `revisions` for several.
fn put_revisions(obj: &mut Value, revisions: &[String]) {
    if revisions.len() == 1 {
        obj["revision"] = json!(revisions[0]);
    } else {
        obj["revisions"] = json!(revisions);
    }
}

fn sources_of(app: &Value) -> Vec<Value> {
    match app["spec"]["sources"].as_array() {
        Some(s) if !s.is_empty() => s.clone(),
        _ => vec![app["spec"]["source"].clone()],
    }
}

fn put_sources(obj: &mut Value, sources: &[Value]) {
    if sources.len() == 1 {
        obj["source"] = sources[0].clone();
    } else {
        obj["sources"] = json!(sources);
    }
}

fn automated(app: &Value) -> bool {
    let a = &app["spec"]["syncPolicy"]["automated"];
    a.is_object() && a["enabled"] != json!(false)
}

fn group_kind(group: &str, kind: &str) -> String {
    format!("{group}/{kind}")
}

/// Writes the comparison of the seen target with the live objects into the application.
fn render(app: &mut Value, repo: &Repo) {
    let dest_ns = app["spec"]["destination"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let target = repo.manifests_at(repo.seen);
    let mut resources = vec![];
    let mut synced = true;
    for m in target.iter().filter(|m| hook_of(m).is_none()) {
        let id = identity(m, &dest_ns);
        let live = repo.live.iter().find(|l| identity(l, &dest_ns) == id);
        let in_sync = live == Some(m);
        synced &= in_sync;
        resources.push(json!({
            "group": id.0, "version": version_of(m), "kind": id.1, "namespace": id.2, "name": id.3,
            "status": if in_sync { "Synced" } else { "OutOfSync" },
            "health": {"status": if live.is_some() { "Healthy" } else { "Missing" }},
            "syncWave": wave_of(m),
        }));
    }
    for l in &repo.live {
        let id = identity(l, &dest_ns);
        let hook = hook_of(l).is_some();
        if !hook && target.iter().any(|m| identity(m, &dest_ns) == id) {
            continue;
        }
        if !hook {
            synced = false;
        }
        let mut r = json!({
            "group": id.0, "version": version_of(l), "kind": id.1, "namespace": id.2, "name": id.3,
            "status": if hook { "Synced" } else { "OutOfSync" }, "syncWave": wave_of(l),
        });
        if hook {
            r["hook"] = json!(true);
        } else {
            r["requiresPruning"] = json!(true);
        }
        resources.push(r);
    }
    let revisions = repo.revisions_at(repo.seen);
    let mut sync = json!({"status": if synced { "Synced" } else { "OutOfSync" }});
    put_revisions(&mut sync, &revisions);
    let mut compared = json!({"destination": app["spec"]["destination"]});
    put_sources(&mut compared, &sources_of(app));
    sync["comparedTo"] = compared;
    app["status"]["sync"] = sync;
    app["status"]["resources"] = json!(resources);
    let images: Vec<Value> = repo
        .live
        .iter()
        .flat_map(|l| {
            l["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["image"].as_str().map(|i| json!(i)))
        .collect();
    app["status"]["summary"] = json!({"images": images});
    app["status"]["reconciledAt"] = json!(now_rfc3339());
}

/// The batches of a sync: PreSync hooks, each wave of resources with its Sync hooks, PostSync
/// hooks; each group ordered by wave.
fn plan(manifests: &[Value], only: Option<&[(String, String, String, String)]>, dest_ns: &str) -> Vec<Batch> {
    let mut batches = vec![];
    let mut by_wave = |phase: &'static str, tasks: Vec<Task>| {
        let mut waves: Vec<i64> = tasks.iter().map(|t| wave_of(&t.manifest)).collect();
        waves.sort_unstable();
        waves.dedup();
        for w in waves {
            let in_wave: Vec<Task> = tasks.iter().filter(|t| wave_of(&t.manifest) == w).cloned().collect();
            batches.push(Batch {
                sync_phase: phase,
                tasks: in_wave,
            });
        }
    };
    let selected = |m: &Value| only.is_none_or(|o| o.contains(&identity(m, dest_ns)));
    let tasks = |want: &dyn Fn(Option<&str>) -> bool| -> Vec<Task> {
        manifests
            .iter()
            .filter(|m| want(hook_of(m).as_deref()) && selected(m))
            .map(|m| Task {
                manifest: m.clone(),
                hook: hook_of(m),
            })
            .collect()
    };
    by_wave("PreSync", tasks(&|h| h == Some("PreSync")));
    by_wave("Sync", tasks(&|h| h.is_none() || h == Some("Sync")));
    by_wave("PostSync", tasks(&|h| h == Some("PostSync")));
    batches
}

fn result_entry(t: &Task, phase: &str, sync_phase: &str, message: &str, dest_ns: &str) -> Value {
    let id = identity(&t.manifest, dest_ns);
    let mut r = json!({
        "group": id.0, "version": version_of(&t.manifest), "kind": id.1, "namespace": id.2, "name": id.3,
        "message": message, "hookPhase": phase, "syncPhase": sync_phase,
    });
    match &t.hook {
        Some(h) => r["hookType"] = json!(h),
        None => r["status"] = json!("Synced"),
    }
    r
}

/// What Argo CD says while a batch runs.
fn waiting_message(batch: &Batch, dest_ns: &str) -> String {
    let name = |t: &Task| {
        let id = identity(&t.manifest, dest_ns);
        format!("{}/{}", group_kind(&id.0, &id.1), id.3)
    };
    let hooks: Vec<String> = batch.tasks.iter().filter(|t| t.hook.is_some()).map(name).collect();
    let (what, list) = if hooks.is_empty() {
        ("healthy state of", batch.tasks.iter().map(name).collect::<Vec<_>>())
    } else {
        ("completion of hook", hooks)
    };
    let mut m = format!("waiting for {what} {}", list.first().cloned().unwrap_or_default());
    if list.len() > 1 {
        m.push_str(&format!(
            " and {} more {}",
            list.len() - 1,
            if hooks_only(what) { "hooks" } else { "resources" }
        ));
    }
    m
}

fn hooks_only(what: &str) -> bool {
    what.starts_with("completion")
}

/// Applies an operation's current batch to the live objects.
fn apply_batch(repo: &mut Repo, dest_ns: &str) {
    let Some(op) = &repo.op else { return };
    if op.dry_run {
        return;
    }
    let Some(batch) = op.batches.get(op.current).cloned() else {
        return;
    };
    for t in batch.tasks {
        let id = identity(&t.manifest, dest_ns);
        repo.live.retain(|l| identity(l, dest_ns) != id);
        repo.live.push(t.manifest);
    }
}

/// Marks the running batch's entries of the sync result with `phase` and `message`.
fn mark_batch(app: &mut Value, op: &Op, phase: &str, dest_ns: &str) {
    let Some(batch) = op.batches.get(op.current) else {
        return;
    };
    let results = app["status"]["operationState"]["syncResult"]["resources"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut results = results;
    for t in &batch.tasks {
        let id = identity(&t.manifest, dest_ns);
        let message = match (&t.hook, phase) {
            (Some(_), "Running") => format!("{}/{} created", id.1.to_lowercase(), id.3),
            (Some(_), _) => "Reached expected number of succeeded pods".to_owned(),
            (None, _) => format!("{}/{} configured", id.1.to_lowercase(), id.3),
        };
        let entry = result_entry(t, phase, batch.sync_phase, &message, dest_ns);
        let same = |r: &Value| {
            r["group"] == entry["group"]
                && r["kind"] == entry["kind"]
                && r["namespace"] == entry["namespace"]
                && r["name"] == entry["name"]
                && r["syncPhase"] == entry["syncPhase"]
        };
        match results.iter_mut().find(|r| same(r)) {
            Some(r) => *r = entry,
            None => results.push(entry),
        }
    }
    app["status"]["operationState"]["syncResult"]["resources"] = json!(results);
}

impl SimHandle {
    fn dest_ns(app: &Value) -> String {
        app["spec"]["destination"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Changes a simulated application and its model together, under one lock, and emits
    /// MODIFIED; false if it is not a simulated one.
    fn with_repo(&self, namespace: &str, name: &str, f: impl FnOnce(&mut Value, &mut Repo)) -> bool {
        let mut st = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        if !st.repos.contains_key(&key) {
            return false;
        }
        let Some(app) = st.apps.remove(&key) else {
            return false;
        };
        let mut app = Arc::unwrap_or_clone(app);
        if let Some(repo) = st.repos.get_mut(&key) {
            f(&mut app, repo);
        }
        self.bump(&mut st, &mut app);
        let app = Arc::new(app);
        self.broadcast(&mut st, "MODIFIED", &app);
        st.apps.insert(key, app);
        true
    }

    /// Whether an application is simulated with Git history and operations.
    pub fn is_simulated(&self, namespace: &str, name: &str) -> bool {
        self.lock().repos.contains_key(&(namespace.to_owned(), name.to_owned()))
    }

    /// Adds an application whose Git history, cluster state and operations the simulator runs.
    /// `app` is an Application object with at least `metadata.name` and `spec` (`source` or
    /// `sources`, `destination`, optional `syncPolicy`); `revisions` are the first commit of
    /// each source and `manifests` what the application renders at them. It starts deployed:
    /// live objects equal the manifests (hooks aside), Synced, Healthy, one history entry.
    pub fn add_simulated_app(&self, mut app: Value, revisions: &[&str], manifests: Vec<Value>) -> (String, String) {
        if !app["metadata"]["namespace"].is_string() {
            app["metadata"]["namespace"] = json!(self.inner.options.namespace);
        }
        let sources = sources_of(&app).len().max(1);
        let manifests = Arc::new(manifests);
        let mut repo = Repo {
            sources,
            ..Repo::default()
        };
        for (i, r) in revisions.iter().enumerate().take(sources) {
            repo.commits.push(Commit {
                source: i,
                revision: (*r).to_owned(),
                manifests: (i == 0).then(|| manifests.clone()),
            });
        }
        repo.seen = repo.commits.len();
        repo.live = manifests.iter().filter(|m| hook_of(m).is_none()).cloned().collect();
        let revs = repo.revisions_at(repo.seen);
        let now = now_rfc3339();
        let mut entry = json!({"id": 0, "deployedAt": now, "deployStartedAt": now, "initiatedBy": {"automated": true}});
        put_revisions(&mut entry, &revs);
        put_sources(&mut entry, &sources_of(&app));
        repo.next_history_id = 1;
        let mut op_sync = json!({});
        put_revisions(&mut op_sync, &revs);
        let mut result = json!({"resources": []});
        put_revisions(&mut result, &revs);
        app["status"] = json!({
            "health": {"status": "Healthy"},
            "history": [entry],
            "operationState": {
                "operation": {"sync": op_sync, "initiatedBy": {"automated": true}},
                "phase": "Succeeded", "message": "successfully synced (all tasks run)",
                "startedAt": now, "finishedAt": now, "syncResult": result
            },
            "sourceHydrator": {},
            "controllerNamespace": self.inner.options.namespace,
        });
        render(&mut app, &repo);
        let key = (
            app["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            app["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        );
        self.lock().repos.insert(key.clone(), repo);
        self.upsert_app(app);
        key
    }

    /// A Git push: `source` (0-based) moves to `revision`, and the application renders
    /// `manifests` from now on (None: what it rendered before). Argo CD sees it at its next
    /// refresh ([`SimHandle::refresh_app`], or a get with `refresh`).
    pub fn push_commit(
        &self,
        namespace: &str,
        name: &str,
        source: usize,
        revision: &str,
        manifests: Option<Vec<Value>>,
    ) -> bool {
        let mut st = self.lock();
        let Some(repo) = st.repos.get_mut(&(namespace.to_owned(), name.to_owned())) else {
            return false;
        };
        repo.commits.push(Commit {
            source,
            revision: revision.to_owned(),
            manifests: manifests.map(Arc::new),
        });
        true
    }

    /// Argo CD refreshes: it compares against the newest commits, and with automated sync on it
    /// starts a sync when the application is out of sync.
    pub fn refresh_app(&self, namespace: &str, name: &str) -> bool {
        self.with_repo(namespace, name, |app, repo| {
            repo.seen = repo.commits.len();
            render(app, repo);
            Self::maybe_autosync(app, repo);
        })
    }

    fn maybe_autosync(app: &mut Value, repo: &mut Repo) {
        let out_of_sync = app["status"]["sync"]["status"] == "OutOfSync";
        let revisions = repo.revisions_at(repo.seen);
        if automated(app) && out_of_sync && repo.op.is_none() && repo.failed_revisions.as_ref() != Some(&revisions) {
            let prune = app["spec"]["syncPolicy"]["automated"]["prune"] == json!(true);
            let manifests = repo.manifests_at(repo.seen);
            let sync = json!({"prune": prune});
            Self::start(app, repo, revisions, manifests, sync, json!({"automated": true}), None);
        }
    }

    /// Starts an operation (the caller checked none runs).
    fn start(
        app: &mut Value,
        repo: &mut Repo,
        revisions: Vec<String>,
        manifests: Arc<Vec<Value>>,
        mut sync: Value,
        initiated_by: Value,
        only: Option<Vec<(String, String, String, String)>>,
    ) {
        let dest_ns = Self::dest_ns(app);
        put_revisions(&mut sync, &revisions);
        let dry_run = sync["dryRun"] == json!(true);
        let prune = sync["prune"] == json!(true);
        let batches = plan(&manifests, only.as_deref(), &dest_ns);
        let operation = json!({"sync": sync, "initiatedBy": initiated_by, "retry": {}});
        let now = now_rfc3339();
        let mut result = json!({"resources": []});
        put_revisions(&mut result, &revisions);
        put_sources(&mut result, &sources_of(app));
        app["operation"] = operation.clone();
        app["status"]["operationState"] = json!({
            "operation": operation, "phase": "Running", "message": "", "startedAt": now, "syncResult": result,
        });
        let op = Op {
            revisions,
            batches,
            current: 0,
            dry_run,
            prune,
            selective: only.is_some(),
            manifests,
            history_sources: sources_of(app),
            initiated_by,
        };
        if !dry_run {
            app["status"]["health"] = json!({"status": "Progressing", "message": "", "lastTransitionTime": now});
        }
        repo.op = Some(op);
        Self::begin_batch(app, repo);
    }

    /// Starts the current batch, or finishes the operation when none is left.
    fn begin_batch(app: &mut Value, repo: &mut Repo) {
        let dest_ns = Self::dest_ns(app);
        let Some(op) = repo.op.clone() else { return };
        match op.batches.get(op.current) {
            None => Self::finish(app, repo, "Succeeded", "successfully synced (all tasks run)"),
            Some(batch) => {
                // Resources apply at once; hooks then run until a step finishes them.
                if !op.dry_run {
                    apply_batch(repo, &dest_ns);
                }
                mark_batch(app, &op, "Running", &dest_ns);
                app["status"]["operationState"]["message"] = json!(waiting_message(batch, &dest_ns));
                render(app, repo);
            }
        }
    }

    fn finish(app: &mut Value, repo: &mut Repo, phase: &str, message: &str) {
        let Some(op) = repo.op.take() else { return };
        let dest_ns = Self::dest_ns(app);
        let now = now_rfc3339();
        let state = &mut app["status"]["operationState"];
        state["phase"] = json!(phase);
        state["message"] = json!(message);
        state["finishedAt"] = json!(now);
        if let Some(o) = app.as_object_mut() {
            o.remove("operation");
        }
        if phase == "Succeeded" {
            repo.failed_revisions = None;
            if !op.dry_run {
                if op.prune && !op.selective {
                    let target = &op.manifests;
                    repo.live.retain(|l| {
                        hook_of(l).is_some() || target.iter().any(|m| identity(m, &dest_ns) == identity(l, &dest_ns))
                    });
                }
                let mut entry = json!({"id": repo.next_history_id, "deployedAt": now,
                    "deployStartedAt": app["status"]["operationState"]["startedAt"], "initiatedBy": op.initiated_by});
                put_revisions(&mut entry, &op.revisions);
                put_sources(&mut entry, &op.history_sources);
                repo.next_history_id += 1;
                let mut history = app["status"]["history"].as_array().cloned().unwrap_or_default();
                history.push(entry);
                let skip = history.len().saturating_sub(HISTORY_LIMIT);
                app["status"]["history"] = json!(history[skip..]);
                app["status"]["health"] = json!({"status": "Healthy", "message": "", "lastTransitionTime": now});
            }
        } else {
            repo.failed_revisions = Some(op.revisions.clone());
        }
        // The controller refreshes after an operation: it compares against the newest commits.
        repo.seen = repo.commits.len();
        render(app, repo);
    }

    /// Finishes the running batch of an application's operation successfully and starts the
    /// next (a terminating operation ends); returns the operation's phase afterwards, None when
    /// no operation runs.
    pub fn step_operation(&self, namespace: &str, name: &str) -> Option<String> {
        let mut phase = None;
        self.with_repo(namespace, name, |app, repo| {
            let dest_ns = Self::dest_ns(app);
            let Some(op) = repo.op.clone() else { return };
            if app["status"]["operationState"]["phase"] == "Terminating" {
                Self::finish(app, repo, "Failed", "Operation terminated");
            } else {
                mark_batch(app, &op, "Succeeded", &dest_ns);
                if let Some(o) = repo.op.as_mut() {
                    o.current += 1;
                }
                Self::begin_batch(app, repo);
                if repo.op.is_none() {
                    Self::maybe_autosync(app, repo);
                }
            }
            phase = app["status"]["operationState"]["phase"].as_str().map(str::to_owned);
        });
        phase
    }

    /// Steps an application's operation until it ends; returns its final phase.
    pub fn run_operation(&self, namespace: &str, name: &str) -> Option<String> {
        let mut last = None;
        for _ in 0..1000 {
            match self.step_operation(namespace, name) {
                Some(p) if p == "Running" || p == "Terminating" => last = Some(p),
                other => return other.or(last),
            }
        }
        last
    }

    /// Fails the running hook `hook` of an application's operation with `message` (a Job that
    /// reached its backoff limit): the operation fails as Argo CD's does.
    pub fn fail_hook(&self, namespace: &str, name: &str, hook: &str, message: &str) -> bool {
        let mut found = false;
        self.with_repo(namespace, name, |app, repo| {
            let Some(op) = repo.op.clone() else { return };
            let dest_ns = Self::dest_ns(app);
            let Some(batch) = op.batches.get(op.current) else {
                return;
            };
            let Some(task) = batch
                .tasks
                .iter()
                .find(|t| t.hook.is_some() && identity(&t.manifest, &dest_ns).3 == hook)
            else {
                return;
            };
            found = true;
            let entry = result_entry(task, "Failed", batch.sync_phase, message, &dest_ns);
            if let Some(results) = app["status"]["operationState"]["syncResult"]["resources"].as_array_mut()
                && let Some(r) = results.iter_mut().find(|r| {
                    r["name"] == entry["name"] && r["kind"] == entry["kind"] && r["syncPhase"] == entry["syncPhase"]
                })
            {
                *r = entry;
            }
            Self::finish(
                app,
                repo,
                "Failed",
                "one or more synchronization tasks completed unsuccessfully",
            );
        });
        found
    }

    /// The live objects of a simulated application.
    pub fn live_objects(&self, namespace: &str, name: &str) -> Vec<Value> {
        self.lock()
            .repos
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|r| r.live.clone())
            .unwrap_or_default()
    }
}

/// The sync endpoint for a simulated application: the operation Argo CD would start for this
/// request body. Err is an Argo CD error (status, message).
pub(super) fn sync_simulated(
    st: &mut State,
    key: &(String, String),
    req: &Value,
    initiated_by: Value,
) -> Result<(), (u16, String)> {
    let (Some(app), Some(repo)) = (st.apps.get_mut(key).map(Arc::make_mut), st.repos.get_mut(key)) else {
        return Err((404, format!("applications.argoproj.io \"{}\" not found", key.1)));
    };
    if repo.op.is_some() {
        return Err((400, "another operation is already in progress".into()));
    }
    let dest_ns = SimHandle::dest_ns(app);
    // The revisions: per source, what the request names, else what Argo CD last saw.
    let mut revisions = repo.revisions_at(repo.seen);
    let mut upto = repo.seen;
    let mut named = vec![];
    if let Some(r) = req["revision"].as_str().filter(|r| !r.is_empty()) {
        named.push((0usize, r.to_owned()));
    }
    if let Some(revs) = req["revisions"].as_array() {
        let positions: Vec<i64> = req["sourcePositions"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(|x| x.as_i64().or_else(|| x.as_str().and_then(|s| s.parse().ok())))
                    .collect()
            })
            .unwrap_or_else(|| (1..=revs.len() as i64).collect());
        if positions.len() != revs.len() {
            return Err((400, "sourcePositions and revisions must have the same length".into()));
        }
        for (p, r) in positions.iter().zip(revs) {
            named.push(((*p - 1).max(0) as usize, r.as_str().unwrap_or("").to_owned()));
        }
    }
    for (source, revision) in named {
        let Some(pos) = repo.find(source, &revision) else {
            // Argo CD accepts the request; the operation then fails resolving the revision.
            let msg = format!("rpc error: code = Unknown desc = unable to resolve '{revision}' to a commit SHA");
            let now = now_rfc3339();
            app["status"]["operationState"] = json!({
                "operation": {"sync": req.clone(), "initiatedBy": initiated_by},
                "phase": "Error", "message": msg, "startedAt": now, "finishedAt": now,
            });
            return Ok(());
        };
        if let Some(slot) = revisions.get_mut(source) {
            *slot = revision;
        }
        upto = upto.max(pos);
    }
    let manifests = repo.manifests_at(upto);
    let only: Option<Vec<(String, String, String, String)>> =
        req["resources"].as_array().filter(|r| !r.is_empty()).map(|rs| {
            rs.iter()
                .map(|r| {
                    let ns = r["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(&dest_ns);
                    (
                        r["group"].as_str().unwrap_or("").to_owned(),
                        r["kind"].as_str().unwrap_or("").to_owned(),
                        ns.to_owned(),
                        r["name"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        });
    let mut sync = json!({
        "prune": req["prune"].as_bool().unwrap_or(false),
        "dryRun": req["dryRun"].as_bool().unwrap_or(false),
    });
    for (from, to) in [
        ("resources", "resources"),
        ("strategy", "syncStrategy"),
        ("source", "source"),
        ("sources", "sources"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            sync[to] = v.clone();
        }
    }
    if let Some(items) = req["syncOptions"]["items"].as_array() {
        sync["syncOptions"] = json!(items);
    }
    SimHandle::start(app, repo, revisions, manifests, sync, initiated_by, only);
    Ok(())
}

/// The rollback endpoint for a simulated application: a sync to a history entry's revisions.
pub(super) fn rollback_simulated(
    st: &mut State,
    key: &(String, String),
    id: i64,
    req: &Value,
    initiated_by: Value,
) -> Result<(), (u16, String)> {
    let (Some(app), Some(repo)) = (st.apps.get_mut(key).map(Arc::make_mut), st.repos.get_mut(key)) else {
        return Err((404, format!("applications.argoproj.io \"{}\" not found", key.1)));
    };
    let entry = rollback_checks(app, id)?;
    if repo.op.is_some() {
        return Err((400, "another operation is already in progress".into()));
    }
    let revisions: Vec<String> = match entry["revisions"].as_array() {
        Some(r) => r.iter().map(|v| v.as_str().unwrap_or("").to_owned()).collect(),
        None => vec![entry["revision"].as_str().unwrap_or("").to_owned()],
    };
    let upto = revisions
        .iter()
        .enumerate()
        .filter_map(|(i, r)| repo.find(i, r))
        .max()
        .unwrap_or(repo.seen);
    let manifests = repo.manifests_at(upto);
    let mut sync = json!({
        "prune": req["prune"].as_bool().unwrap_or(false),
        "dryRun": req["dryRun"].as_bool().unwrap_or(false),
        "syncStrategy": {"apply": {}},
    });
    for k in ["source", "sources"] {
        if !entry[k].is_null() {
            sync[k] = entry[k].clone();
        }
    }
    SimHandle::start(app, repo, revisions, manifests, sync, initiated_by, None);
    Ok(())
}

/// Argo CD's refusals of a rollback; the history entry otherwise.
pub(super) fn rollback_checks(app: &Value, id: i64) -> Result<Value, (u16, String)> {
    if automated(app) {
        return Err((400, "rollback cannot be initiated when auto-sync is enabled".into()));
    }
    let name = app["metadata"]["name"].as_str().unwrap_or("");
    let entry = app["status"]["history"]
        .as_array()
        .and_then(|h| h.iter().find(|e| e["id"].as_i64() == Some(id)))
        .cloned()
        .ok_or_else(|| (400, format!("application {name} does not have deployment with id {id}")))?;
    if entry["source"].is_null() && entry["sources"].is_null() {
        return Err((
            400,
            format!(
                "cannot rollback to revision deployed with Argo CD v1.5 and older ({})",
                entry["revision"].as_str().unwrap_or("")
            ),
        ));
    }
    Ok(entry)
}

/// The managed resources of a simulated application: each resource of the seen target or the
/// cluster, with both as JSON text (`"null"` for a side it is missing from).
pub(super) fn managed_simulated(app: &Value, repo: &Repo) -> Value {
    let dest_ns = SimHandle::dest_ns(app);
    let target = repo.manifests_at(repo.seen);
    let mut ids: Vec<(String, String, String, String)> = vec![];
    for m in target.iter().chain(repo.live.iter()) {
        let id = identity(m, &dest_ns);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let items: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            let t = target.iter().find(|m| identity(m, &dest_ns) == id);
            let l = repo.live.iter().find(|m| identity(m, &dest_ns) == id);
            let text = |v: Option<&Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "null".into());
            let hook = t.or(l).is_some_and(|m| hook_of(m).is_some());
            json!({
                "group": id.0, "kind": id.1, "namespace": id.2, "name": id.3,
                "targetState": text(t), "liveState": text(l), "normalizedLiveState": text(l),
                "predictedLiveState": text(t.or(l)), "hook": hook, "modified": t != l,
                "resourceVersion": "1",
            })
        })
        .collect();
    json!({"items": items})
}

/// Terminates a simulated application's operation: Argo CD marks it Terminating and the
/// controller ends it (at the next [`SimHandle::step_operation`]).
pub(super) fn terminate(app: &mut Value) -> Result<(), (u16, String)> {
    let running = matches!(
        app["status"]["operationState"]["phase"].as_str(),
        Some("Running") | Some("Terminating")
    );
    if app.get("operation").is_none_or(Value::is_null) || !running {
        return Err((400, "Unable to terminate operation. No operation is in progress".into()));
    }
    app["status"]["operationState"]["phase"] = json!("Terminating");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str, image: &str, wave: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "annotations": {WAVE: wave.to_string()}},
               "spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    fn hook(name: &str, kind: &str) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "annotations": {HOOK: kind}}})
    }

    #[test]
    fn plans_run_hooks_and_waves_in_order() {
        let m = vec![
            hook("smoke", "PostSync"),
            deployment("api", "api:1", 1),
            hook("migrate", "PreSync"),
            deployment("web", "web:1", 0),
        ];
        let p = plan(&m, None, "shop");
        let names: Vec<(String, Vec<String>)> = p
            .iter()
            .map(|b| {
                (
                    b.sync_phase.to_owned(),
                    b.tasks
                        .iter()
                        .map(|t| t.manifest["metadata"]["name"].as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("PreSync".into(), vec!["migrate".into()]),
                ("Sync".into(), vec!["web".into()]),
                ("Sync".into(), vec!["api".into()]),
                ("PostSync".into(), vec!["smoke".into()]),
            ]
        );
        let only = vec![("apps".into(), "Deployment".into(), "shop".into(), "api".into())];
        assert_eq!(plan(&m, Some(&only), "shop").len(), 1);
        assert_eq!(
            waiting_message(&p[3], "shop"),
            "waiting for completion of hook batch/Job/smoke"
        );
        assert_eq!(
            waiting_message(&p[1], "shop"),
            "waiting for healthy state of apps/Deployment/web"
        );
    }

    #[test]
    fn repos_know_revisions_and_manifests_per_commit() {
        let mut r = Repo {
            sources: 2,
            ..Repo::default()
        };
        r.commits = vec![
            Commit {
                source: 0,
                revision: "a1".into(),
                manifests: Some(Arc::new(vec![json!(1)])),
            },
            Commit {
                source: 1,
                revision: "b1".into(),
                manifests: None,
            },
            Commit {
                source: 1,
                revision: "b2".into(),
                manifests: Some(Arc::new(vec![json!(2)])),
            },
        ];
        assert_eq!(r.revisions_at(2), vec!["a1", "b1"]);
        assert_eq!(r.revisions_at(3), vec!["a1", "b2"]);
        assert_eq!(*r.manifests_at(2), vec![json!(1)]);
        assert_eq!(*r.manifests_at(3), vec![json!(2)]);
        assert_eq!(r.find(1, "b1"), Some(2));
        assert_eq!(r.find(0, "b1"), None);
    }
}
