//! Tolerant decoding of Argo CD JSON into the compact model the gateway keeps and relays.
//!
//! The model's types are the relayed item schema of [`crate::wire::item`] (re-exported here);
//! this file owns how Argo CD objects become them. Argo CD objects are decoded through private
//! "wire" structs that mirror only the JSON paths we read (Go `encoding/json` output: camelCase
//! keys, `null` for empty slices and maps, RFC 3339 times). Every wire field defaults when
//! missing or `null`, unknown fields are ignored and unknown enum values are kept as strings, so
//! a newer Argo CD does not break decoding.

use std::collections::BTreeMap;
use std::fmt;

use compact_str::CompactString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

pub use crate::wire::item::{
    AppSetApplicationStatus, AppSetCondition, AppSetStrategy, AppTemplate, Application, ApplicationSet, Cluster,
    Condition, ConnectionState, Destination, Generator, GroupKind, Health, HealthStatusCode, HistoryEntry, Operation,
    OperationPhase, OperationProgress, OwnedApplication, Project, ResourceState, Source, SyncPolicy, SyncState,
    SyncStatusCode, SyncTask, SyncWindow,
};
use crate::wire::item::{MAX_HISTORY, MAX_PROGRESS_TASKS};

/// Identity of an application: its namespace and name (apps in any namespace).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AppKey {
    /// The namespace of the Application object (Argo CD's `appNamespace`).
    pub namespace: String,
    /// The Application name.
    pub name: String,
}

impl AppKey {
    /// Builds a key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Application {
    /// The namespace/name key of this application.
    pub fn key(&self) -> AppKey {
        AppKey::new(&self.namespace, &self.name)
    }

    /// Equality ignoring fields that change without a meaningful state change (`reconciledAt`,
    /// condition timestamps), for callers that coalesce noisy updates.
    pub fn eq_ignoring_noise(&self, other: &Application) -> bool {
        fn strip(a: &Application) -> Application {
            let mut a = a.clone();
            a.reconciled_at = None;
            for c in &mut a.conditions {
                c.last_transition_time = None;
            }
            a
        }
        strip(self) == strip(other)
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types: the subset of Argo CD's JSON we read. Go emits `null` for nil slices and maps, so
// every field goes through `nd` (null → default).

/// Deserialises `null` as the default value.
fn nd<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Decodes a secondary field on its own: a shape Argo CD does not document (a string where an
/// object belongs, a number where a list does) takes the default instead of failing the whole
/// object. Core fields (names, sync, health, operation phase) stay strict, so an application
/// whose meaning cannot be read is reported undecodable rather than shown wrong.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    // Borrowed: the field's text is looked at in place (objects are always decoded from a
    // string or slice), not copied.
    let raw = <&RawValue>::deserialize(d)?;
    Ok(serde_json::from_str::<Option<T>>(raw.get())
        .ok()
        .flatten()
        .unwrap_or_default())
}

/// A list whose elements are decoded one by one: an odd element is left out, the rest kept.
fn lenient_vec<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    let raw = <&RawValue>::deserialize(d)?;
    let Ok(Some(items)) = serde_json::from_str::<Option<Vec<&RawValue>>>(raw.get()) else {
        return Ok(Vec::new());
    };
    Ok(items
        .iter()
        .filter_map(|item| serde_json::from_str(item.get()).ok())
        .collect())
}

/// A string map whose entries are kept only when both sides are strings.
fn lenient_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = <&RawValue>::deserialize(d)?;
    // The common case, every value a string, in one pass.
    if let Ok(map) = serde_json::from_str::<Option<BTreeMap<String, String>>>(raw.get()) {
        return Ok(map.unwrap_or_default());
    }
    let Ok(Some(entries)) = serde_json::from_str::<Option<BTreeMap<String, &RawValue>>>(raw.get()) else {
        return Ok(BTreeMap::new());
    };
    Ok(entries
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_str::<String>(v.get()).ok().map(|v| (k, v)))
        .collect())
}

/// A status object (`{"status": …, "message": …}`), also accepted as a bare status string.
fn status_or_string<'de, D: Deserializer<'de>, T: DeserializeOwned + Default + From<String>>(
    d: D,
) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape<T> {
        Full(T),
        Status(String),
    }
    Ok(match Option::<Shape<T>>::deserialize(d)? {
        Some(Shape::Full(t)) => t,
        Some(Shape::Status(s)) => T::from(s),
        None => T::default(),
    })
}

/// Parses an RFC 3339 time leniently: an unparsable value counts as absent rather than failing.
fn lenient_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<jiff::Timestamp>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.and_then(|s| s.parse().ok()))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireMeta {
    #[serde(deserialize_with = "nd")]
    name: String,
    #[serde(deserialize_with = "nd")]
    namespace: String,
    #[serde(rename = "resourceVersion", deserialize_with = "nd")]
    resource_version: String,
    #[serde(deserialize_with = "annotations")]
    annotations: BTreeMap<String, String>,
    #[serde(deserialize_with = "lenient_map")]
    labels: BTreeMap<String, String>,
    #[serde(rename = "ownerReferences", deserialize_with = "lenient_vec")]
    owner_references: Vec<WireOwnerRef>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireOwnerRef {
    #[serde(deserialize_with = "nd")]
    kind: String,
    #[serde(deserialize_with = "nd")]
    name: String,
}

impl WireMeta {
    /// The ApplicationSet that owns the object, if one does.
    fn owning_appset(&self) -> Option<String> {
        self.owner_references
            .iter()
            .find(|o| o.kind == "ApplicationSet" && !o.name.is_empty())
            .map(|o| o.name.clone())
    }
}

/// Annotations that only repeat the object, left out of the model: `kubectl apply` keeps a copy
/// of the whole object in one (often most of an Application's size), which nothing reads and
/// which would otherwise be held for every application and relayed with each change.
const COPIES_OF_THE_OBJECT: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// An object's annotations, leniently, without [`COPIES_OF_THE_OBJECT`].
fn annotations<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let mut map = lenient_map(d)?;
    for key in COPIES_OF_THE_OBJECT {
        map.remove(*key);
    }
    Ok(map)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireSource {
    #[serde(rename = "repoURL", deserialize_with = "nd")]
    repo_url: CompactString,
    #[serde(deserialize_with = "nd")]
    path: CompactString,
    #[serde(deserialize_with = "nd")]
    chart: CompactString,
    #[serde(rename = "targetRevision", deserialize_with = "nd")]
    target_revision: CompactString,
    #[serde(rename = "ref", deserialize_with = "nd")]
    reference: CompactString,
    #[serde(deserialize_with = "nd")]
    name: CompactString,
}

impl From<WireSource> for Source {
    fn from(w: WireSource) -> Self {
        Source {
            repo_url: w.repo_url,
            path: w.path,
            chart: w.chart,
            target_revision: w.target_revision,
            reference: w.reference,
            name: w.name,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireDestination {
    #[serde(deserialize_with = "nd")]
    server: CompactString,
    #[serde(deserialize_with = "nd")]
    name: CompactString,
    #[serde(deserialize_with = "nd")]
    namespace: CompactString,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireAutomated {
    #[serde(deserialize_with = "nd")]
    prune: bool,
    #[serde(rename = "selfHeal", deserialize_with = "nd")]
    self_heal: bool,
    /// Nil means enabled: `automated: {}` turns automated sync on.
    #[serde(deserialize_with = "nd")]
    enabled: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireSyncPolicy {
    #[serde(deserialize_with = "lenient")]
    automated: Option<WireAutomated>,
    #[serde(rename = "syncOptions", deserialize_with = "lenient")]
    sync_options: Vec<String>,
}

impl From<Option<WireSyncPolicy>> for SyncPolicy {
    fn from(w: Option<WireSyncPolicy>) -> Self {
        let w = w.unwrap_or_default();
        let automated = w.automated.as_ref().is_some_and(|a| a.enabled != Some(false));
        SyncPolicy {
            automated,
            prune: automated && w.automated.as_ref().is_some_and(|a| a.prune),
            self_heal: automated && w.automated.as_ref().is_some_and(|a| a.self_heal),
            sync_options: w.sync_options,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireSpec {
    #[serde(deserialize_with = "nd")]
    project: String,
    #[serde(deserialize_with = "lenient")]
    source: Option<WireSource>,
    #[serde(deserialize_with = "lenient_vec")]
    sources: Vec<WireSource>,
    #[serde(deserialize_with = "lenient")]
    destination: WireDestination,
    #[serde(rename = "syncPolicy", deserialize_with = "lenient")]
    sync_policy: Option<WireSyncPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireSync {
    status: SyncStatusCode,
    #[serde(deserialize_with = "nd")]
    revision: String,
    #[serde(deserialize_with = "nd")]
    revisions: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireHealth {
    status: HealthStatusCode,
    #[serde(deserialize_with = "nd")]
    message: CompactString,
}

impl From<String> for WireHealth {
    fn from(status: String) -> Self {
        Self {
            status: HealthStatusCode::parse(&status),
            message: CompactString::default(),
        }
    }
}

impl From<String> for WireSync {
    fn from(status: String) -> Self {
        Self {
            status: SyncStatusCode::parse(&status),
            ..Self::default()
        }
    }
}

impl From<WireHealth> for Health {
    fn from(w: WireHealth) -> Self {
        Health {
            status: w.status,
            message: w.message,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireSyncOperation {
    #[serde(deserialize_with = "nd")]
    revision: String,
    #[serde(deserialize_with = "nd")]
    revisions: Vec<String>,
    #[serde(rename = "dryRun", deserialize_with = "nd")]
    dry_run: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireOperationSpec {
    #[serde(deserialize_with = "nd")]
    sync: WireSyncOperation,
}

/// One entry of `syncResult.resources`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WireResourceResult {
    #[serde(deserialize_with = "nd")]
    group: CompactString,
    #[serde(deserialize_with = "nd")]
    kind: CompactString,
    #[serde(deserialize_with = "nd")]
    namespace: CompactString,
    #[serde(deserialize_with = "nd")]
    name: CompactString,
    #[serde(deserialize_with = "nd")]
    status: CompactString,
    #[serde(deserialize_with = "nd")]
    message: String,
    #[serde(rename = "hookType", deserialize_with = "nd")]
    hook_type: CompactString,
    #[serde(rename = "hookPhase", deserialize_with = "nd")]
    hook_phase: CompactString,
    #[serde(rename = "syncPhase", deserialize_with = "nd")]
    sync_phase: CompactString,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireSyncResult {
    #[serde(deserialize_with = "nd")]
    revision: String,
    #[serde(deserialize_with = "nd")]
    revisions: Vec<String>,
    #[serde(deserialize_with = "lenient_vec")]
    resources: Vec<WireResourceResult>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireHistory {
    #[serde(deserialize_with = "nd")]
    id: i64,
    #[serde(deserialize_with = "nd")]
    revision: String,
    #[serde(deserialize_with = "nd")]
    revisions: Vec<String>,
    #[serde(rename = "deployedAt", deserialize_with = "lenient_time")]
    deployed_at: Option<jiff::Timestamp>,
}

/// Phases a task is still busy in.
fn task_running(hook_phase: &str) -> bool {
    matches!(hook_phase, "Running" | "Pending" | "Terminating")
}

/// The hook and wave progress of a sync result; waves come from `status.resources`.
fn progress(results: Vec<WireResourceResult>, resources: &[WireResource]) -> Option<OperationProgress> {
    if results.is_empty() {
        return None;
    }
    let wave_of = |r: &WireResourceResult| {
        resources
            .iter()
            .find(|s| s.group == r.group && s.kind == r.kind && s.namespace == r.namespace && s.name == r.name)
            .and_then(|s| s.sync_wave)
    };
    let mut p = OperationProgress::default();
    let mut running_wave: Option<i64> = None;
    let mut highest_wave: Option<i64> = None;
    let mut running_phase = None;
    let mut last_phase = CompactString::default();
    for r in results {
        let wave = wave_of(&r);
        let phase_key = if r.hook_phase.is_empty() {
            "Pending"
        } else {
            &r.hook_phase
        };
        // Looked up before inserting: a key is allocated once per phase, not once per task.
        match p.phases.get_mut(phase_key) {
            Some(n) => *n += 1,
            None => {
                p.phases.insert(phase_key.to_owned(), 1);
            }
        }
        if let Some(w) = wave {
            highest_wave = Some(highest_wave.map_or(w, |h| h.max(w)));
        }
        if task_running(&r.hook_phase) {
            if let Some(w) = wave {
                running_wave = Some(running_wave.map_or(w, |h| h.min(w)));
            }
            running_phase.get_or_insert_with(|| r.sync_phase.clone());
        }
        if !r.sync_phase.is_empty() {
            last_phase = r.sync_phase.clone();
        }
        let failed = matches!(r.hook_phase.as_str(), "Failed" | "Error") || r.status == "SyncFailed";
        let task = || SyncTask {
            group: r.group.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            hook_type: r.hook_type.clone(),
            hook_phase: r.hook_phase.clone(),
            status: r.status.clone(),
            sync_phase: r.sync_phase.clone(),
            wave,
            message: r.message.clone(),
        };
        if !r.hook_type.is_empty() {
            if p.hooks.len() < MAX_PROGRESS_TASKS {
                p.hooks.push(task());
            }
        } else if failed && p.failed.len() < MAX_PROGRESS_TASKS {
            p.failed.push(task());
        }
    }
    p.sync_phase = running_phase.unwrap_or(last_phase);
    p.wave = running_wave.or(highest_wave);
    Some(p)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireOperationState {
    phase: OperationPhase,
    #[serde(deserialize_with = "nd")]
    message: String,
    #[serde(rename = "startedAt", deserialize_with = "lenient_time")]
    started_at: Option<jiff::Timestamp>,
    #[serde(rename = "finishedAt", deserialize_with = "lenient_time")]
    finished_at: Option<jiff::Timestamp>,
    #[serde(deserialize_with = "lenient")]
    operation: WireOperationSpec,
    #[serde(rename = "syncResult", deserialize_with = "lenient")]
    sync_result: WireSyncResult,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireResource {
    #[serde(deserialize_with = "nd")]
    group: CompactString,
    #[serde(deserialize_with = "nd")]
    version: CompactString,
    #[serde(deserialize_with = "nd")]
    kind: CompactString,
    #[serde(deserialize_with = "nd")]
    namespace: CompactString,
    #[serde(deserialize_with = "nd")]
    name: CompactString,
    status: SyncStatusCode,
    #[serde(deserialize_with = "lenient")]
    health: Option<WireHealth>,
    #[serde(rename = "syncWave", deserialize_with = "lenient")]
    sync_wave: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireCondition {
    #[serde(rename = "type", deserialize_with = "nd")]
    kind: String,
    #[serde(deserialize_with = "nd")]
    message: String,
    #[serde(rename = "lastTransitionTime", deserialize_with = "lenient_time")]
    last_transition_time: Option<jiff::Timestamp>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireSummary {
    #[serde(deserialize_with = "nd")]
    images: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireStatus {
    #[serde(deserialize_with = "status_or_string")]
    sync: WireSync,
    #[serde(deserialize_with = "status_or_string")]
    health: WireHealth,
    #[serde(rename = "operationState", deserialize_with = "nd")]
    operation_state: Option<WireOperationState>,
    #[serde(rename = "reconciledAt", deserialize_with = "lenient_time")]
    reconciled_at: Option<jiff::Timestamp>,
    #[serde(deserialize_with = "lenient_vec")]
    resources: Vec<WireResource>,
    #[serde(deserialize_with = "lenient")]
    summary: WireSummary,
    #[serde(deserialize_with = "lenient_vec")]
    conditions: Vec<WireCondition>,
    #[serde(rename = "resourceHealthSource", deserialize_with = "nd")]
    resource_health_source: String,
    #[serde(deserialize_with = "lenient_vec")]
    history: Vec<WireHistory>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireApplication {
    #[serde(deserialize_with = "nd")]
    metadata: WireMeta,
    #[serde(deserialize_with = "nd")]
    spec: WireSpec,
    #[serde(deserialize_with = "nd")]
    status: WireStatus,
}

/// An application decoded from Argo CD, with the bookkeeping the view needs beside the model.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedApp {
    /// The compact model.
    pub app: Application,
    /// `metadata.resourceVersion` of the object.
    pub resource_version: String,
    /// True when Argo CD keeps per-resource health in its resource tree
    /// (`status.resourceHealthSource: appTree`), so a list response carries none.
    pub resource_health_in_tree: bool,
}

impl From<WireApplication> for DecodedApp {
    fn from(w: WireApplication) -> Self {
        let WireApplication { metadata, spec, status } = w;
        let application_set = metadata.owning_appset();
        let sources = if !spec.sources.is_empty() {
            spec.sources.into_iter().map(Source::from).collect()
        } else {
            spec.source.into_iter().map(Source::from).collect()
        };
        let operation = status.operation_state.map(|op| {
            let WireSyncResult {
                revision: result_revision,
                revisions: result_revisions,
                resources: results,
            } = op.sync_result;
            // The sync result names what was actually applied; the request is the fallback while running.
            let (revision, revisions) = if result_revision.is_empty() && result_revisions.is_empty() {
                (op.operation.sync.revision, op.operation.sync.revisions)
            } else {
                (result_revision, result_revisions)
            };
            Operation {
                phase: op.phase,
                message: op.message,
                started_at: op.started_at,
                finished_at: op.finished_at,
                revision,
                revisions,
                dry_run: op.operation.sync.dry_run,
                progress: progress(results, &status.resources),
            }
        });
        let skip = status.history.len().saturating_sub(MAX_HISTORY);
        let history = status
            .history
            .into_iter()
            .skip(skip)
            .map(|h| HistoryEntry {
                id: h.id,
                revision: h.revision,
                revisions: h.revisions,
                deployed_at: h.deployed_at,
            })
            .collect();
        let project = if spec.project.is_empty() {
            "default".to_owned()
        } else {
            spec.project
        };
        DecodedApp {
            app: Application {
                namespace: metadata.namespace,
                name: metadata.name,
                project,
                annotations: metadata.annotations.into_iter().collect(),
                labels: metadata.labels.into_iter().collect(),
                sources,
                destination: Destination {
                    server: spec.destination.server,
                    name: spec.destination.name,
                    namespace: spec.destination.namespace,
                },
                sync: SyncState {
                    status: status.sync.status,
                    revision: status.sync.revision,
                    revisions: status.sync.revisions,
                },
                health: status.health.into(),
                operation,
                sync_policy: Some(spec.sync_policy.into()),
                history,
                reconciled_at: status.reconciled_at,
                resources: status
                    .resources
                    .into_iter()
                    .map(|r| ResourceState {
                        group: r.group,
                        version: r.version,
                        kind: r.kind,
                        namespace: r.namespace,
                        name: r.name,
                        status: r.status,
                        health: r.health.map(Health::from),
                    })
                    .collect(),
                images: status.summary.images,
                conditions: status
                    .conditions
                    .into_iter()
                    .map(|c| Condition {
                        kind: c.kind,
                        message: c.message,
                        last_transition_time: c.last_transition_time,
                    })
                    .collect(),
                application_set,
                undecodable: None,
                too_large: None,
            },
            resource_version: metadata.resource_version,
            resource_health_in_tree: status.resource_health_source == "appTree",
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireConnectionState {
    #[serde(deserialize_with = "nd")]
    status: String,
    #[serde(deserialize_with = "nd")]
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireClusterInfo {
    #[serde(rename = "connectionState", deserialize_with = "nd")]
    connection_state: Option<WireConnectionState>,
    #[serde(rename = "serverVersion", deserialize_with = "nd")]
    server_version: String,
    #[serde(rename = "applicationsCount", deserialize_with = "nd")]
    applications_count: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireCluster {
    #[serde(deserialize_with = "nd")]
    server: String,
    #[serde(deserialize_with = "nd")]
    name: String,
    #[serde(deserialize_with = "nd")]
    project: String,
    #[serde(deserialize_with = "nd")]
    namespaces: Vec<String>,
    #[serde(deserialize_with = "nd")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "nd")]
    annotations: BTreeMap<String, String>,
    #[serde(deserialize_with = "nd")]
    info: WireClusterInfo,
    // Deprecated top-level copies, still sent by the server for old clients.
    #[serde(rename = "connectionState", deserialize_with = "nd")]
    connection_state: Option<WireConnectionState>,
    #[serde(rename = "serverVersion", deserialize_with = "nd")]
    server_version: String,
}

impl From<WireCluster> for Cluster {
    fn from(w: WireCluster) -> Self {
        let cs = w.info.connection_state.or(w.connection_state).unwrap_or_default();
        let server_version = if w.info.server_version.is_empty() {
            w.server_version
        } else {
            w.info.server_version
        };
        Cluster {
            server: w.server,
            name: w.name,
            project: w.project,
            namespaces: w.namespaces,
            labels: w.labels,
            annotations: w.annotations,
            connection_state: ConnectionState {
                status: cs.status,
                message: cs.message,
            },
            server_version,
            applications_count: w.info.applications_count,
            undecodable: None,
            too_large: None,
        }
    }
}

/// Why one object could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct DecodeError {
    /// What was being decoded.
    pub what: String,
    /// The JSON error.
    pub reason: String,
}

/// Decodes one Argo CD Application object.
pub fn decode_application(json: &str) -> Result<DecodedApp, DecodeError> {
    serde_json::from_str::<WireApplication>(json)
        .map(DecodedApp::from)
        .map_err(|e| DecodeError {
            what: "application".into(),
            reason: e.to_string(),
        })
}

/// Decodes one Argo CD Cluster object.
pub fn decode_cluster(json: &str) -> Result<Cluster, DecodeError> {
    serde_json::from_str::<WireCluster>(json)
        .map(Cluster::from)
        .map_err(|e| DecodeError {
            what: "cluster".into(),
            reason: e.to_string(),
        })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireListMeta {
    #[serde(rename = "resourceVersion", deserialize_with = "nd")]
    resource_version: String,
}

/// A decoded list: the items that decoded, the list's resourceVersion, and the ones skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedList<T> {
    /// `metadata.resourceVersion` of the list (where a watch starts).
    pub resource_version: String,
    /// Items that decoded.
    pub items: Vec<T>,
    /// Items that failed to decode (already logged), so one odd object never fails the list;
    /// with who they are when that much could be read, so their last known state is kept.
    pub skipped: Vec<Skipped>,
}

impl<T> Default for DecodedList<T> {
    fn default() -> Self {
        Self {
            resource_version: String::new(),
            items: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

/// An object of a list that could not be decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    /// Who it is, when its identity could be read.
    pub id: Option<ObjectId>,
    /// Why it could not be decoded.
    pub error: DecodeError,
}

/// The identity of an object that could not be decoded as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    /// The application's namespace (empty for a cluster).
    pub namespace: String,
    /// The application's name, or the cluster's server URL.
    pub name: String,
    /// The application's project, when readable (empty otherwise).
    pub project: String,
}

/// One element of a list: decoded, or skipped with who it is when that much could be read.
#[derive(Clone, Debug, PartialEq)]
pub enum ListItem<T> {
    /// It decoded.
    Decoded(T),
    /// It did not (already logged).
    Skipped(Skipped),
}

/// What kind of list an element belongs to: how it decodes and is identified.
pub trait ListKind {
    /// The decoded element.
    type Item;
    /// "application", "cluster": for messages.
    const WHAT: &'static str;
    /// Decodes one element's raw JSON.
    fn decode(raw: &[u8]) -> Result<Self::Item, serde_json::Error>;
    /// Reads just who an element is, for one that failed to decode.
    fn identify(raw: &[u8]) -> Option<ObjectId>;
}

/// Applications.
pub struct Applications;

impl ListKind for Applications {
    type Item = DecodedApp;
    const WHAT: &'static str = "application";

    fn decode(raw: &[u8]) -> Result<DecodedApp, serde_json::Error> {
        serde_json::from_slice::<WireApplication>(raw).map(DecodedApp::from)
    }

    fn identify(raw: &[u8]) -> Option<ObjectId> {
        #[derive(Deserialize)]
        struct Meta {
            name: String,
            #[serde(default, deserialize_with = "lenient")]
            namespace: String,
        }
        #[derive(Deserialize, Default)]
        struct Spec {
            #[serde(default, deserialize_with = "lenient")]
            project: String,
        }
        #[derive(Deserialize)]
        struct Id {
            metadata: Meta,
            #[serde(default, deserialize_with = "lenient")]
            spec: Spec,
        }
        let id: Id = serde_json::from_slice(raw).ok()?;
        (!id.metadata.name.is_empty()).then(|| ObjectId {
            namespace: id.metadata.namespace,
            name: id.metadata.name,
            project: if id.spec.project.is_empty() {
                "default".into()
            } else {
                id.spec.project
            },
        })
    }
}

/// Clusters.
pub struct Clusters;

impl ListKind for Clusters {
    type Item = Cluster;
    const WHAT: &'static str = "cluster";

    fn decode(raw: &[u8]) -> Result<Cluster, serde_json::Error> {
        serde_json::from_slice::<WireCluster>(raw).map(Cluster::from)
    }

    fn identify(raw: &[u8]) -> Option<ObjectId> {
        #[derive(Deserialize)]
        struct Id {
            server: String,
        }
        let id: Id = serde_json::from_slice(raw).ok()?;
        (!id.server.is_empty()).then(|| ObjectId {
            namespace: String::new(),
            name: id.server,
            project: String::new(),
        })
    }
}

/// The key of an application's raw JSON, read from the first fields of its `metadata` only
/// (Argo CD writes `metadata` first, with `name` and `namespace` at its start), so finding it
/// costs a small fraction of a parse. Only a hint for a lookup: whatever it returns, the caller
/// still compares the whole item's bytes. `None` when it cannot be read.
pub fn quick_app_key(raw: &[u8]) -> Option<AppKey> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use std::borrow::Cow;

    #[derive(Default)]
    struct Found {
        name: Option<String>,
        namespace: Option<String>,
    }
    struct Top<'a>(&'a mut Found);
    struct Meta<'a>(&'a mut Found);
    impl<'de> Visitor<'de> for Top<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                if k == "metadata" {
                    // Stopping here leaves the rest unread: the parse ends in an error that the
                    // caller ignores, having what it came for.
                    return map.next_value_seed(Meta(self.0));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Meta<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Meta<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("metadata")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                match &*k {
                    "name" => self.0.name = Some(map.next_value()?),
                    "namespace" => self.0.namespace = Some(map.next_value()?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                if self.0.name.is_some() && self.0.namespace.is_some() {
                    return Ok(());
                }
            }
            Ok(())
        }
    }
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(raw);
    let _ = de.deserialize_map(Top(&mut found));
    let name = found.name.filter(|n| !n.is_empty())?;
    Some(AppKey::new(found.namespace.unwrap_or_default(), name))
}

/// Decodes the `index`th element of a list; one that does not decode is logged and skipped, so
/// one odd object never fails the list.
pub fn decode_list_item<K: ListKind>(raw: &[u8], index: usize) -> ListItem<K::Item> {
    match K::decode(raw) {
        Ok(item) => ListItem::Decoded(item),
        Err(e) => {
            let id = K::identify(raw);
            let who = id
                .as_ref()
                .map(|id| {
                    if id.namespace.is_empty() {
                        id.name.clone()
                    } else {
                        format!("{}/{}", id.namespace, id.name)
                    }
                })
                .unwrap_or_else(|| format!("#{index} (unidentifiable)"));
            tracing::warn!(object = %who, error = %e, "an Argo CD {} cannot be decoded; keeping its last known state", K::WHAT);
            ListItem::Skipped(Skipped {
                id,
                error: DecodeError {
                    what: format!("{} {who}", K::WHAT),
                    reason: e.to_string(),
                },
            })
        }
    }
}

/// The `resourceVersion` of a list's raw `metadata` (empty when it cannot be read: the view
/// then orders nothing by it).
pub fn decode_list_meta(raw: &[u8]) -> String {
    serde_json::from_slice::<Option<WireListMeta>>(raw)
        .ok()
        .flatten()
        .unwrap_or_default()
        .resource_version
}

/// Decodes a whole list body held in memory (the client decodes as the body arrives instead).
pub fn decode_list<K: ListKind>(bytes: &[u8]) -> Result<DecodedList<K::Item>, DecodeError> {
    let mut out = DecodedList {
        resource_version: String::new(),
        items: Vec::new(),
        skipped: Vec::new(),
    };
    let mut splitter = super::split::ListSplitter::new(usize::MAX);
    let mut index = 0;
    let err = |e: super::split::SplitError| DecodeError {
        what: format!("{} list", K::WHAT),
        reason: e.to_string(),
    };
    splitter
        .feed(bytes, &mut |piece| match piece {
            super::split::Piece::Meta(m) => out.resource_version = decode_list_meta(m),
            super::split::Piece::Item(raw) => {
                match decode_list_item::<K>(raw, index) {
                    ListItem::Decoded(item) => out.items.push(item),
                    ListItem::Skipped(s) => out.skipped.push(s),
                }
                index += 1;
            }
        })
        .map_err(err)?;
    splitter.finish().map_err(err)?;
    Ok(out)
}

/// Decodes an `ApplicationList`, skipping (and logging) items that do not decode.
pub fn decode_application_list(bytes: &[u8]) -> Result<DecodedList<DecodedApp>, DecodeError> {
    decode_list::<Applications>(bytes)
}

/// Decodes a `ClusterList`, skipping (and logging) items that do not decode.
pub fn decode_cluster_list(bytes: &[u8]) -> Result<DecodedList<Cluster>, DecodeError> {
    decode_list::<Clusters>(bytes)
}

// ---------------------------------------------------------------------------------------------
// ApplicationSets and AppProjects (field names: swagger.json `v1alpha1ApplicationSet*`,
// `v1alpha1AppProject*`, and the generated v1alpha1 proto).

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireAppSetTemplate {
    #[serde(deserialize_with = "lenient")]
    spec: WireSpec,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireRollingSync {
    #[serde(deserialize_with = "lenient_vec")]
    steps: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireAppSetStrategy {
    #[serde(rename = "type", deserialize_with = "nd")]
    kind: String,
    #[serde(rename = "rollingSync", deserialize_with = "lenient")]
    rolling_sync: Option<WireRollingSync>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireAppSetSpec {
    #[serde(deserialize_with = "lenient_vec")]
    generators: Vec<BTreeMap<String, Box<RawValue>>>,
    #[serde(deserialize_with = "lenient")]
    template: WireAppSetTemplate,
    #[serde(deserialize_with = "lenient")]
    strategy: Option<WireAppSetStrategy>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireAppSetCondition {
    #[serde(rename = "type", deserialize_with = "nd")]
    kind: String,
    #[serde(deserialize_with = "nd")]
    status: String,
    #[serde(deserialize_with = "nd")]
    reason: String,
    #[serde(deserialize_with = "nd")]
    message: String,
    #[serde(rename = "lastTransitionTime", deserialize_with = "lenient_time")]
    last_transition_time: Option<jiff::Timestamp>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireAppSetAppStatus {
    #[serde(deserialize_with = "nd")]
    application: String,
    #[serde(deserialize_with = "nd")]
    status: String,
    #[serde(deserialize_with = "nd")]
    step: String,
    #[serde(deserialize_with = "nd")]
    message: String,
    // Go's json tag is all lower case here.
    #[serde(rename = "targetrevisions", deserialize_with = "lenient")]
    target_revisions: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireAppSetStatus {
    #[serde(deserialize_with = "lenient_vec")]
    conditions: Vec<WireAppSetCondition>,
    #[serde(rename = "applicationStatus", deserialize_with = "lenient_vec")]
    application_status: Vec<WireAppSetAppStatus>,
    #[serde(deserialize_with = "lenient_vec")]
    resources: Vec<WireResource>,
    #[serde(rename = "resourcesCount", deserialize_with = "lenient")]
    resources_count: i64,
    #[serde(deserialize_with = "lenient")]
    health: WireHealth,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireAppSet {
    #[serde(deserialize_with = "nd")]
    metadata: WireMeta,
    #[serde(deserialize_with = "nd")]
    spec: WireAppSetSpec,
    #[serde(deserialize_with = "nd")]
    status: WireAppSetStatus,
}

/// The generator kinds of one `generators` entry (`selector` is a post-filter, not a kind).
fn generator(entry: &BTreeMap<String, Box<RawValue>>) -> Option<Generator> {
    #[derive(Deserialize, Default)]
    struct Combined {
        #[serde(default, deserialize_with = "lenient_vec")]
        generators: Vec<BTreeMap<String, serde::de::IgnoredAny>>,
    }
    let (kind, raw) = entry.iter().find(|(k, _)| k.as_str() != "selector")?;
    let generators = if kind == "matrix" || kind == "merge" {
        serde_json::from_str::<Combined>(raw.get())
            .unwrap_or_default()
            .generators
            .iter()
            .filter_map(|g| g.keys().find(|k| k.as_str() != "selector").cloned())
            .collect()
    } else {
        vec![]
    };
    Some(Generator {
        kind: kind.clone(),
        generators,
    })
}

/// An ApplicationSet decoded from Argo CD, with its resourceVersion.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedAppSet {
    /// The compact model.
    pub appset: ApplicationSet,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
}

impl From<WireAppSet> for DecodedAppSet {
    fn from(w: WireAppSet) -> Self {
        let WireAppSet { metadata, spec, status } = w;
        let tspec = spec.template.spec;
        let sources = if !tspec.sources.is_empty() {
            tspec.sources.into_iter().map(Source::from).collect()
        } else {
            tspec.source.into_iter().map(Source::from).collect()
        };
        let project = if tspec.project.is_empty() {
            "default".to_owned()
        } else {
            tspec.project
        };
        DecodedAppSet {
            appset: ApplicationSet {
                namespace: metadata.namespace.clone(),
                name: metadata.name.clone(),
                project: project.clone(),
                labels: metadata.labels.clone(),
                generators: spec.generators.iter().filter_map(generator).collect(),
                template: AppTemplate {
                    project,
                    sources,
                    destination: Destination {
                        server: tspec.destination.server,
                        name: tspec.destination.name,
                        namespace: tspec.destination.namespace,
                    },
                },
                conditions: status
                    .conditions
                    .into_iter()
                    .map(|c| AppSetCondition {
                        kind: c.kind,
                        status: c.status,
                        reason: c.reason,
                        message: c.message,
                        last_transition_time: c.last_transition_time,
                    })
                    .collect(),
                health: status.health.into(),
                strategy: spec.strategy.map(|s| AppSetStrategy {
                    kind: s.kind,
                    steps: s.rolling_sync.map_or(0, |r| r.steps.len() as u32),
                }),
                application_status: status
                    .application_status
                    .into_iter()
                    .map(|a| AppSetApplicationStatus {
                        application: a.application,
                        status: a.status,
                        step: a.step,
                        message: a.message,
                        target_revisions: a.target_revisions,
                    })
                    .collect(),
                resources: status
                    .resources
                    .into_iter()
                    .filter(|r| r.kind == "Application" || r.kind.is_empty())
                    .map(|r| OwnedApplication {
                        namespace: r.namespace.into(),
                        name: r.name.into(),
                        status: r.status,
                        health: r.health.map(Health::from),
                    })
                    .collect(),
                resources_count: status.resources_count,
                undecodable: None,
                too_large: None,
            },
            resource_version: metadata.resource_version,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireGroupKind {
    #[serde(deserialize_with = "nd")]
    group: String,
    #[serde(deserialize_with = "nd")]
    kind: String,
    #[serde(deserialize_with = "nd")]
    name: String,
}

impl From<WireGroupKind> for GroupKind {
    fn from(w: WireGroupKind) -> Self {
        GroupKind {
            group: w.group,
            kind: w.kind,
            name: w.name,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireRole {
    #[serde(deserialize_with = "nd")]
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireSyncWindow {
    #[serde(deserialize_with = "nd")]
    kind: String,
    #[serde(deserialize_with = "nd")]
    schedule: String,
    #[serde(deserialize_with = "nd")]
    duration: String,
    #[serde(rename = "timeZone", deserialize_with = "nd")]
    time_zone: String,
    #[serde(deserialize_with = "lenient")]
    applications: Vec<String>,
    #[serde(deserialize_with = "lenient")]
    namespaces: Vec<String>,
    #[serde(deserialize_with = "lenient")]
    clusters: Vec<String>,
    #[serde(rename = "manualSync", deserialize_with = "lenient")]
    manual_sync: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireProjectSpec {
    #[serde(deserialize_with = "nd")]
    description: String,
    #[serde(rename = "sourceRepos", deserialize_with = "lenient")]
    source_repos: Vec<String>,
    #[serde(rename = "sourceNamespaces", deserialize_with = "lenient")]
    source_namespaces: Vec<String>,
    #[serde(deserialize_with = "lenient_vec")]
    destinations: Vec<WireDestination>,
    #[serde(rename = "clusterResourceWhitelist", deserialize_with = "lenient_vec")]
    cluster_resource_whitelist: Vec<WireGroupKind>,
    #[serde(rename = "clusterResourceBlacklist", deserialize_with = "lenient_vec")]
    cluster_resource_blacklist: Vec<WireGroupKind>,
    #[serde(rename = "namespaceResourceWhitelist", deserialize_with = "lenient_vec")]
    namespace_resource_whitelist: Vec<WireGroupKind>,
    #[serde(rename = "namespaceResourceBlacklist", deserialize_with = "lenient_vec")]
    namespace_resource_blacklist: Vec<WireGroupKind>,
    #[serde(deserialize_with = "lenient_vec")]
    roles: Vec<WireRole>,
    #[serde(rename = "syncWindows", deserialize_with = "lenient_vec")]
    sync_windows: Vec<WireSyncWindow>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WireProject {
    #[serde(deserialize_with = "nd")]
    metadata: WireMeta,
    #[serde(deserialize_with = "nd")]
    spec: WireProjectSpec,
}

impl From<WireProject> for Project {
    fn from(w: WireProject) -> Self {
        let s = w.spec;
        let kinds = |v: Vec<WireGroupKind>| v.into_iter().map(GroupKind::from).collect::<Vec<_>>();
        Project {
            name: w.metadata.name,
            description: s.description,
            source_repos: s.source_repos,
            source_namespaces: s.source_namespaces,
            destinations: s
                .destinations
                .into_iter()
                .map(|d| Destination {
                    server: d.server,
                    name: d.name,
                    namespace: d.namespace,
                })
                .collect(),
            cluster_resource_whitelist: kinds(s.cluster_resource_whitelist),
            cluster_resource_blacklist: kinds(s.cluster_resource_blacklist),
            namespace_resource_whitelist: kinds(s.namespace_resource_whitelist),
            namespace_resource_blacklist: kinds(s.namespace_resource_blacklist),
            roles: s.roles.into_iter().map(|r| r.name).filter(|n| !n.is_empty()).collect(),
            sync_windows: s
                .sync_windows
                .into_iter()
                .map(|w| SyncWindow {
                    kind: w.kind,
                    schedule: w.schedule,
                    duration: w.duration,
                    time_zone: w.time_zone,
                    applications: w.applications,
                    namespaces: w.namespaces,
                    clusters: w.clusters,
                    manual_sync: w.manual_sync,
                    active: None,
                })
                .collect(),
            undecodable: None,
            too_large: None,
        }
    }
}

/// ApplicationSets.
pub struct AppSets;

impl ListKind for AppSets {
    type Item = DecodedAppSet;
    const WHAT: &'static str = "applicationset";

    fn decode(raw: &[u8]) -> Result<DecodedAppSet, serde_json::Error> {
        serde_json::from_slice::<WireAppSet>(raw).map(DecodedAppSet::from)
    }

    fn identify(raw: &[u8]) -> Option<ObjectId> {
        Applications::identify(raw).map(|mut id| {
            // An ApplicationSet's project is its template's; without it, the filters see none.
            id.project = String::new();
            id
        })
    }
}

/// AppProjects.
pub struct Projects;

impl ListKind for Projects {
    type Item = Project;
    const WHAT: &'static str = "project";

    fn decode(raw: &[u8]) -> Result<Project, serde_json::Error> {
        serde_json::from_slice::<WireProject>(raw).map(Project::from)
    }

    fn identify(raw: &[u8]) -> Option<ObjectId> {
        Applications::identify(raw).map(|id| ObjectId {
            namespace: String::new(),
            name: id.name,
            project: String::new(),
        })
    }
}

/// Decodes one Argo CD ApplicationSet object.
pub fn decode_appset(json: &str) -> Result<DecodedAppSet, DecodeError> {
    serde_json::from_str::<WireAppSet>(json)
        .map(DecodedAppSet::from)
        .map_err(|e| DecodeError {
            what: "applicationset".into(),
            reason: e.to_string(),
        })
}

/// Decodes a whole `ApplicationSetList`, skipping (and logging) items that do not decode.
pub fn decode_appset_list(bytes: &[u8]) -> Result<DecodedList<DecodedAppSet>, DecodeError> {
    decode_list::<AppSets>(bytes)
}

/// Decodes a whole `AppProjectList`, skipping (and logging) items that do not decode.
pub fn decode_project_list(bytes: &[u8]) -> Result<DecodedList<Project>, DecodeError> {
    decode_list::<Projects>(bytes)
}

/// One ApplicationSet watch event.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSetWatchEvent {
    /// ADDED, MODIFIED or DELETED.
    pub kind: WatchEventType,
    /// The ApplicationSet as of the event.
    pub appset: DecodedAppSet,
}

/// Decodes the `result` of an ApplicationSet watch chunk (`{"type", "applicationSet"}`).
pub fn decode_appset_watch_result(json: &str) -> Result<AppSetWatchEvent, DecodeError> {
    #[derive(Deserialize)]
    struct W {
        #[serde(rename = "type", default, deserialize_with = "nd")]
        kind: String,
        #[serde(rename = "applicationSet", default, deserialize_with = "nd")]
        appset: WireAppSet,
    }
    let w: W = serde_json::from_str(json).map_err(|e| DecodeError {
        what: "applicationset watch event".into(),
        reason: e.to_string(),
    })?;
    Ok(AppSetWatchEvent {
        kind: watch_type(&w.kind),
        appset: w.appset.into(),
    })
}

fn watch_type(kind: &str) -> WatchEventType {
    match kind {
        "ADDED" => WatchEventType::Added,
        "MODIFIED" => WatchEventType::Modified,
        "DELETED" => WatchEventType::Deleted,
        other => WatchEventType::Other(other.to_owned()),
    }
}

/// The JSON payload of a stream line: NDJSON as is, SSE `data:` stripped; `None` for blank lines,
/// SSE comments (keepalives) and other SSE fields.
pub fn stream_payload(line: &str) -> Option<&str> {
    let l = line.trim();
    if l.is_empty() || l.starts_with(':') {
        return None;
    }
    if let Some(rest) = l.strip_prefix("data:") {
        let rest = rest.trim();
        return (!rest.is_empty()).then_some(rest);
    }
    if l.starts_with('{') {
        return Some(l);
    }
    // `event:`, `id:`, `retry:` carry nothing for us.
    None
}

/// Type of a watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEventType {
    /// The object was added (or is reported at the start of a watch).
    Added,
    /// The object changed.
    Modified,
    /// The object was deleted.
    Deleted,
    /// A type this version does not know; treated like a modification.
    Other(String),
}

/// One application watch event.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvent {
    /// ADDED, MODIFIED or DELETED.
    pub kind: WatchEventType,
    /// The application as of the event.
    pub app: DecodedApp,
}

#[derive(Deserialize)]
struct WireWatchResult {
    #[serde(rename = "type", default, deserialize_with = "nd")]
    kind: String,
    #[serde(default, deserialize_with = "nd")]
    application: WireApplication,
}

/// The error chunk of an Argo CD stream (`{"error":{…}}`, grpc-gateway's snake_case keys).
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct StreamError {
    /// gRPC status code.
    #[serde(deserialize_with = "nd")]
    pub grpc_code: i32,
    /// HTTP status code it maps to.
    #[serde(deserialize_with = "nd")]
    pub http_code: u16,
    /// Message.
    #[serde(deserialize_with = "nd")]
    pub message: String,
    /// HTTP status text.
    #[serde(deserialize_with = "nd")]
    pub http_status: String,
}

#[derive(Deserialize)]
struct WireStreamChunk<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<StreamError>,
}

/// One chunk of a stream: a result or an error.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamChunk<T> {
    /// A result.
    Result(T),
    /// The server reported an error and will end the stream.
    Error(StreamError),
}

/// Decodes one stream chunk, handing the raw `result` to `decode`.
pub fn decode_stream_chunk<T>(
    line: &str,
    decode: impl FnOnce(&str) -> Result<T, DecodeError>,
) -> Result<StreamChunk<T>, DecodeError> {
    let chunk: WireStreamChunk<'_> = serde_json::from_str(line).map_err(|e| DecodeError {
        what: "stream chunk".into(),
        reason: e.to_string(),
    })?;
    match (chunk.error, chunk.result) {
        (Some(e), _) => Ok(StreamChunk::Error(e)),
        (None, Some(r)) => decode(r.get()).map(StreamChunk::Result),
        (None, None) => Err(DecodeError {
            what: "stream chunk".into(),
            reason: "neither result nor error".into(),
        }),
    }
}

/// Decodes one line of an application watch, in one pass when it is a well-formed event (the
/// common case: at a 3.x resync every application comes through here), and otherwise through
/// [`decode_stream_chunk`], which tells an error chunk from a broken one.
pub fn decode_watch_line(line: &str) -> Result<StreamChunk<WatchEvent>, DecodeError> {
    #[derive(Deserialize)]
    struct Typed {
        result: WireWatchResult,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_str::<Typed>(line) {
        Ok(t) if t.error.is_none() => Ok(StreamChunk::Result(t.result.into())),
        _ => decode_stream_chunk(line, decode_watch_result),
    }
}

impl WatchEventType {
    fn from_wire(kind: &str) -> Self {
        match kind {
            "ADDED" => WatchEventType::Added,
            "MODIFIED" => WatchEventType::Modified,
            "DELETED" => WatchEventType::Deleted,
            other => WatchEventType::Other(other.to_owned()),
        }
    }
}

impl From<WireWatchResult> for WatchEvent {
    fn from(w: WireWatchResult) -> Self {
        WatchEvent {
            kind: WatchEventType::from_wire(&w.kind),
            app: w.application.into(),
        }
    }
}

/// Reads an application watch line only as far as its event type and the application's raw
/// JSON (skipped over, not decoded), so a receiver can tell an application it already holds
/// byte for byte from a change before paying for a decode. `None` when the line is not a
/// well-formed event; [`decode_watch_line`] then says what it is.
pub fn peek_watch_line(line: &str) -> Option<(WatchEventType, &str)> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        result: PeekResult<'a>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct PeekResult<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        application: &'a RawValue,
    }
    let peek: Peek<'_> = serde_json::from_str(line).ok()?;
    if peek.error.is_some() {
        return None;
    }
    Some((
        WatchEventType::from_wire(&peek.result.kind),
        peek.result.application.get(),
    ))
}

/// Decodes the application JSON of a peeked watch line ([`peek_watch_line`]) as
/// [`decode_watch_line`] would have decoded the whole line; `None` when it does not decode
/// (the whole line's decode then reports why).
pub fn decode_watch_application(kind: WatchEventType, application: &str) -> Option<WatchEvent> {
    let app: WireApplication = serde_json::from_str(application).ok()?;
    Some(WatchEvent { kind, app: app.into() })
}

/// Decodes the `result` of an application watch chunk.
pub fn decode_watch_result(json: &str) -> Result<WatchEvent, DecodeError> {
    let w: WireWatchResult = serde_json::from_str(json).map_err(|e| DecodeError {
        what: "watch event".into(),
        reason: e.to_string(),
    })?;
    Ok(w.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_key_reads_only_what_it_needs() {
        let key = |s: &str| quick_app_key(s.as_bytes());
        assert_eq!(
            key(r#"{"metadata":{"name":"a","namespace":"ns","uid":"u"},"status":{"x":[1,2]}}"#),
            Some(AppKey::new("ns", "a"))
        );
        // Found before what follows is read, so a broken tail does not matter.
        assert_eq!(
            key(r#"{"metadata":{"namespace":"ns","name":"a",BROKEN"#),
            Some(AppKey::new("ns", "a"))
        );
        // Metadata after other fields; namespace absent.
        assert_eq!(
            key(r#"{"spec":{"project":"p"},"metadata":{"labels":{"x":"y"},"name":"b"}}"#),
            Some(AppKey::new("", "b"))
        );
        for bad in [
            "[]",
            "{}",
            r#"{"metadata":{"name":""}}"#,
            r#"{"metadata":{"name":7}}"#,
            r#"{"metadata":"x"}"#,
            "not json",
        ] {
            assert_eq!(key(bad), None, "{bad}");
        }
        // A real item: the same key as the full decode.
        let raw =
            std::fs::read_to_string("tests/fixtures/argocd/controller__appcontroller_test.go__fakeApp.json").unwrap();
        let decoded = decode_application(&raw).unwrap();
        assert_eq!(quick_app_key(raw.as_bytes()), Some(decoded.app.key()));
    }

    #[test]
    fn tolerant_of_nulls_unknown_fields_and_values() {
        let json = r#"{"metadata":{"name":"a","namespace":"argocd","labels":null,"future":1},
            "spec":{"sources":null,"source":{"repoURL":"r","path":"p"},"destination":{"server":"s"}},
            "status":{"sync":{"status":"Drifting","revisions":null},"health":{"status":null},
            "resources":[{"kind":"Pod","name":"x","health":null,"status":"Synced"}],"conditions":null}}"#;
        let d = decode_application(json).unwrap();
        assert_eq!(d.app.sync.status, SyncStatusCode::parse("Drifting"));
        assert_eq!(d.app.health.status, HealthStatusCode::Empty);
        assert_eq!(d.app.project, "default");
        assert_eq!(d.app.sources.len(), 1);
        assert_eq!(d.app.resources[0].health, None);
        let v = serde_json::to_value(&d.app).unwrap();
        assert_eq!(v["sync"]["status"], "Drifting");
        assert_eq!(v["sources"][0]["repoURL"], "r");
        assert!(v["operation"].is_null());
    }

    #[test]
    fn one_odd_item_does_not_fail_the_list() {
        let json = br#"{"metadata":{"resourceVersion":"7"},"items":[
            {"metadata":{"name":"good"}},{"metadata":{"name":42}},{"metadata":{"name":"also-good"}}]}"#;
        let list = decode_application_list(json).unwrap();
        assert_eq!(list.resource_version, "7");
        assert_eq!(list.items.len(), 2);
        assert_eq!(list.skipped.len(), 1);
    }

    #[test]
    fn metadata_after_the_items_and_unknown_keys_are_read() {
        let json = br#"{"items":[{"metadata":{"name":"a","namespace":"n"},"status":{"health":{"status":"Healthy"}}},
            {"metadata":{"name":42}},{"metadata":{"name":"b"}}],"extra":{"x":[1,2]},"metadata":{"resourceVersion":"9"}}"#;
        let a = decode_application_list(json).unwrap();
        assert_eq!(a.resource_version, "9");
        assert_eq!(a.items.len(), 2);
        assert_eq!(a.skipped.len(), 1);
        let empty = decode_cluster_list(br#"{"metadata":{},"items":null}"#).unwrap();
        assert!(empty.items.is_empty());
        assert!(decode_application_list(b"[1,2]").is_err());
        assert!(decode_application_list(br#"{"items":[]} trailing"#).is_err());
    }

    #[test]
    fn the_last_applied_copy_of_the_object_is_not_kept() {
        let app = decode_application(
            r#"{"metadata":{"name":"a","annotations":{"team":"x",
                "kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"argoproj.io/v1alpha1\"}"}}}"#,
        )
        .unwrap()
        .app;
        assert_eq!(app.annotations.len(), 1, "{:?}", app.annotations);
        assert_eq!(app.annotations.get("team"), Some("x"));
    }

    #[test]
    fn a_watch_line_decodes_in_one_pass_or_through_the_chunk_path() {
        let ev =
            decode_watch_line(r#"{"result":{"type":"MODIFIED","application":{"metadata":{"name":"a"}}}}"#).unwrap();
        assert!(matches!(
            ev,
            StreamChunk::Result(WatchEvent {
                kind: WatchEventType::Modified,
                ..
            })
        ));
        let err = decode_watch_line(r#"{"error":{"grpc_code":14,"http_code":503,"message":"gone"}}"#).unwrap();
        assert!(matches!(err, StreamChunk::Error(e) if e.http_code == 503));
        // Both: the error wins, as in the chunk path.
        let both = decode_watch_line(r#"{"result":{"type":"ADDED","application":{}},"error":{"http_code":500}}"#);
        assert!(matches!(both, Ok(StreamChunk::Error(_))));
        assert!(decode_watch_line(r#"{"result":{"type":"ADDED","application":{"metadata":{"name":7}}}}"#).is_err());
        assert!(decode_watch_line("{").is_err());
    }

    #[test]
    fn a_peeked_watch_line_decodes_as_the_whole_line_does() {
        for name in [
            "controller__appcontroller_test.go__fakeApp.json",
            "controller__appcontroller_test.go__fakeMultiSourceApp.json",
            "gitops-engine__pkg__health__testdata__application-degraded.json",
        ] {
            let app = std::fs::read_to_string(format!("tests/fixtures/argocd/{name}")).unwrap();
            let app: serde_json::Value = serde_json::from_str(&app).unwrap();
            let line = serde_json::json!({"result": {"type": "MODIFIED", "application": app}}).to_string();
            let (kind, raw) = peek_watch_line(&line).expect(name);
            assert_eq!(kind, WatchEventType::Modified);
            // The application's bytes exactly as they are in the line: what a receiver hashes.
            assert!(line.contains(raw), "{name}");
            assert_eq!(serde_json::from_str::<serde_json::Value>(raw).unwrap(), app);
            let whole = match decode_watch_line(&line).unwrap() {
                StreamChunk::Result(ev) => ev,
                StreamChunk::Error(e) => panic!("{name}: {e:?}"),
            };
            assert_eq!(decode_watch_application(kind, raw), Some(whole), "{name}");
        }
        // Not an event: an error chunk, an event with an error beside it, broken JSON, no
        // application. The whole line's decode says what they are.
        for line in [
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"gone"}}"#,
            r#"{"result":{"type":"ADDED","application":{}},"error":{"http_code":500}}"#,
            r#"{"result":{"type":"ADDED","application":{"metadata""#,
            r#"{"result":{"type":"ADDED"}}"#,
        ] {
            assert_eq!(peek_watch_line(line), None, "{line}");
        }
        // An application that does not decode is left to the whole line's decode.
        let (kind, raw) =
            peek_watch_line(r#"{"result":{"type":"ADDED","application":{"metadata":{"name":7}}}}"#).unwrap();
        assert_eq!(decode_watch_application(kind, raw), None);
    }

    #[test]
    fn stream_chunks() {
        let ok = decode_stream_chunk(
            r#"{"result":{"type":"DELETED","application":{"metadata":{"name":"a"}}}}"#,
            decode_watch_result,
        )
        .unwrap();
        assert!(matches!(
            ok,
            StreamChunk::Result(WatchEvent {
                kind: WatchEventType::Deleted,
                ..
            })
        ));
        let err = decode_stream_chunk(
            r#"{"error":{"grpc_code":7,"http_code":403,"message":"permission denied","http_status":"Forbidden"}}"#,
            decode_watch_result,
        )
        .unwrap();
        assert!(matches!(err, StreamChunk::Error(StreamError { http_code: 403, .. })));
    }

    #[test]
    fn sync_policy_history_and_operation_progress_decode() {
        // Field names as in Argo CD's v1alpha1 types (swagger: v1alpha1SyncPolicy,
        // v1alpha1RevisionHistory, v1alpha1ResourceResult, v1alpha1ResourceStatus.syncWave).
        let history: Vec<serde_json::Value> = (0..12)
            .map(|i| {
                serde_json::json!({"id": i, "revision": format!("{i:040x}"),
                    "deployedAt": "2024-05-01T10:00:00Z", "source": {"repoURL": "r"}})
            })
            .collect();
        let json = serde_json::json!({
            "metadata": {"name": "shop", "namespace": "argocd"},
            "spec": {"source": {"repoURL": "r"}, "destination": {"server": "s"},
                     "syncPolicy": {"automated": {"prune": true, "selfHeal": true},
                                    "syncOptions": ["CreateNamespace=true", "ServerSideApply=true"]}},
            "status": {
                "sync": {"status": "Synced", "revision": "abc"},
                "history": history,
                "resources": [
                    {"kind": "ConfigMap", "namespace": "shop", "name": "shop", "status": "Synced", "syncWave": 0},
                    {"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "shop", "status": "Synced", "syncWave": 1}
                ],
                "operationState": {
                    "phase": "Running", "message": "waiting for completion of hook batch/Job/smoke",
                    "operation": {"sync": {"revision": "abc", "dryRun": false}},
                    "syncResult": {"revision": "abc", "resources": [
                        {"group": "batch", "kind": "Job", "namespace": "shop", "name": "migrate", "hookType": "PreSync",
                         "hookPhase": "Succeeded", "syncPhase": "PreSync", "message": "job completed"},
                        {"kind": "ConfigMap", "namespace": "shop", "name": "shop", "status": "Synced",
                         "hookPhase": "Succeeded", "syncPhase": "Sync", "message": "configmap/shop configured"},
                        {"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "shop", "status": "SyncFailed",
                         "hookPhase": "Failed", "syncPhase": "Sync", "message": "the server rejected the image"},
                        {"group": "batch", "kind": "Job", "namespace": "shop", "name": "smoke", "hookType": "PostSync",
                         "hookPhase": "Running", "syncPhase": "PostSync", "message": "job running"}
                    ]}
                }
            }
        });
        let app = decode_application(&json.to_string()).unwrap().app;
        let policy = app.sync_policy.as_ref().unwrap();
        assert!(policy.automated && policy.prune && policy.self_heal);
        assert_eq!(policy.sync_options, ["CreateNamespace=true", "ServerSideApply=true"]);
        // The last ten, oldest first.
        assert_eq!(app.history.len(), MAX_HISTORY);
        assert_eq!(app.history[0].id, 2);
        assert_eq!(app.history[9].id, 11);
        assert_eq!(app.history[9].revision, format!("{:040x}", 11));
        assert!(app.history[9].deployed_at.is_some());
        let op = app.operation.as_ref().unwrap();
        assert!(!op.dry_run);
        let p = op.progress.as_ref().unwrap();
        assert_eq!(p.phases.get("Succeeded"), Some(&2));
        assert_eq!(p.phases.get("Running"), Some(&1));
        assert_eq!(p.phases.get("Failed"), Some(&1));
        assert_eq!(p.sync_phase, "PostSync", "the phase of the task still running");
        assert_eq!(p.wave, Some(1), "no running task has a wave: the highest reached");
        assert_eq!(p.hooks.len(), 2);
        assert_eq!(p.hooks[1].hook_type, "PostSync");
        assert_eq!(p.hooks[1].hook_phase, "Running");
        assert_eq!(p.failed.len(), 1);
        assert_eq!(p.failed[0].kind, "Deployment");
        assert_eq!(p.failed[0].wave, Some(1));
        assert_eq!(p.failed[0].message, "the server rejected the image");

        // `automated: {}` turns automated sync on; `enabled: false` turns it off; no
        // `syncPolicy` is manual, known (not absent as from an older gateway).
        let policy = |p: serde_json::Value| {
            let j = serde_json::json!({"metadata": {"name": "a"}, "spec": {"syncPolicy": p}});
            decode_application(&j.to_string()).unwrap().app.sync_policy.unwrap()
        };
        assert!(policy(serde_json::json!({"automated": {}})).automated);
        let off = policy(serde_json::json!({"automated": {"enabled": false, "prune": true}}));
        assert!(!off.automated && !off.prune);
        assert!(!policy(serde_json::Value::Null).automated);
        // A hostile history or sync result does not fail the application.
        let odd = r#"{"metadata":{"name":"a"},"status":{"history":[{"id":"x"},{"id":3,"revision":"r"}],
            "operationState":{"phase":"Succeeded","syncResult":{"resources":[7,{"kind":"Pod","name":"p","hookPhase":"Succeeded"}]}}}}"#;
        let a = decode_application(odd).unwrap().app;
        assert!(
            a.history.iter().any(|h| h.id == 3 && h.revision == "r"),
            "{:?}",
            a.history
        );
        assert_eq!(a.operation.unwrap().progress.unwrap().phases.get("Succeeded"), Some(&1));
    }
}
