//! `argocd-gateway self-update`, run nightly by the chart's CronJob: read the gateway's own
//! Deployment, ask the hub (as the registered gateway) which version it should run, and move the
//! image tag of the Deployment and of the CronJob itself to it — only upward and only within the
//! same major version, since a new major may need a chart change that only `helm upgrade` makes.
//!
//! The patch is a JSON Patch that first `test`s the container's name and current image, so an
//! edit by someone else in between fails the patch instead of being overwritten; the rollback
//! tests for the image we wrote for the same reason. After patching, the Deployment must finish
//! its rollout (every replica updated and available) within `--rollout-timeout`, otherwise both
//! objects go back to their previous image and the command fails.
//!
//! With `autoUpdate.enabled=false` the chart renders neither the CronJob nor its RBAC, so there
//! is nothing that could run this; a second switch here would only be one more thing to keep in
//! sync. Run by hand, the command does what it is asked, and `--dry-run` shows the plan first.
//!
//! It never fights a GitOps controller: when the Deployment carries Argo CD's tracking
//! annotation or label (or Flux's), the next sync would revert any patch, so self-update holds,
//! says why (naming `autoUpdate.enabled=false`), and tells the hub, which shows the gateway's
//! "update held" state.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Container;
use kube::Api;
use kube::api::{Patch, PatchParams};
use semver::Version;
use tokio::time::Instant;

use crate::identity::store::StoreError;
use crate::uplink::version::{VersionQueryError, query_desired_version};
use crate::uplink::{ConfigError, UplinkArgs};

/// Flags of `argocd-gateway self-update`.
#[derive(Debug, Clone, clap::Args)]
pub struct SelfUpdateArgs {
    /// Hub address, trust and identity location.
    #[command(flatten)]
    pub uplink: UplinkArgs,
    /// The gateway's Deployment (the chart passes the release's full name).
    #[arg(long, env = "ARGOCD_GATEWAY_SELF_UPDATE_DEPLOYMENT")]
    pub deployment: String,
    /// The gateway's container in the Deployment.
    #[arg(long, env = "ARGOCD_GATEWAY_SELF_UPDATE_CONTAINER", default_value = "gateway")]
    pub container: String,
    /// The self-update CronJob, whose image follows the Deployment's (the chart passes
    /// <fullname>-self-update).
    #[arg(long, env = "ARGOCD_GATEWAY_SELF_UPDATE_CRONJOB")]
    pub cronjob: Option<String>,
    /// The container in the CronJob's pod template.
    #[arg(
        long,
        env = "ARGOCD_GATEWAY_SELF_UPDATE_CRONJOB_CONTAINER",
        default_value = "self-update"
    )]
    pub cronjob_container: String,
    /// Roll back when the Deployment's rollout is not complete within this long.
    #[arg(long, env = "ARGOCD_GATEWAY_SELF_UPDATE_ROLLOUT_TIMEOUT", default_value = "5m", value_parser = crate::util::parse_duration)]
    pub rollout_timeout: Duration,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Namespace of the Deployment and CronJob (default: POD_NAMESPACE, which the chart sets,
    /// else the kubeconfig's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
}

/// Why self-update failed.
#[derive(Debug, thiserror::Error)]
pub enum SelfUpdateError {
    /// Hub, trust or identity flags are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No Kubernetes client.
    #[error(transparent)]
    Client(#[from] crate::kube::ClientError),
    /// The Deployment or CronJob could not be read.
    #[error(
        "cannot read {kind} {namespace}/{name}: {} (flag {flag}; the chart's self-update Role allows get and patch on exactly the Deployment <fullname> and the CronJob <fullname>-self-update)",
        crate::kube::describe(.source)
    )]
    Read {
        /// Deployment or CronJob.
        kind: Kind,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The flag naming it.
        flag: &'static str,
        /// What the API server said.
        source: Box<kube::Error>,
    },
    /// The named container is not in the pod template.
    #[error("{kind} {name} has no container {container:?} (it has {found:?}); set {flag}")]
    NoContainer {
        /// Deployment or CronJob.
        kind: Kind,
        /// Name.
        name: String,
        /// The container looked for.
        container: String,
        /// The containers present.
        found: Vec<String>,
        /// The flag naming the container.
        flag: &'static str,
    },
    /// The running version cannot be read from the image.
    #[error(
        "cannot tell the running version from the image {image:?} of {kind} {name}: {why}; self-update needs a semantic-version tag such as 1.4.2 (Helm image.tag), or turn it off with autoUpdate.enabled=false"
    )]
    Unversioned {
        /// Deployment or CronJob.
        kind: Kind,
        /// Name.
        name: String,
        /// The image.
        image: String,
        /// Why.
        why: &'static str,
    },
    /// The gateway has no identity to ask the hub with.
    #[error(
        "no gateway identity in {store}: self-update asks the hub as the registered gateway, so the gateway must register first (Helm registration.token; flag --identity)"
    )]
    NotRegistered {
        /// The identity store.
        store: String,
    },
    /// The identity store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hub could not tell the desired version.
    #[error(transparent)]
    Desired(#[from] VersionQueryError),
    /// A patch was refused.
    #[error("cannot patch {kind} {namespace}/{name}: {reason}")]
    Patch {
        /// Deployment or CronJob.
        kind: Kind,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What the API server said, and what was rolled back.
        reason: String,
    },
    /// The rollout did not complete and the images were put back.
    #[error(
        "the rollout of Deployment {namespace}/{deployment} to {image} did not complete: {reason}. {rollback} (flag --rollout-timeout)"
    )]
    RolloutFailed {
        /// Namespace.
        namespace: String,
        /// The Deployment.
        deployment: String,
        /// The image it was moved to.
        image: String,
        /// What was last seen.
        reason: String,
        /// What the rollback did.
        rollback: String,
    },
}

/// The kinds of object self-update patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `batch/v1` CronJob.
    CronJob,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deployment => "Deployment",
            Self::CronJob => "CronJob",
        })
    }
}

impl Kind {
    /// JSON Pointer to the containers list of the pod template.
    fn containers_pointer(self) -> &'static str {
        match self {
            Self::Deployment => "/spec/template/spec/containers",
            Self::CronJob => "/spec/jobTemplate/spec/template/spec/containers",
        }
    }
}

/// An image reference split where the tag and digest go; the registry and repository stay
/// together because self-update never changes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `registry[:port]/path/name`.
    pub repository: String,
    /// The tag, if any.
    pub tag: Option<String>,
    /// `sha256:…`, if pinned by digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Splits `repo[:tag][@digest]`; a `:` before the last `/` belongs to a registry port.
    pub fn parse(image: &str) -> Self {
        let (rest, digest) = match image.split_once('@') {
            Some((r, d)) => (r, Some(d.to_owned())),
            None => (image, None),
        };
        let name_start = rest.rfind('/').map_or(0, |i| i + 1);
        match rest[name_start..].rfind(':') {
            Some(i) => Self {
                repository: rest[..name_start + i].to_owned(),
                tag: Some(rest[name_start + i + 1..].to_owned()),
                digest,
            },
            None => Self {
                repository: rest.to_owned(),
                tag: None,
                digest,
            },
        }
    }

    /// The same repository at `tag`. A digest is dropped: it pins the old build, and the
    /// runtime would keep pulling it whatever the tag says.
    pub fn with_tag(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repository)
    }

    /// The version in the tag (`1.4.2` or `v1.4.2`), and whether it had the `v`.
    pub fn version(&self) -> Result<(Version, bool), &'static str> {
        let tag = self.tag.as_deref().ok_or(if self.digest.is_some() {
            "it is pinned by digest without a tag"
        } else {
            "it has no tag"
        })?;
        let (text, v) = match tag.strip_prefix('v') {
            Some(t) => (t, true),
            None => (tag, false),
        };
        Version::parse(text)
            .map(|ver| (ver, v))
            .map_err(|_| "its tag is not a semantic version")
    }
}

// The decision is part of the version contract the hub shares (it shows "update available"
// or "update held" for each gateway), so it lives in `wire::version`.
pub use crate::wire::version::{Decision, decide};

/// Which objects to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// Namespace of both.
    pub namespace: String,
    /// The Deployment.
    pub deployment: String,
    /// Its container.
    pub container: String,
    /// The CronJob and its container, if it should follow.
    pub cronjob: Option<(String, String)>,
}

/// One container's image as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Deployment or CronJob.
    pub kind: Kind,
    /// Object name.
    pub name: String,
    /// Container name.
    pub container: String,
    /// Position in the containers list (the patch tests the name at it).
    pub index: usize,
    /// The image now.
    pub image: String,
}

/// What runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The Deployment's gateway container.
    pub deployment: Found,
    /// The CronJob's container.
    pub cronjob: Option<Found>,
    /// The version in the Deployment's image tag.
    pub version: Version,
    /// The GitOps controller that manages the Deployment, if any (see [`gitops_owner`]).
    pub held_by: Option<String>,
}

/// Which GitOps controller, if any, manages an object, judged by the metadata each leaves:
/// Argo CD's tracking annotation (`argocd.argoproj.io/tracking-id`, the default since Argo CD
/// 3.0) or a custom tracking label `argocd.argoproj.io/instance`; Flux's
/// `kustomize.toolkit.fluxcd.io/name` or `helm.toolkit.fluxcd.io/name` labels; or Argo CD's
/// label tracking, which sets `app.kubernetes.io/instance` on objects that `helm install` did
/// not create (those carry `meta.helm.sh/release-name`).
pub fn gitops_owner(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k));
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k));
    if let Some(v) = annotation("argocd.argoproj.io/tracking-id") {
        return Some(format!("Argo CD (annotation argocd.argoproj.io/tracking-id={v})"));
    }
    if let Some(v) = label("argocd.argoproj.io/instance") {
        return Some(format!("Argo CD (label argocd.argoproj.io/instance={v})"));
    }
    for key in ["kustomize.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/name"] {
        if let Some(v) = label(key) {
            return Some(format!("Flux (label {key}={v})"));
        }
    }
    if annotation("meta.helm.sh/release-name").is_none()
        && let Some(v) = label("app.kubernetes.io/instance")
    {
        return Some(format!(
            "Argo CD (label app.kubernetes.io/instance={v} without Helm's release annotation meta.helm.sh/release-name: label tracking)"
        ));
    }
    None
}

/// One planned image change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Where.
    pub target: Found,
    /// The new image.
    pub to: String,
}

/// The plan `--dry-run` prints and [`apply`] carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Namespace.
    pub namespace: String,
    /// What runs now.
    pub current: Current,
    /// What the hub wants.
    pub desired: Option<Version>,
    /// The verdict.
    pub decision: Decision,
    /// Image changes, Deployment first; empty unless upgrading.
    pub changes: Vec<Change>,
    /// How long the rollout may take.
    pub rollout_timeout: Duration,
}

/// Reads the containers of the Deployment and the CronJob.
pub async fn read_current(client: &kube::Client, targets: &Targets) -> Result<Current, SelfUpdateError> {
    let ns = &targets.namespace;
    let read_err = |kind, name: &str, flag, e: kube::Error| SelfUpdateError::Read {
        kind,
        namespace: ns.clone(),
        name: name.to_owned(),
        flag,
        source: Box::new(e),
    };
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&targets.deployment)
        .await
        .map_err(|e| read_err(Kind::Deployment, &targets.deployment, "--deployment", e))?;
    let held_by = gitops_owner(&deployment.metadata);
    let containers = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.as_slice())
        .unwrap_or_default();
    let deployment = find(
        Kind::Deployment,
        &targets.deployment,
        containers,
        &targets.container,
        "--container",
    )?;
    let cronjob = match &targets.cronjob {
        None => None,
        Some((name, container)) => {
            let cj = Api::<CronJob>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| read_err(Kind::CronJob, name, "--cronjob", e))?;
            let containers = cj
                .spec
                .as_ref()
                .and_then(|s| s.job_template.spec.as_ref())
                .and_then(|j| j.template.spec.as_ref())
                .map(|p| p.containers.as_slice())
                .unwrap_or_default();
            Some(find(Kind::CronJob, name, containers, container, "--cronjob-container")?)
        }
    };
    let (version, _) = ImageRef::parse(&deployment.image)
        .version()
        .map_err(|why| SelfUpdateError::Unversioned {
            kind: Kind::Deployment,
            name: deployment.name.clone(),
            image: deployment.image.clone(),
            why,
        })?;
    Ok(Current {
        deployment,
        cronjob,
        version,
        held_by,
    })
}

fn find(
    kind: Kind,
    name: &str,
    containers: &[Container],
    container: &str,
    flag: &'static str,
) -> Result<Found, SelfUpdateError> {
    containers
        .iter()
        .enumerate()
        .find(|(_, c)| c.name == container)
        .map(|(index, c)| Found {
            kind,
            name: name.to_owned(),
            container: container.to_owned(),
            index,
            image: c.image.clone().unwrap_or_default(),
        })
        .ok_or_else(|| SelfUpdateError::NoContainer {
            kind,
            name: name.to_owned(),
            container: container.to_owned(),
            found: containers.iter().map(|c| c.name.clone()).collect(),
            flag,
        })
}

/// Decides and lists the image changes.
pub fn plan(namespace: &str, current: Current, desired: Option<Version>, rollout_timeout: Duration) -> Plan {
    let decision = if current.held_by.is_some() {
        Decision::Held
    } else {
        decide(&current.version, desired.as_ref())
    };
    let mut changes = Vec::new();
    if let (Decision::Upgrade, Some(desired)) = (decision, desired.as_ref()) {
        for found in std::iter::once(&current.deployment).chain(current.cronjob.as_ref()) {
            let image = ImageRef::parse(&found.image);
            // Keep each object's own tag style: a `v` prefix stays a `v` prefix.
            let v = image.version().map(|(_, v)| v).unwrap_or(false);
            let to = image.with_tag(&if v { format!("v{desired}") } else { desired.to_string() });
            if to != found.image {
                changes.push(Change {
                    target: found.clone(),
                    to,
                });
            }
        }
    }
    Plan {
        namespace: namespace.to_owned(),
        current,
        desired,
        decision,
        changes,
        rollout_timeout,
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.current.deployment;
        writeln!(f, "namespace:        {}", self.namespace)?;
        writeln!(
            f,
            "current version:  {} (Deployment {} container {}: {})",
            self.current.version, d.name, d.container, d.image
        )?;
        match &self.desired {
            Some(v) => writeln!(f, "desired version:  {v} (from the hub)")?,
            None => writeln!(f, "desired version:  none set at the hub")?,
        }
        let verdict = match self.decision {
            Decision::NotSet => "nothing to do: the hub has no desired version".to_owned(),
            Decision::UpToDate => "nothing to do: already at the desired version".to_owned(),
            Decision::Upgrade => format!(
                "upgrade {} -> {}",
                self.current.version,
                self.desired.as_ref().map(ToString::to_string).unwrap_or_default()
            ),
            Decision::RefuseDowngrade => "refused: self-update never downgrades".to_owned(),
            Decision::RefuseMajor => "refused: a new major version needs `helm upgrade` with the new chart".to_owned(),
            Decision::Held => held_message(self.current.held_by.as_deref().unwrap_or("a GitOps controller")),
        };
        writeln!(f, "decision:         {verdict}")?;
        for c in &self.changes {
            writeln!(
                f,
                "patch:            {} {}/{} container {}: {} -> {}",
                c.target.kind, self.namespace, c.target.name, c.target.container, c.target.image, c.to
            )?;
        }
        if !self.changes.is_empty() {
            writeln!(
                f,
                "then:             wait up to {} for the rollout; roll back every patch if it does not complete",
                humantime::format_duration(self.rollout_timeout)
            )?;
        }
        Ok(())
    }
}

/// Why self-update holds back, naming the setting that turns it off.
pub fn held_message(owner: &str) -> String {
    format!(
        "held: the Deployment is managed by {owner}, whose next sync would revert a patched image; nothing is changed. Update the image through that tool instead, and set autoUpdate.enabled=false in the values it deploys (the chart then has no self-update CronJob)"
    )
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing needed changing.
    Nothing,
    /// Patched and rolled out.
    Updated {
        /// The version now running.
        version: Version,
    },
}

/// How [`apply`] waits.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Time between rollout checks.
    pub poll_interval: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
        }
    }
}

enum PatchFailure {
    /// The `test` op failed: the object changed since it was read.
    Changed,
    /// Anything else.
    Api(String),
}

async fn patch_image(
    client: &kube::Client,
    namespace: &str,
    target: &Found,
    from: &str,
    to: &str,
) -> Result<Option<i64>, PatchFailure> {
    let base = format!("{}/{}", target.kind.containers_pointer(), target.index);
    let ops = serde_json::json!([
        { "op": "test", "path": format!("{base}/name"), "value": target.container },
        { "op": "test", "path": format!("{base}/image"), "value": from },
        { "op": "replace", "path": format!("{base}/image"), "value": to },
    ]);
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| PatchFailure::Api(e.to_string()))?;
    let patch = Patch::Json::<()>(patch);
    let pp = PatchParams::default();
    let result = match target.kind {
        Kind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(&target.name, &pp, &patch)
            .await
            .map(|d| d.metadata.generation),
        Kind::CronJob => Api::<CronJob>::namespaced(client.clone(), namespace)
            .patch(&target.name, &pp, &patch)
            .await
            .map(|c| c.metadata.generation),
    };
    // A failed JSON Patch `test` is answered 422; 409 would be a write race on the object.
    result.map_err(|e| {
        if crate::kube::is_status(&e, 422) || crate::kube::is_status(&e, 409) {
            PatchFailure::Changed
        } else {
            PatchFailure::Api(crate::kube::describe(&e))
        }
    })
}

/// Puts back the images of `done`, newest first, and says what happened.
async fn roll_back(client: &kube::Client, namespace: &str, done: &[&Change]) -> String {
    let mut lines = Vec::new();
    for c in done.iter().rev() {
        let t = &c.target;
        let line = match patch_image(client, namespace, t, &c.to, &t.image).await {
            Ok(_) => format!("rolled {} {} back to {}", t.kind, t.name, t.image),
            Err(PatchFailure::Changed) => format!(
                "did NOT roll {} {} back: its image was changed by someone else meanwhile",
                t.kind, t.name
            ),
            Err(PatchFailure::Api(reason)) => {
                format!("could NOT roll {} {} back to {}: {reason}", t.kind, t.name, t.image)
            }
        };
        tracing::warn!("{line}");
        lines.push(line);
    }
    if lines.is_empty() {
        "Nothing had been changed yet.".to_owned()
    } else {
        format!("Rollback: {}.", lines.join("; "))
    }
}

/// Carries out `plan`: patches, waits for the rollout, and rolls back on failure.
pub async fn apply(client: &kube::Client, plan: &Plan, opts: ApplyOptions) -> Result<Applied, SelfUpdateError> {
    let (Decision::Upgrade, Some(version)) = (plan.decision, plan.desired.clone()) else {
        return Ok(Applied::Nothing);
    };
    if plan.changes.is_empty() {
        return Ok(Applied::Nothing);
    }
    let ns = plan.namespace.as_str();
    let mut done: Vec<&Change> = Vec::new();
    let mut generation = None;
    for c in &plan.changes {
        let t = &c.target;
        match patch_image(client, ns, t, &t.image, &c.to).await {
            Ok(g) => {
                tracing::info!(kind = %t.kind, name = %t.name, from = %t.image, to = %c.to, "patched the image");
                if t.kind == Kind::Deployment {
                    generation = g;
                }
                done.push(c);
            }
            Err(failure) => {
                let reason = match failure {
                    PatchFailure::Changed => {
                        "its container changed since it was read (someone else edited it); nothing was overwritten"
                            .to_owned()
                    }
                    PatchFailure::Api(r) => r,
                };
                let rollback = roll_back(client, ns, &done).await;
                return Err(SelfUpdateError::Patch {
                    kind: t.kind,
                    namespace: ns.to_owned(),
                    name: t.name.clone(),
                    reason: format!("{reason}. {rollback}"),
                });
            }
        }
    }
    let Some(deployment) = plan.changes.iter().find(|c| c.target.kind == Kind::Deployment) else {
        // Only the CronJob lagged behind; there is no rollout to wait for.
        return Ok(Applied::Updated { version });
    };
    match wait_for_rollout(
        client,
        ns,
        &deployment.target.name,
        generation,
        plan.rollout_timeout,
        opts,
    )
    .await
    {
        Ok(()) => {
            tracing::info!(deployment = %deployment.target.name, version = %version, "rollout complete");
            Ok(Applied::Updated { version })
        }
        Err(reason) => {
            tracing::error!(deployment = %deployment.target.name, reason = %reason, "rollout failed; rolling back");
            let rollback = roll_back(client, ns, &done).await;
            Err(SelfUpdateError::RolloutFailed {
                namespace: ns.to_owned(),
                deployment: deployment.target.name.clone(),
                image: deployment.to.clone(),
                reason,
                rollback,
            })
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every replica runs the new template and is available.
    Complete,
    /// Still moving; says what it waits for.
    Waiting(String),
    /// The Deployment controller gave up (progress deadline exceeded).
    Failed(String),
}

/// Judges a Deployment's rollout of `generation` (the one our patch produced) the way
/// `kubectl rollout status` does.
pub fn rollout_state(d: &Deployment, generation: Option<i64>) -> Rollout {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = generation.or(d.metadata.generation).unwrap_or(0);
    let Some(status) = d.status.as_ref() else {
        return Rollout::Waiting("the Deployment has no status yet".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Waiting("the Deployment controller has not seen the new image yet".into());
    }
    let deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if deadline_exceeded {
        return Rollout::Failed("the Deployment exceeded its progress deadline".into());
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let unavailable = status.unavailable_replicas.unwrap_or(0);
    if updated < want {
        return Rollout::Waiting(format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return Rollout::Waiting(format!("{} old replicas still terminating", total - updated));
    }
    if available < want || unavailable > 0 {
        return Rollout::Waiting(format!("{available} of {want} updated replicas available"));
    }
    Rollout::Complete
}

async fn wait_for_rollout(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    generation: Option<i64>,
    timeout: Duration,
    opts: ApplyOptions,
) -> Result<(), String> {
    let api = Api::<Deployment>::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    let mut last = "no answer from the API server yet".to_owned();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!(
                "not ready within {} ({last})",
                humantime::format_duration(timeout)
            ));
        }
        match tokio::time::timeout(remaining, api.get(name)).await {
            Ok(Ok(d)) => match rollout_state(&d, generation) {
                Rollout::Complete => return Ok(()),
                Rollout::Failed(why) => return Err(why),
                Rollout::Waiting(why) => {
                    tracing::info!(deployment = %name, waiting_for = %why, "rollout in progress");
                    last = why;
                }
            },
            Ok(Err(e)) => {
                last = format!("cannot read the Deployment: {}", crate::kube::describe(&e));
                tracing::warn!(deployment = %name, error = %last, "rollout check failed");
            }
            Err(_) => continue,
        }
        let pause = opts
            .poll_interval
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
    }
}

/// The whole command: read, ask, plan, and unless `--dry-run`, apply. The plan is printed to
/// stdout before anything changes.
pub async fn run(args: &SelfUpdateArgs) -> Result<Applied, SelfUpdateError> {
    let uplink = args.uplink.validate()?;
    let store = crate::cli::open_identity_store(&uplink.identity);
    let client = crate::kube::client().await?;
    let namespace = args
        .namespace
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(client.default_namespace())
        .to_owned();
    let targets = Targets {
        namespace: namespace.clone(),
        deployment: args.deployment.clone(),
        container: args.container.clone(),
        cronjob: args
            .cronjob
            .as_ref()
            .filter(|c| !c.trim().is_empty())
            .map(|c| (c.clone(), args.cronjob_container.clone())),
    };
    let current = read_current(&client, &targets).await?;
    let identity = store.load().await?.ok_or_else(|| SelfUpdateError::NotRegistered {
        store: store.describe(),
    })?;
    let held = current.held_by.as_deref().map(held_message);
    let desired = query_desired_version(
        &uplink.hub,
        &uplink.extra_roots,
        &identity,
        &current.version,
        held.as_deref(),
    )
    .await?;
    let plan = plan(&namespace, current, desired, args.rollout_timeout);
    if let Some(reason) = &held {
        tracing::warn!(reason = %reason, "self-update holds: another tool manages this gateway");
    }
    if args.dry_run {
        println!("self-update plan (dry run: nothing is changed)\n{plan}");
        return Ok(Applied::Nothing);
    }
    println!("self-update plan\n{plan}");
    apply(&client, &plan, ApplyOptions::default()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let r = ImageRef::parse("registry.example.com:5000/team/argocd-gateway:v1.2.3@sha256:abc");
        assert_eq!(r.repository, "registry.example.com:5000/team/argocd-gateway");
        assert_eq!(r.tag.as_deref(), Some("v1.2.3"));
        assert_eq!(r.digest.as_deref(), Some("sha256:abc"));
        assert_eq!(r.version().unwrap(), (Version::new(1, 2, 3), true));
        assert_eq!(
            r.with_tag("v1.3.0"),
            "registry.example.com:5000/team/argocd-gateway:v1.3.0"
        );
        let port_only = ImageRef::parse("localhost:5000/gw");
        assert_eq!(
            (port_only.repository.as_str(), port_only.tag.as_deref()),
            ("localhost:5000/gw", None)
        );
        assert!(port_only.version().unwrap_err().contains("no tag"));
        assert!(
            ImageRef::parse("gw@sha256:abc")
                .version()
                .unwrap_err()
                .contains("digest")
        );
        assert!(ImageRef::parse("gw:latest").version().is_err());
    }

    #[test]
    fn decisions() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert_eq!(decide(&v("1.2.3"), None), Decision::NotSet);
        assert_eq!(decide(&v("1.2.3"), Some(&v("1.2.3"))), Decision::UpToDate);
        assert_eq!(decide(&v("1.2.3"), Some(&v("1.2.3+build.7"))), Decision::UpToDate);
        assert_eq!(decide(&v("1.2.3"), Some(&v("1.10.0"))), Decision::Upgrade);
        assert_eq!(decide(&v("1.2.3-rc.1"), Some(&v("1.2.3"))), Decision::Upgrade);
        assert_eq!(decide(&v("1.2.3"), Some(&v("1.2.2"))), Decision::RefuseDowngrade);
        assert_eq!(decide(&v("1.2.3"), Some(&v("0.9.0"))), Decision::RefuseDowngrade);
        assert_eq!(decide(&v("1.2.3"), Some(&v("2.0.0"))), Decision::RefuseMajor);
    }

    fn found(kind: Kind, image: &str) -> Found {
        Found {
            kind,
            name: "gw".into(),
            container: "c".into(),
            index: 0,
            image: image.into(),
        }
    }

    #[test]
    fn plans_keep_repository_and_tag_style() {
        let current = Current {
            deployment: found(Kind::Deployment, "r.io/gw:v1.0.0@sha256:aa"),
            cronjob: Some(found(Kind::CronJob, "mirror.local/gw:1.0.0")),
            version: Version::new(1, 0, 0),
            held_by: None,
        };
        let p = plan(
            "ns",
            current.clone(),
            Some(Version::new(1, 1, 0)),
            Duration::from_secs(300),
        );
        assert_eq!(p.decision, Decision::Upgrade);
        let to: Vec<&str> = p.changes.iter().map(|c| c.to.as_str()).collect();
        assert_eq!(to, ["r.io/gw:v1.1.0", "mirror.local/gw:1.1.0"]);
        let text = p.to_string();
        assert!(text.contains("upgrade 1.0.0 -> 1.1.0"), "{text}");
        assert!(text.contains("r.io/gw:v1.0.0@sha256:aa -> r.io/gw:v1.1.0"), "{text}");
        assert!(text.contains("5m"), "{text}");
        let same = plan(
            "ns",
            current.clone(),
            Some(Version::new(1, 0, 0)),
            Duration::from_secs(1),
        );
        assert!(same.changes.is_empty());
        assert!(same.to_string().contains("already at the desired version"));
        let held = plan(
            "ns",
            Current {
                held_by: Some("Argo CD (annotation argocd.argoproj.io/tracking-id=x)".into()),
                ..current
            },
            Some(Version::new(1, 1, 0)),
            Duration::from_secs(1),
        );
        assert_eq!(held.decision, Decision::Held);
        assert!(held.changes.is_empty());
        assert!(held.to_string().contains("autoUpdate.enabled=false"), "{held}");
    }

    #[test]
    fn gitops_owners() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let meta = |labels: &[(&str, &str)], annotations: &[(&str, &str)]| ObjectMeta {
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        let helm = [("meta.helm.sh/release-name", "gw")];
        assert_eq!(
            gitops_owner(&meta(&[("app.kubernetes.io/instance", "gw")], &helm)),
            None
        );
        assert_eq!(gitops_owner(&ObjectMeta::default()), None);
        for (labels, annotations, who) in [
            (
                vec![],
                vec![("argocd.argoproj.io/tracking-id", "gw:apps/Deployment:ns/gw")],
                "Argo CD",
            ),
            (vec![("argocd.argoproj.io/instance", "gw")], vec![], "Argo CD"),
            (vec![("kustomize.toolkit.fluxcd.io/name", "apps")], vec![], "Flux"),
            (vec![("helm.toolkit.fluxcd.io/name", "gw")], helm.to_vec(), "Flux"),
            (vec![("app.kubernetes.io/instance", "gw")], vec![], "label tracking"),
        ] {
            let owner = gitops_owner(&meta(&labels, &annotations)).expect("owner");
            assert!(owner.contains(who), "{owner}");
        }
    }
}
