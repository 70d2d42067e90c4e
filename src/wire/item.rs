//! The schema of the items the hub stores and serves: one Argo CD application or cluster in the
//! compact form the gateway relays. The gateway decodes Argo CD's JSON into these types (see
//! `argocd::model`), the relay sends them as JSON in camelCase, and the hub reads and serves them
//! as they are. This file is the contract between the two sides; a field added here is relayed
//! by a gateway of this version and served by a hub of this version.
//!
//! Application item (hub API `GET …/applications/{namespace}/{name}`, plus `gatewayId` and
//! `stale` added by the hub):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `namespace`, `name` | string | the Application object (apps in any namespace) |
//! | `project` | string | AppProject, `default` when the spec leaves it empty |
//! | `annotations`, `labels` | map | object metadata (without `kubectl.kubernetes.io/last-applied-configuration`, a copy of the object) |
//! | `sources` | [Source] | `spec.sources`, or `spec.source` as one entry |
//! | `destination` | Destination | target cluster (`server` or `name`) and namespace |
//! | `sync` | SyncState | `status`, `revision`, `revisions` (one per source) |
//! | `health` | Health | `status`, `message` |
//! | `operation` | Operation or null | last or current operation: `phase`, `message`, `startedAt`, `finishedAt`, `revision(s)`; `dryRun` when it only previewed; `progress` (below) |
//! | `syncPolicy` | SyncPolicy, absent from older gateways | `spec.syncPolicy`: `automated` (Argo CD syncs by itself), `prune`, `selfHeal`, `syncOptions` |
//! | `history` | [HistoryEntry] | `status.history`, the last 10 deployments, oldest first: `id`, `revision`, `revisions`, `deployedAt` |
//! | `reconciledAt` | RFC 3339 or null | noisy: changes alone are not relayed |
//! | `resources` | [ResourceState] | managed resources with sync status and health |
//! | `images` | [string] | container images in use |
//! | `conditions` | [Condition] | warnings and errors; `lastTransitionTime` is noisy |
//! | `applicationSet` | string, only when set | the ApplicationSet that owns it (`metadata.ownerReferences`), by name in the same namespace |
//! | `undecodable` | string, only when set | Argo CD's latest version could not be read: the item is the last known state, and this says why |
//! | `tooLarge` | `{bytes, limit}`, only when set | a stub: the item was over the gateway's `--max-entity-bytes`; only namespace, name and project are filled |
//!
//! Operation `progress`, from the sync result (`status.operationState.syncResult.resources`)
//! and the waves in `status.resources[].syncWave`: `phases` (tasks counted by hook phase:
//! `Running`, `Succeeded`, `Failed`, …), `syncPhase` (`PreSync`, `Sync`, `PostSync`,
//! `SyncFail` of the tasks running, else of the last), `wave` (the lowest wave running, else the
//! highest reached), `hooks` (every hook task: `kind`, `name`, `hookType`, `hookPhase`,
//! `message`, …) and `failed` (other tasks that failed, with Argo CD's message); both lists are
//! capped at [`MAX_PROGRESS_TASKS`]. None of it is noisy: each changes only when a task does.
//!
//! Cluster item: `server` (the key), `name`, `project`, `namespaces`, `labels`, `annotations`,
//! `connectionState` (`status`, `message`), `serverVersion`, `applicationsCount`. Credentials
//! are never part of it.
//!
//! ApplicationSet item (key `namespace/name`; protocol 3, hubs with the "applicationsets"
//! capability): `namespace`, `name`, `project` (of the template; may be a template expression),
//! `labels`, `generators` (each `{kind, generators}`: the generator's kind and, for `matrix` and
//! `merge`, the kinds it combines), `template` (`sources`, `destination`, `project`),
//! `conditions` (`type`, `status`, `reason`, `message`; `lastTransitionTime` is noisy), `health`,
//! `strategy` (`type`, `steps`: the number of progressive-sync steps), `applicationStatus` (per
//! application of a progressive sync: `application`, `status`, `step`, `message`,
//! `targetRevisions`), `resources` (the applications it owns: `namespace`, `name`, `status`,
//! `health`), `resourcesCount`, and `undecodable` / `tooLarge` as for applications.
//!
//! Project item (key: the name; hubs with the "projects" capability): `name`, `description`,
//! `sourceRepos`, `sourceNamespaces`, `destinations`, `clusterResourceWhitelist`,
//! `clusterResourceBlacklist`, `namespaceResourceWhitelist`, `namespaceResourceBlacklist` (each
//! `{group, kind, name}`), `roles` (their names only: policies and token ids stay in Argo CD),
//! `syncWindows` (`kind`, `schedule`, `duration`, `timeZone`, `applications`, `namespaces`,
//! `clusters`, `manualSync`, and `active`: whether the window is open as the gateway last
//! evaluated it, null when its schedule cannot be read).
//!
//! Status values are Argo CD's spelling; a value this version does not know is kept verbatim.
//! Readers are tolerant: a missing field takes its default, so an item from a gateway one
//! protocol version older still reads.

use std::collections::BTreeMap;
use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A small string map (labels, annotations) kept as one sorted vector of inline strings.
///
/// Why not a `BTreeMap`: a B-tree allocates a node for eleven entries even for one, about
/// 550 bytes, and an application carries two such maps of one to three entries; with 10,000
/// applications in memory that was 11 MB on the gateway and again on the hub. Lookups are a
/// binary search. On the wire it is a JSON object, as before.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StrMap(Vec<(CompactString, CompactString)>);

impl StrMap {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| self.0[i].1.as_str())
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: impl Into<CompactString>, value: impl Into<CompactString>) {
        let key = key.into();
        match self.position(&key) {
            Ok(i) => self.0[i].1 = value.into(),
            Err(i) => self.0.insert(i, (key, value.into())),
        }
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.position(key) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

impl<K: Into<CompactString>, V: Into<CompactString>> FromIterator<(K, V)> for StrMap {
    /// Sorted by key in O(n log n) whatever the input order; of a key given twice, the last wins.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(CompactString, CompactString)> =
            iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        // Stable, so of equal keys the later stays later; dedup keeps the first of a run,
        // hence the reverse around it.
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        entries.shrink_to_fit();
        StrMap(entries)
    }
}

impl Serialize for StrMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for StrMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = StrMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StrMap, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<CompactString, CompactString>()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
            fn visit_unit<E>(self) -> Result<StrMap, E> {
                Ok(StrMap::default())
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Generates a string-backed status enum that keeps unknown values verbatim.
macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// No value was reported.
            #[default]
            Empty,
            /// A value this version does not know, kept as received (boxed: unknown values are
            /// rare, and a 16-byte status instead of 24 saves about 280 bytes per application).
            Other(Box<CompactString>),
        }

        impl $name {
            /// The value as Argo CD spells it (empty when none was reported).
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Empty => "",
                    Self::Other(s) => s,
                }
            }

            /// Parses Argo CD's spelling; unknown values are kept as [`Self::Other`].
            pub fn parse(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)+
                    "" => Self::Empty,
                    other => Self::Other(Box::new(other.into())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s: Option<String> = Option::deserialize(d)?;
                Ok(s.map(|s| Self::parse(&s)).unwrap_or_default())
            }
        }
    };
}

status_enum! {
    /// Sync status of an application or resource (`status.sync.status`).
    SyncStatusCode {
        /// Live state matches the target state.
        Synced = "Synced",
        /// Live state differs from the target state.
        OutOfSync = "OutOfSync",
        /// The comparison could not be made.
        Unknown = "Unknown",
    }
}

status_enum! {
    /// Health status of an application or resource (`status.health.status`).
    HealthStatusCode {
        /// All resources are healthy.
        Healthy = "Healthy",
        /// Resources are not healthy yet but may become so.
        Progressing = "Progressing",
        /// A resource failed or could not become healthy in time.
        Degraded = "Degraded",
        /// A resource is paused or waiting.
        Suspended = "Suspended",
        /// A resource is missing from the cluster.
        Missing = "Missing",
        /// Health could not be assessed.
        Unknown = "Unknown",
    }
}

status_enum! {
    /// Phase of the last or current operation (`status.operationState.phase`).
    OperationPhase {
        /// The operation is in progress.
        Running = "Running",
        /// The operation is being terminated.
        Terminating = "Terminating",
        /// The operation failed.
        Failed = "Failed",
        /// The operation ended with an error.
        Error = "Error",
        /// The operation succeeded.
        Succeeded = "Succeeded",
    }
}

/// One source of an application (single-source apps have exactly one).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Source {
    /// Git or Helm repository URL.
    #[serde(rename = "repoURL")]
    pub repo_url: CompactString,
    /// Directory within a Git repository.
    pub path: CompactString,
    /// Helm chart name (Helm repositories).
    pub chart: CompactString,
    /// Branch, tag, commit or chart version to deploy.
    #[serde(rename = "targetRevision")]
    pub target_revision: CompactString,
    /// Reference name used by other sources (`$ref/...`).
    #[serde(rename = "ref")]
    pub reference: CompactString,
    /// Optional name of the source (Argo CD 2.14+).
    pub name: CompactString,
}

/// Where the application deploys to.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Destination {
    /// API server URL of the target cluster.
    pub server: CompactString,
    /// Name of the target cluster (alternative to `server`).
    pub name: CompactString,
    /// Target namespace.
    pub namespace: CompactString,
}

/// Sync status and the revision(s) it was compared against.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncState {
    /// Synced, OutOfSync or Unknown.
    pub status: SyncStatusCode,
    /// Revision compared against (single source).
    pub revision: String,
    /// Revisions compared against (multi-source, one per source).
    pub revisions: Vec<String>,
}

/// A health status with its message.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    /// Healthy, Progressing, Degraded, Suspended, Missing or Unknown.
    pub status: HealthStatusCode,
    /// Human-readable detail, often empty.
    pub message: CompactString,
}

/// The last or current operation (sync) of an application.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Running, Terminating, Failed, Error or Succeeded.
    pub phase: OperationPhase,
    /// Result or progress message.
    pub message: String,
    /// When the operation started.
    pub started_at: Option<jiff::Timestamp>,
    /// When the operation finished (absent while running).
    pub finished_at: Option<jiff::Timestamp>,
    /// Revision synced to (single source): the sync result's, else the requested one.
    pub revision: String,
    /// Revisions synced to (multi-source).
    pub revisions: Vec<String>,
    /// The operation only previewed (`operation.sync.dryRun`): nothing was applied.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Hook and wave progress of the sync, when Argo CD reported a sync result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<OperationProgress>,
}

/// The most hook or failed tasks an operation's progress lists.
pub const MAX_PROGRESS_TASKS: usize = 20;

/// Hook and wave progress of a sync operation.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OperationProgress {
    /// Tasks of the sync result counted by hook phase (`Running`, `Succeeded`, `Failed`, …).
    pub phases: BTreeMap<String, u32>,
    /// The sync phase of the running tasks, else of the last one: PreSync, Sync, PostSync, SyncFail.
    pub sync_phase: CompactString,
    /// The lowest sync wave with a running task, else the highest wave reached.
    pub wave: Option<i64>,
    /// Every hook task (capped at [`MAX_PROGRESS_TASKS`]).
    pub hooks: Vec<SyncTask>,
    /// Non-hook tasks that failed, with Argo CD's message (capped at [`MAX_PROGRESS_TASKS`]).
    pub failed: Vec<SyncTask>,
}

/// One task of a sync: a hook or a resource, as the sync result reports it.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SyncTask {
    /// API group.
    pub group: CompactString,
    /// Kind.
    pub kind: CompactString,
    /// Namespace.
    pub namespace: CompactString,
    /// Name.
    pub name: CompactString,
    /// PreSync, Sync, PostSync, SyncFail, Skip; empty for a resource that is not a hook.
    pub hook_type: CompactString,
    /// Running, Succeeded, Failed, Error, Terminating.
    pub hook_phase: CompactString,
    /// Synced, SyncFailed, Pruned, PruneSkipped (empty for hooks).
    pub status: CompactString,
    /// The sync phase it ran in.
    pub sync_phase: CompactString,
    /// Its sync wave, when Argo CD lists it among the application's resources.
    pub wave: Option<i64>,
    /// Argo CD's message, e.g. why a hook failed.
    pub message: String,
}

/// `spec.syncPolicy`: whether and how Argo CD syncs by itself.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SyncPolicy {
    /// Automated sync is on: `automated` is set and not `enabled: false`.
    pub automated: bool,
    /// Automated sync prunes.
    pub prune: bool,
    /// Automated sync reverts changes made in the cluster.
    pub self_heal: bool,
    /// Sync options of the application, e.g. `CreateNamespace=true`.
    pub sync_options: Vec<String>,
}

/// One entry of `status.history`: a deployment Argo CD made.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The id a rollback names.
    pub id: i64,
    /// Revision deployed (single source).
    pub revision: String,
    /// Revisions deployed (multi-source, one per source).
    pub revisions: Vec<String>,
    /// When the deployment finished.
    pub deployed_at: Option<jiff::Timestamp>,
}

/// The most history entries relayed per application (Argo CD's default history limit).
pub const MAX_HISTORY: usize = 10;

/// Status of one resource the application manages.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceState {
    /// API group (empty for the core group).
    pub group: CompactString,
    /// API version.
    pub version: CompactString,
    /// Kind.
    pub kind: CompactString,
    /// Namespace (empty for cluster-scoped resources).
    pub namespace: CompactString,
    /// Name.
    pub name: CompactString,
    /// Sync status of this resource.
    pub status: SyncStatusCode,
    /// Health of this resource; absent when Argo CD does not report it (e.g. 3.x lists).
    pub health: Option<Health>,
}

impl ResourceState {
    /// Whether two entries describe the same Kubernetes object.
    pub fn same_object(&self, other: &ResourceState) -> bool {
        self.group == other.group
            && self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
    }
}

/// An application condition (warnings and errors reported by Argo CD).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `ComparisonError` or `OrphanedResourceWarning`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Message.
    pub message: String,
    /// When the condition last changed.
    pub last_transition_time: Option<jiff::Timestamp>,
}

/// The compact state of one Argo CD application, as relayed to the hub.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    /// Namespace of the Application object.
    pub namespace: String,
    /// Name of the Application object.
    pub name: String,
    /// AppProject (`default` when the spec leaves it empty).
    pub project: String,
    /// Object annotations.
    pub annotations: StrMap,
    /// Object labels.
    pub labels: StrMap,
    /// Sources (`spec.sources`, or `spec.source` as a single entry).
    pub sources: Vec<Source>,
    /// Deployment target.
    pub destination: Destination,
    /// Sync status.
    pub sync: SyncState,
    /// Application health.
    pub health: Health,
    /// Last or current operation, if any.
    pub operation: Option<Operation>,
    /// `spec.syncPolicy`; absent from gateways that predate it (then unknown, not manual).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_policy: Option<SyncPolicy>,
    /// The last deployments (`status.history`, at most [`MAX_HISTORY`]), oldest first.
    pub history: Vec<HistoryEntry>,
    /// When Argo CD last compared live and target state.
    pub reconciled_at: Option<jiff::Timestamp>,
    /// Managed resources with their sync and health status.
    pub resources: Vec<ResourceState>,
    /// Container images in use (`status.summary.images`).
    pub images: Vec<String>,
    /// Conditions (warnings and errors).
    pub conditions: Vec<Condition>,
    /// The ApplicationSet that owns this application, by name (same namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_set: Option<String>,
    /// Set when the gateway could not read Argo CD's latest version of this application: the
    /// rest is its last known state, and this says why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
    /// Set on a stub sent instead of an item too large to relay: only the identifying fields
    /// are filled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub too_large: Option<TooLarge>,
}

/// The size of an item too large to relay, and the limit it exceeds.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TooLarge {
    /// The item's JSON size, in bytes.
    pub bytes: u64,
    /// The gateway's limit (flag --max-entity-bytes, Helm gateway.hub.maxEntityBytes).
    pub limit: u64,
}

/// Connection state of a cluster as seen by Argo CD.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionState {
    /// Successful, Failed or Unknown (kept as received).
    pub status: String,
    /// Detail, e.g. the connection error.
    pub message: String,
}

/// The compact state of one cluster known to Argo CD (credentials are never part of it).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// API server URL; the key of a cluster.
    pub server: String,
    /// Display name.
    pub name: String,
    /// Project the cluster is scoped to, if any.
    pub project: String,
    /// Namespaces Argo CD may manage (empty: all).
    pub namespaces: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Connection state.
    pub connection_state: ConnectionState,
    /// Kubernetes version of the cluster.
    pub server_version: String,
    /// Number of applications Argo CD manages on it.
    pub applications_count: i64,
    /// Set when the gateway could not read Argo CD's latest version of this cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
    /// Set on a stub sent instead of an item too large to relay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub too_large: Option<TooLarge>,
}

/// One generator of an ApplicationSet: its kind, and for `matrix` and `merge` the kinds of the
/// generators it combines.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Generator {
    /// `list`, `clusters`, `git`, `scmProvider`, `clusterDecisionResource`, `pullRequest`,
    /// `matrix`, `merge`, `plugin` (a kind this version does not know is kept as named).
    pub kind: String,
    /// For `matrix` and `merge`: the kinds of the generators combined.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub generators: Vec<String>,
}

/// The application template of an ApplicationSet.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AppTemplate {
    /// The project of the generated applications (may be a template expression).
    pub project: String,
    /// Sources (`spec.sources`, or `spec.source` as one entry).
    pub sources: Vec<Source>,
    /// Where the generated applications deploy (may hold template expressions).
    pub destination: Destination,
}

/// An ApplicationSet condition (`ErrorOccurred`, `ParametersGenerated`, `ResourcesUpToDate`,
/// `RolloutProgressing`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AppSetCondition {
    /// Condition type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One-word reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// When the condition last changed (noisy).
    pub last_transition_time: Option<jiff::Timestamp>,
}

/// The progressive-sync strategy of an ApplicationSet.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AppSetStrategy {
    /// `RollingSync` (or another type, kept as named).
    #[serde(rename = "type")]
    pub kind: String,
    /// Number of rollout steps.
    pub steps: u32,
}

/// The progressive-sync state of one application of an ApplicationSet.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AppSetApplicationStatus {
    /// The application's name.
    pub application: String,
    /// `Waiting`, `Pending`, `Progressing`, `Healthy` (kept as received).
    pub status: String,
    /// The rollout step it belongs to.
    pub step: String,
    /// Detail.
    pub message: String,
    /// The revisions it should be synced to.
    pub target_revisions: Vec<String>,
}

/// An application an ApplicationSet owns, as its status lists it.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OwnedApplication {
    /// Namespace of the Application.
    pub namespace: String,
    /// Name of the Application.
    pub name: String,
    /// Its sync status.
    pub status: SyncStatusCode,
    /// Its health, when reported.
    pub health: Option<Health>,
}

/// The compact state of one Argo CD ApplicationSet, as relayed to the hub.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ApplicationSet {
    /// Namespace of the ApplicationSet object.
    pub namespace: String,
    /// Name of the ApplicationSet object.
    pub name: String,
    /// The template's project (`default` when it leaves it empty).
    pub project: String,
    /// Object labels.
    pub labels: BTreeMap<String, String>,
    /// Generators, in order.
    pub generators: Vec<Generator>,
    /// The application template.
    pub template: AppTemplate,
    /// Conditions.
    pub conditions: Vec<AppSetCondition>,
    /// Health derived by Argo CD from the conditions (`status.health`).
    pub health: Health,
    /// Progressive-sync strategy, if any.
    pub strategy: Option<AppSetStrategy>,
    /// Progressive-sync state per application.
    pub application_status: Vec<AppSetApplicationStatus>,
    /// The applications it owns.
    pub resources: Vec<OwnedApplication>,
    /// How many applications it owns (may exceed `resources` when Argo CD truncates the list).
    pub resources_count: i64,
    /// Set when the gateway could not read Argo CD's latest version of this ApplicationSet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
    /// Set on a stub sent instead of an item too large to relay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub too_large: Option<TooLarge>,
}

/// A group/kind (and for cluster resources, name) of a project's resource allow or deny list.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupKind {
    /// API group (empty for the core group).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Name pattern (cluster resources only; empty: all).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A sync window of a project.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SyncWindow {
    /// `allow` or `deny`.
    pub kind: String,
    /// Cron schedule of the window's start.
    pub schedule: String,
    /// How long it stays open (Go duration, e.g. `1h`).
    pub duration: String,
    /// Time zone of the schedule (empty: UTC).
    pub time_zone: String,
    /// Application name patterns it applies to.
    pub applications: Vec<String>,
    /// Namespace patterns it applies to.
    pub namespaces: Vec<String>,
    /// Cluster patterns it applies to.
    pub clusters: Vec<String>,
    /// Manual syncs are allowed while a deny window is active.
    pub manual_sync: bool,
    /// Whether the window was open when the gateway last evaluated it; `None` when its schedule,
    /// duration or time zone cannot be read.
    pub active: Option<bool>,
}

/// The compact state of one Argo CD AppProject, as relayed to the hub.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Project {
    /// Name; the key of a project.
    pub name: String,
    /// Description.
    pub description: String,
    /// Repositories applications may deploy from.
    pub source_repos: Vec<String>,
    /// Namespaces applications of this project may live in.
    pub source_namespaces: Vec<String>,
    /// Where applications may deploy.
    pub destinations: Vec<Destination>,
    /// Cluster-scoped resources allowed.
    pub cluster_resource_whitelist: Vec<GroupKind>,
    /// Cluster-scoped resources denied.
    pub cluster_resource_blacklist: Vec<GroupKind>,
    /// Namespaced resources allowed.
    pub namespace_resource_whitelist: Vec<GroupKind>,
    /// Namespaced resources denied.
    pub namespace_resource_blacklist: Vec<GroupKind>,
    /// Names of the project's roles.
    pub roles: Vec<String>,
    /// Sync windows.
    pub sync_windows: Vec<SyncWindow>,
    /// Set when the gateway could not read Argo CD's latest version of this project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
    /// Set on a stub sent instead of an item too large to relay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub too_large: Option<TooLarge>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_map_reads_any_order_keeps_the_last_of_a_repeated_key_and_writes_an_object() {
        let map: StrMap = serde_json::from_str(r#"{"tier":"web","app":"a","tier":"db","b":""}"#).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map.get("tier"), Some("db"));
        assert_eq!(map.get("b"), Some(""));
        assert_eq!(map.get("missing"), None);
        assert_eq!(
            map.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["app", "b", "tier"],
            "entries are sorted by key"
        );
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            r#"{"app":"a","b":"","tier":"db"}"#
        );
        let none: StrMap = serde_json::from_str("null").unwrap();
        assert!(none.is_empty());
        assert!(
            serde_json::from_str::<StrMap>(r#"{"a":1}"#).is_err(),
            "a non-string value is an error"
        );
    }

    #[test]
    fn a_string_map_inserts_and_removes_in_order() {
        let mut map = StrMap::default();
        map.insert("b", "2");
        map.insert("a", "1");
        map.insert("b", "3");
        assert_eq!(map.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "3")]);
        assert!(map.contains_key("a"));
        assert!(map.remove("a"));
        assert!(!map.remove("a"));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn an_application_with_labels_round_trips_unchanged() {
        let json = serde_json::json!({"namespace": "argocd", "name": "a", "labels": {"team": "x", "app": "y"},
                                      "annotations": {"note": "n"}});
        let app: Application = serde_json::from_value(json).unwrap();
        let back = serde_json::to_value(&app).unwrap();
        assert_eq!(back["labels"], serde_json::json!({"app": "y", "team": "x"}));
        assert_eq!(back["annotations"], serde_json::json!({"note": "n"}));
    }
}
