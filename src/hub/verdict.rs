//! The verdict of a deployment check for one application: is what the caller committed running
//! and healthy? Pure functions of the relayed state, the caller's wish (a revision of a named
//! source, content expectations, a grace for Degraded) and what the wait has seen so far; the
//! wait (`api::wait`) keeps that memory, fetches the content evaluations through the gateway and
//! decides when to ask again.
//!
//! | verdict | when |
//! |---|---|
//! | `Deployed` | Argo CD runs our revision (or, with expectations, a revision whose target still has our change), no operation runs and the last one did not fail, Synced, Healthy, and every expectation met in the live state |
//! | `Progressing` | on its way; `missing` says what is left: `operation` (with phase, sync phase, wave and running hooks), `sync`, `health`, `content` |
//! | `Failed` | the operation for our revision ended `Failed`/`Error` (with Argo CD's message and the failing hooks' messages), or Healthy never came: Degraded past the caller's grace with no operation running |
//! | `NotYetSeen` | Argo CD compares against another revision and our change is not in its target (or no expectations were given: "revision differs, content not checked"); `missing: refresh` |
//! | `Overwritten` | Argo CD ran our revision (this wait saw it, or its history has it) and now runs another whose target no longer has our change |
//!
//! Revisions match exactly, or as a hex prefix of at least [`MIN_PREFIX`] characters that
//! names one revision only, and only against the named source of a multi-source application
//! (by 1-based position, name or repository URL; unnamed: any source, if just one matches).

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::wire::expectation::{Expectation, Outcome, Side};
use crate::wire::item::{Application, HealthStatusCode, Operation, OperationPhase, SyncStatusCode};

/// The shortest hex prefix accepted for a revision.
pub const MIN_PREFIX: usize = 7;

/// The verdict for one application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Verdict {
    /// What we committed runs, synced and healthy.
    Deployed,
    /// On its way; see `missing`.
    Progressing,
    /// The operation failed, or the application stayed Degraded.
    Failed,
    /// Argo CD has not picked up our revision yet.
    NotYetSeen,
    /// A later revision replaced our change.
    Overwritten,
}

impl Verdict {
    /// As spelt in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployed => "Deployed",
            Self::Progressing => "Progressing",
            Self::Failed => "Failed",
            Self::NotYetSeen => "NotYetSeen",
            Self::Overwritten => "Overwritten",
        }
    }

    /// Whether this ends the wait as a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Overwritten)
    }
}

/// Which source of a multi-source application the revision belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SourceRef {
    /// Any source whose revision matches, if only one distinct revision does.
    #[default]
    Any,
    /// 1-based position in `spec.sources`.
    Position(usize),
    /// `spec.sources[].name`.
    Name(String),
    /// `spec.sources[].repoURL` (compared without a trailing `/` or `.git`, case-insensitive).
    RepoUrl(String),
}

/// The revision a caller committed, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevisionSpec {
    /// A full revision, or a hex prefix of at least [`MIN_PREFIX`] characters.
    pub revision: String,
    /// The source it belongs to.
    pub source: SourceRef,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Refuses a revision too short to name a commit: hex of fewer than [`MIN_PREFIX`] characters
/// (a Helm chart version or a tag is compared exactly and may be short if it is not all hex).
pub fn check_revision(revision: &str) -> Result<(), String> {
    if revision.trim() != revision || revision.is_empty() {
        return Err(format!("revision {revision:?} is empty or has spaces around it"));
    }
    if is_hex(revision) && revision.len() < MIN_PREFIX {
        return Err(format!(
            "revision {revision:?} is a {}-character prefix: give at least {MIN_PREFIX} hex characters (the full commit SHA is best)",
            revision.len()
        ));
    }
    Ok(())
}

/// Whether Argo CD's revision `have` is the wanted one.
fn rev_matches(want: &str, have: &str) -> bool {
    if have.is_empty() {
        return false;
    }
    if have == want {
        return true;
    }
    want.len() >= MIN_PREFIX
        && is_hex(want)
        && have.len() > want.len()
        && have.is_char_boundary(want.len())
        && have[..want.len()].eq_ignore_ascii_case(want)
}

fn normalize_repo(u: &str) -> String {
    u.trim()
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .to_ascii_lowercase()
}

/// The number of sources an application has, for revision lists.
fn source_count(app: &Application) -> usize {
    app.sources.len().max(app.sync.revisions.len()).max(1)
}

/// The 0-based sources a spec names in this application, or why it names none.
pub fn named_sources(app: &Application, source: &SourceRef) -> Result<Vec<usize>, String> {
    let n = source_count(app);
    let app_name = format!("{}/{}", app.namespace, app.name);
    match source {
        SourceRef::Any => Ok((0..n).collect()),
        SourceRef::Position(p) if *p >= 1 && *p <= n => Ok(vec![p - 1]),
        SourceRef::Position(p) => Err(format!(
            "{app_name} has {n} source(s): source position {p} names none (positions are 1-based)"
        )),
        SourceRef::Name(name) => {
            let found: Vec<usize> = app
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.name == name)
                .map(|(i, _)| i)
                .collect();
            if found.is_empty() {
                Err(format!("{app_name} has no source named {name:?}"))
            } else {
                Ok(found)
            }
        }
        SourceRef::RepoUrl(url) => {
            let want = normalize_repo(url);
            let found: Vec<usize> = app
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| normalize_repo(&s.repo_url) == want)
                .map(|(i, _)| i)
                .collect();
            if found.is_empty() {
                Err(format!("{app_name} has no source from {url}"))
            } else {
                Ok(found)
            }
        }
    }
}

/// How a set of Argo CD revisions compares with the wanted one.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RevMatch {
    /// The named source runs it.
    Ours,
    /// The named source runs another revision (these).
    Differs(String),
    /// Argo CD reports no revision for the named source.
    Unknown,
    /// A prefix that matches several different revisions.
    Ambiguous(String),
}

/// The revision of source `i` in a `revision`/`revisions` pair (single-source apps use
/// `revision`).
fn revision_at<'a>(revision: &'a str, revisions: &'a [String], i: usize) -> &'a str {
    if revisions.is_empty() {
        if i == 0 { revision } else { "" }
    } else {
        revisions.get(i).map(String::as_str).unwrap_or("")
    }
}

fn compare(revision: &str, revisions: &[String], sources: &[usize], want: &str) -> RevMatch {
    let have: Vec<&str> = sources
        .iter()
        .map(|i| revision_at(revision, revisions, *i))
        .filter(|r| !r.is_empty())
        .collect();
    if have.is_empty() {
        return RevMatch::Unknown;
    }
    let mut matched: Vec<&str> = have.iter().copied().filter(|h| rev_matches(want, h)).collect();
    matched.sort_unstable();
    matched.dedup();
    match matched.len() {
        0 => {
            let mut differs: Vec<&str> = have;
            differs.dedup();
            RevMatch::Differs(differs.join(","))
        }
        1 => RevMatch::Ours,
        _ => RevMatch::Ambiguous(format!(
            "revision {want:?} matches several revisions ({}): give more characters or name the source",
            matched.join(", ")
        )),
    }
}

/// What the wait remembers about one application between judgements.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// This wait saw Argo CD at our revision.
    pub seen_ours: bool,
    /// The latest evaluation of the expectations.
    pub content: Option<Content>,
}

/// An evaluation of the expectations against Argo CD's managed resources.
#[derive(Clone, Debug, PartialEq)]
pub struct Content {
    /// [`revision_key`] of the application when it was asked for.
    pub key: String,
    /// One outcome per expectation, or why there are none.
    pub outcomes: Result<Vec<Outcome>, String>,
}

/// The revisions Argo CD compares against, as one string: an evaluation belongs to it.
pub fn revision_key(app: &Application) -> String {
    format!("{}|{}", app.sync.revision, app.sync.revisions.join(","))
}

/// What the caller wants.
#[derive(Clone, Debug, Default)]
pub struct Want {
    /// The revision committed, if given.
    pub revision: Option<RevisionSpec>,
    /// What the change sets, if given.
    pub expectations: Vec<Expectation>,
    /// How long Degraded is tolerated once nothing runs.
    pub degraded_grace: Duration,
}

/// One expectation's outcome as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpectationReport {
    /// Which resource and path.
    pub expectation: String,
    /// The expected value.
    pub expected: Value,
    /// In Argo CD's target manifests.
    pub target: Side,
    /// In the cluster.
    pub live: Side,
}

/// The judgement of one application.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// What is still missing (`refresh`, `operation`, `sync`, `health`, `content`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<&'static str>,
    /// A sentence for people and CI logs.
    pub message: String,
    /// The revision(s) Argo CD runs for the named source(s).
    pub argocd_revision: String,
    /// The expectations' outcomes, when evaluated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expectations: Vec<ExpectationReport>,
}

impl Judgement {
    fn new(verdict: Verdict, message: impl Into<String>) -> Self {
        Self {
            verdict,
            missing: vec![],
            message: message.into(),
            argocd_revision: String::new(),
            expectations: vec![],
        }
    }

    fn missing(mut self, m: &'static str) -> Self {
        self.missing.push(m);
        self
    }
}

fn short(rev: &str) -> String {
    rev.split(',')
        .map(|r| if r.len() > 12 && is_hex(r) { &r[..12] } else { r })
        .collect::<Vec<_>>()
        .join(",")
}

fn running(op: &Operation) -> bool {
    matches!(op.phase, OperationPhase::Running | OperationPhase::Terminating)
}

fn task_name(t: &crate::wire::item::SyncTask) -> String {
    format!("{}/{}", t.kind, t.name)
}

/// "operation Running (PostSync, wave 1): PostSync hook Job/smoke Running; <Argo CD's message>".
pub fn progress_text(op: &Operation) -> String {
    let mut out = format!("operation {}", op.phase);
    if let Some(p) = &op.progress {
        let mut where_ = vec![];
        if !p.sync_phase.is_empty() {
            where_.push(p.sync_phase.to_string());
        }
        if let Some(w) = p.wave {
            where_.push(format!("wave {w}"));
        }
        if !where_.is_empty() {
            out.push_str(&format!(" ({})", where_.join(", ")));
        }
        let busy: Vec<String> = p
            .hooks
            .iter()
            .filter(|h| matches!(h.hook_phase.as_str(), "Running" | "Pending" | "Terminating"))
            .map(|h| format!("{} hook {} {}", h.hook_type, task_name(h), h.hook_phase))
            .collect();
        if !busy.is_empty() {
            out.push_str(&format!(": {}", busy.join(", ")));
        }
        let done: u32 = p.phases.get("Succeeded").copied().unwrap_or(0);
        let total: u32 = p.phases.values().sum();
        out.push_str(&format!(" [{done}/{total} tasks done]"));
    }
    if !op.message.is_empty() {
        out.push_str(&format!("; {}", op.message));
    }
    out
}

/// Argo CD's failure message plus the messages of the hooks and tasks that failed.
pub fn failure_text(op: &Operation) -> String {
    let mut out = format!("operation {}", op.phase);
    if !op.message.is_empty() {
        out.push_str(&format!(": {}", op.message));
    }
    if let Some(p) = &op.progress {
        let failed = p
            .hooks
            .iter()
            .chain(p.failed.iter())
            .filter(|t| matches!(t.hook_phase.as_str(), "Failed" | "Error") || t.status == "SyncFailed");
        for t in failed {
            let what = if t.hook_type.is_empty() {
                task_name(t)
            } else {
                format!("{} hook {}", t.hook_type, task_name(t))
            };
            let phase = if t.hook_phase.is_empty() {
                &t.status
            } else {
                &t.hook_phase
            };
            out.push_str(&format!("; {what} {phase}"));
            if !t.message.is_empty() {
                out.push_str(&format!(": {}", t.message));
            }
        }
    }
    out
}

/// The expectations' reports for an evaluation.
fn reports(expectations: &[Expectation], outcomes: &[Outcome]) -> Vec<ExpectationReport> {
    expectations
        .iter()
        .zip(outcomes)
        .map(|(e, o)| ExpectationReport {
            expectation: e.describe(),
            expected: e.value.clone(),
            target: o.target.clone(),
            live: o.live.clone(),
        })
        .collect()
}

/// The first expectation not met on one side, as "Kind ns/name path: expected X, target has Y".
fn first_unmet(expectations: &[Expectation], outcomes: &[Outcome], live: bool) -> Option<String> {
    expectations.iter().zip(outcomes).find_map(|(e, o)| {
        let (side, label) = if live { (&o.live, "live") } else { (&o.target, "target") };
        (!side.met).then(|| {
            let found = if !side.present {
                format!("{label} has no such resource")
            } else if side.value.is_null() {
                format!("{label} has no value there")
            } else {
                format!("{label} has {}", side.value)
            };
            format!("{}: expected {}, {found}", e.describe(), e.value)
        })
    })
}

/// Judges one application against what the caller wants; `degraded_for` is how long the wait
/// has seen it Degraded with no operation running.
pub fn judge(app: &Application, want: &Want, memory: &Memory, degraded_for: Option<Duration>) -> Judgement {
    let sources = match &want.revision {
        Some(spec) => match named_sources(app, &spec.source) {
            Ok(s) => Some(s),
            Err(m) => return Judgement::new(Verdict::Failed, m),
        },
        None => None,
    };
    let all: Vec<usize> = (0..source_count(app)).collect();
    let idx = sources.as_deref().unwrap_or(&all);
    let argocd_revision = short(
        &idx.iter()
            .map(|i| revision_at(&app.sync.revision, &app.sync.revisions, *i))
            .collect::<Vec<_>>()
            .join(","),
    );
    let mut j = judge_inner(app, want, memory, degraded_for, idx);
    j.argocd_revision = argocd_revision;
    if j.expectations.is_empty()
        && !want.expectations.is_empty()
        && let Some(Content {
            key,
            outcomes: Ok(outcomes),
        }) = &memory.content
        && *key == revision_key(app)
    {
        j.expectations = reports(&want.expectations, outcomes);
    }
    j
}

fn judge_inner(
    app: &Application,
    want: &Want,
    memory: &Memory,
    degraded_for: Option<Duration>,
    idx: &[usize],
) -> Judgement {
    let wanted = want.revision.as_ref().map(|s| s.revision.as_str());
    let op = app.operation.as_ref();
    let op_for_ours = |o: &Operation| match wanted {
        None => true,
        Some(w) => compare(&o.revision, &o.revisions, idx, w) == RevMatch::Ours,
    };
    // A failed operation for our revision is final, whatever the sync state says: a PostSync
    // hook can fail after every resource applied cleanly.
    if let Some(o) = op
        && !running(o)
        && matches!(o.phase, OperationPhase::Failed | OperationPhase::Error)
        && !o.dry_run
        && op_for_ours(o)
    {
        return Judgement::new(Verdict::Failed, failure_text(o));
    }
    if let Some(o) = op
        && running(o)
    {
        return Judgement::new(Verdict::Progressing, progress_text(o)).missing("operation");
    }
    let Some(w) = wanted else {
        return state_verdict(app, want, memory, degraded_for, None);
    };
    match compare(&app.sync.revision, &app.sync.revisions, idx, w) {
        RevMatch::Ambiguous(m) => Judgement::new(Verdict::Failed, m),
        RevMatch::Unknown => Judgement::new(
            Verdict::NotYetSeen,
            "Argo CD has not compared this application against any revision yet",
        )
        .missing("refresh"),
        RevMatch::Ours => state_verdict(app, want, memory, degraded_for, None),
        RevMatch::Differs(argo) => {
            let seen = memory.seen_ours
                || app
                    .history
                    .iter()
                    .any(|h| compare(&h.revision, &h.revisions, idx, w) == RevMatch::Ours);
            if want.expectations.is_empty() {
                let message = if seen {
                    format!(
                        "Argo CD ran {} and now runs {}: revision differs, content not checked (state expectations to judge a later revision)",
                        short(w),
                        short(&argo)
                    )
                } else {
                    format!(
                        "Argo CD runs {}, not {} yet: revision differs, content not checked",
                        short(&argo),
                        short(w)
                    )
                };
                return Judgement::new(Verdict::NotYetSeen, message).missing("refresh");
            }
            match current_content(app, memory) {
                None => Judgement::new(
                    Verdict::Progressing,
                    format!(
                        "Argo CD runs {}, not {}: reading its target manifests to check the expectations",
                        short(&argo),
                        short(w)
                    ),
                )
                .missing("content"),
                Some(Err(e)) => Judgement::new(
                    Verdict::Progressing,
                    format!(
                        "Argo CD runs {}, not {}; the expectations cannot be checked yet: {e}",
                        short(&argo),
                        short(w)
                    ),
                )
                .missing("content"),
                Some(Ok(outcomes)) => {
                    let kept = outcomes.iter().all(|o| o.target.met);
                    if kept {
                        let note = format!(
                            "Argo CD runs {} (not {}), whose target keeps our change",
                            short(&argo),
                            short(w)
                        );
                        return state_verdict(app, want, memory, degraded_for, Some(note));
                    }
                    let unmet = first_unmet(&want.expectations, outcomes, false).unwrap_or_default();
                    if seen {
                        Judgement::new(
                            Verdict::Overwritten,
                            format!(
                                "Argo CD ran {} and now runs {}, whose target no longer has our change: {unmet}",
                                short(w),
                                short(&argo)
                            ),
                        )
                    } else {
                        Judgement::new(
                            Verdict::NotYetSeen,
                            format!(
                                "Argo CD runs {}, not {} yet, and its target does not have our change: {unmet}",
                                short(&argo),
                                short(w)
                            ),
                        )
                        .missing("refresh")
                    }
                }
            }
        }
    }
}

/// The content evaluation of the application's current revision, if there is one.
fn current_content<'a>(app: &Application, memory: &'a Memory) -> Option<&'a Result<Vec<Outcome>, String>> {
    memory
        .content
        .as_ref()
        .filter(|c| c.key == revision_key(app))
        .map(|c| &c.outcomes)
}

/// At our revision (or one that keeps our change): sync, health and, with expectations, the
/// live content decide.
fn state_verdict(
    app: &Application,
    want: &Want,
    memory: &Memory,
    degraded_for: Option<Duration>,
    note: Option<String>,
) -> Judgement {
    let mut missing = vec![];
    let mut parts = vec![];
    if let Some(n) = note {
        parts.push(n);
    }
    if app.sync.status != SyncStatusCode::Synced {
        missing.push("sync");
        let hint = match &app.sync_policy {
            Some(p) if p.automated => "; automated sync will apply it",
            Some(_) => "; automated sync is off: sync it (the wait's sync option, or hub sync)",
            None => "",
        };
        let status = if app.sync.status.as_str().is_empty() {
            "not compared yet"
        } else {
            app.sync.status.as_str()
        };
        parts.push(format!("sync {status}{hint}"));
    }
    if app.health.status != HealthStatusCode::Healthy {
        if app.health.status == HealthStatusCode::Degraded
            && let Some(d) = degraded_for
            && d >= want.degraded_grace
        {
            let mut m = format!("Degraded for {}s with no operation running", d.as_secs());
            if !app.health.message.is_empty() {
                m.push_str(&format!(": {}", app.health.message));
            }
            return Judgement::new(Verdict::Failed, m);
        }
        missing.push("health");
        let mut h = format!("health {}", app.health.status);
        if app.health.status.as_str().is_empty() {
            h = "health not reported yet".into();
        }
        if !app.health.message.is_empty() {
            h.push_str(&format!(": {}", app.health.message));
        }
        parts.push(h);
    }
    if !want.expectations.is_empty() {
        match current_content(app, memory) {
            None => {
                missing.push("content");
                parts.push("checking the expectations".into());
            }
            Some(Err(e)) => {
                missing.push("content");
                parts.push(format!("the expectations cannot be checked yet: {e}"));
            }
            Some(Ok(outcomes)) => {
                if let Some(u) = first_unmet(&want.expectations, outcomes, false) {
                    missing.push("content");
                    parts.push(format!("the target does not have the expected value: {u}"));
                } else if let Some(u) = first_unmet(&want.expectations, outcomes, true) {
                    missing.push("content");
                    parts.push(format!("not live yet: {u}"));
                }
            }
        }
    }
    if missing.is_empty() {
        let mut m = "Synced and Healthy".to_owned();
        if let Some(o) = app.operation.as_ref().filter(|o| o.phase == OperationPhase::Succeeded) {
            m.push_str(&format!("; last operation {}", o.phase));
            if !o.message.is_empty() {
                m.push_str(&format!(": {}", o.message));
            }
        }
        if !want.expectations.is_empty() {
            m.push_str("; every expectation met in the target and live");
        }
        parts.push(m);
        return Judgement::new(Verdict::Deployed, parts.join("; "));
    }
    let mut j = Judgement::new(Verdict::Progressing, parts.join("; "));
    j.missing = missing;
    j
}

/// Whether the application currently runs our revision (the wait remembers it: a later
/// revision without our change is then `Overwritten`, not `NotYetSeen`).
pub fn runs_ours(app: &Application, want: &Want) -> bool {
    let Some(spec) = &want.revision else { return false };
    let Ok(idx) = named_sources(app, &spec.source) else {
        return false;
    };
    compare(&app.sync.revision, &app.sync.revisions, &idx, &spec.revision) == RevMatch::Ours
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OURS: &str = "1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const OLD: &str = "0000000bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const LATER: &str = "2222222ccccccccccccccccccccccccccccccccc";

    fn app(v: Value) -> Application {
        serde_json::from_value(v).unwrap()
    }

    fn deployed_at(rev: &str) -> Application {
        app(json!({
            "namespace": "argocd", "name": "shop",
            "sources": [{"repoURL": "https://git.example.com/shop.git"}],
            "sync": {"status": "Synced", "revision": rev}, "health": {"status": "Healthy"},
            "operation": {"phase": "Succeeded", "message": "successfully synced (all tasks run)", "revision": rev},
            "syncPolicy": {"automated": true}
        }))
    }

    fn want(rev: &str) -> Want {
        Want {
            revision: Some(RevisionSpec {
                revision: rev.into(),
                source: SourceRef::Any,
            }),
            expectations: vec![],
            degraded_grace: Duration::from_secs(60),
        }
    }

    fn image(value: &str) -> Expectation {
        Expectation {
            group: "apps".into(),
            kind: "Deployment".into(),
            namespace: "shop".into(),
            name: "shop".into(),
            path: "spec.template.spec.containers[name=web].image".into(),
            value: json!(value),
        }
    }

    fn side(met: bool, value: &str) -> Side {
        Side {
            present: true,
            value: json!(value),
            met,
        }
    }

    fn content(a: &Application, target: bool, live: bool) -> Memory {
        Memory {
            seen_ours: false,
            content: Some(Content {
                key: revision_key(a),
                outcomes: Ok(vec![Outcome {
                    target: side(target, if target { "shop:2" } else { "shop:3" }),
                    live: side(live, if live { "shop:2" } else { "shop:1" }),
                }]),
            }),
        }
    }

    #[test]
    fn revisions_match_exactly_or_by_a_long_unambiguous_prefix() {
        assert!(check_revision(&OURS[..7]).is_ok());
        assert!(check_revision(&OURS[..6]).is_err());
        assert!(check_revision("1.2.3").is_ok());
        assert!(check_revision("").is_err());
        let a = deployed_at(OURS);
        let m = Memory::default();
        assert_eq!(judge(&a, &want(OURS), &m, None).verdict, Verdict::Deployed);
        assert_eq!(judge(&a, &want(&OURS[..7]), &m, None).verdict, Verdict::Deployed);
        assert_eq!(
            judge(&a, &want(&OURS[..7].to_uppercase()), &m, None).verdict,
            Verdict::Deployed
        );
        // A prefix shorter than the minimum never matches, even if checks were skipped.
        assert_eq!(judge(&a, &want(&OURS[..6]), &m, None).verdict, Verdict::NotYetSeen);
        assert_eq!(judge(&a, &want(OLD), &m, None).verdict, Verdict::NotYetSeen);
        // Without a revision the state decides.
        let any = Want {
            revision: None,
            ..want(OURS)
        };
        assert_eq!(judge(&a, &any, &m, None).verdict, Verdict::Deployed);
    }

    #[test]
    fn the_named_source_of_a_multi_source_app_decides() {
        let a = app(json!({
            "namespace": "argocd", "name": "multi",
            "sources": [{"repoURL": "https://git.example.com/chart.git", "name": "chart"},
                        {"repoURL": "https://git.example.com/values", "name": "values", "ref": "values"}],
            "sync": {"status": "Synced", "revisions": [OLD, OURS]}, "health": {"status": "Healthy"}
        }));
        let m = Memory::default();
        let with = |source: SourceRef| Want {
            revision: Some(RevisionSpec {
                revision: OURS.into(),
                source,
            }),
            ..want(OURS)
        };
        assert_eq!(
            judge(&a, &with(SourceRef::Position(2)), &m, None).verdict,
            Verdict::Deployed
        );
        assert_eq!(
            judge(&a, &with(SourceRef::Position(1)), &m, None).verdict,
            Verdict::NotYetSeen
        );
        assert_eq!(
            judge(&a, &with(SourceRef::Name("values".into())), &m, None).verdict,
            Verdict::Deployed
        );
        assert_eq!(
            judge(&a, &with(SourceRef::Name("chart".into())), &m, None).verdict,
            Verdict::NotYetSeen
        );
        assert_eq!(
            judge(
                &a,
                &with(SourceRef::RepoUrl("https://git.example.com/values.git/".into())),
                &m,
                None
            )
            .verdict,
            Verdict::Deployed
        );
        let bad = judge(&a, &with(SourceRef::Position(3)), &m, None);
        assert_eq!(bad.verdict, Verdict::Failed);
        assert!(bad.message.contains("2 source(s)"), "{}", bad.message);
        assert_eq!(judge(&a, &with(SourceRef::Any), &m, None).verdict, Verdict::Deployed);
        // Two different revisions behind one prefix: refused, not guessed.
        let twins = app(json!({
            "sources": [{"repoURL": "a"}, {"repoURL": "b"}],
            "sync": {"status": "Synced", "revisions": ["1111111aaaa", "1111111bbbb"]}, "health": {"status": "Healthy"}
        }));
        let j = judge(&twins, &want("1111111"), &m, None);
        assert_eq!(j.verdict, Verdict::Failed);
        assert!(j.message.contains("several"), "{}", j.message);
    }

    #[test]
    fn a_running_operation_is_progressing_with_its_hooks_and_a_failed_one_is_failed() {
        let mut a = deployed_at(OURS);
        a.operation = Some(
            serde_json::from_value(json!({
                "phase": "Running", "message": "waiting for completion of hook batch/Job/smoke", "revision": OURS,
                "progress": {"phases": {"Succeeded": 2, "Running": 1}, "syncPhase": "PostSync", "wave": 0,
                    "hooks": [{"kind": "Job", "name": "smoke", "hookType": "PostSync", "hookPhase": "Running"}]}
            }))
            .unwrap(),
        );
        let j = judge(&a, &want(OURS), &Memory::default(), None);
        assert_eq!(j.verdict, Verdict::Progressing);
        assert_eq!(j.missing, vec!["operation"]);
        assert!(j.message.contains("PostSync hook Job/smoke Running"), "{}", j.message);
        assert!(j.message.contains("[2/3 tasks done]"), "{}", j.message);
        let op = a.operation.as_mut().unwrap();
        op.phase = OperationPhase::Failed;
        op.message = "one or more synchronization tasks completed unsuccessfully".into();
        let hook = &mut op.progress.as_mut().unwrap().hooks[0];
        hook.hook_phase = "Failed".into();
        hook.message = "Job has reached the specified backoff limit".into();
        let j = judge(&a, &want(OURS), &Memory::default(), None);
        assert_eq!(j.verdict, Verdict::Failed);
        assert!(
            j.message
                .contains("PostSync hook Job/smoke Failed: Job has reached the specified backoff limit"),
            "{}",
            j.message
        );
        // A failure of another revision's operation is not ours.
        assert_eq!(
            judge(&a, &want(LATER), &Memory::default(), None).verdict,
            Verdict::NotYetSeen
        );
        // A dry run that failed applied nothing: it does not fail the deployment.
        a.operation.as_mut().unwrap().dry_run = true;
        assert_ne!(
            judge(&a, &want(OURS), &Memory::default(), None).verdict,
            Verdict::Failed
        );
    }

    #[test]
    fn sync_health_and_the_degraded_grace() {
        let mut a = deployed_at(OURS);
        a.sync.status = SyncStatusCode::OutOfSync;
        a.sync_policy = Some(crate::wire::item::SyncPolicy::default());
        let j = judge(&a, &want(OURS), &Memory::default(), None);
        assert_eq!(j.verdict, Verdict::Progressing);
        assert_eq!(j.missing, vec!["sync"]);
        assert!(j.message.contains("automated sync is off"), "{}", j.message);
        a.sync.status = SyncStatusCode::Synced;
        a.health.status = HealthStatusCode::Degraded;
        a.health.message = "Deployment exceeded its progress deadline".into();
        let w = want(OURS);
        assert_eq!(
            judge(&a, &w, &Memory::default(), Some(Duration::from_secs(5))).verdict,
            Verdict::Progressing
        );
        let j = judge(&a, &w, &Memory::default(), Some(Duration::from_secs(61)));
        assert_eq!(j.verdict, Verdict::Failed);
        assert!(j.message.contains("progress deadline"), "{}", j.message);
    }

    #[test]
    fn the_five_scenarios() {
        let m = Memory::default();
        // 1. Our revision, synced and healthy.
        assert_eq!(
            judge(&deployed_at(OURS), &want(OURS), &m, None).verdict,
            Verdict::Deployed
        );
        // 2. Our revision, still rolling out.
        let mut rolling = deployed_at(OURS);
        rolling.health.status = HealthStatusCode::Progressing;
        assert_eq!(judge(&rolling, &want(OURS), &m, None).verdict, Verdict::Progressing);
        // 3. Argo CD has not refreshed to our commit: older revision, no change in its target.
        let old = deployed_at(OLD);
        let mut w = want(OURS);
        w.expectations = vec![image("shop:2")];
        let j = judge(&old, &w, &content(&old, false, false), None);
        assert_eq!(j.verdict, Verdict::NotYetSeen);
        assert_eq!(j.missing, vec!["refresh"]);
        assert_eq!(j.expectations.len(), 1);
        // Without expectations: also not yet seen, and it says the content was not checked.
        let j = judge(&old, &want(OURS), &m, None);
        assert_eq!(j.verdict, Verdict::NotYetSeen);
        assert!(j.message.contains("content not checked"), "{}", j.message);
        // 4. A later commit overwrote our change: we ran (history), the target lost it.
        let mut later = deployed_at(LATER);
        later.history = vec![serde_json::from_value(json!({"id": 4, "revision": OURS})).unwrap()];
        let j = judge(&later, &w, &content(&later, false, false), None);
        assert_eq!(j.verdict, Verdict::Overwritten, "{}", j.message);
        assert!(
            j.message.contains("expected \"shop:2\", target has \"shop:3\""),
            "{}",
            j.message
        );
        // Seen by this wait rather than in the history: the same.
        let mut seen = content(&deployed_at(LATER), false, false);
        seen.seen_ours = true;
        assert_eq!(
            judge(&deployed_at(LATER), &w, &seen, None).verdict,
            Verdict::Overwritten
        );
        // 5. A later unrelated commit keeps our change: deployed, by content.
        let j = judge(&later, &w, &content(&later, true, true), None);
        assert_eq!(j.verdict, Verdict::Deployed, "{}", j.message);
        assert!(j.message.contains("keeps our change"), "{}", j.message);
        // ... but not before it is live.
        let j = judge(&later, &w, &content(&later, true, false), None);
        assert_eq!(j.verdict, Verdict::Progressing);
        assert_eq!(j.missing, vec!["content"]);
        // Without expectations, a later revision is not judged by content.
        let j = judge(&later, &want(OURS), &m, None);
        assert_eq!(j.verdict, Verdict::NotYetSeen);
        assert!(
            j.message.contains("revision differs, content not checked"),
            "{}",
            j.message
        );
        // An evaluation made for another revision does not count.
        let stale = content(&old, true, true);
        assert_eq!(judge(&later, &w, &stale, None).verdict, Verdict::Progressing);
    }

    #[test]
    fn texts() {
        assert_eq!(Verdict::NotYetSeen.as_str(), "NotYetSeen");
        assert!(Verdict::Overwritten.is_failure() && !Verdict::NotYetSeen.is_failure());
        assert_eq!(short(&format!("{OURS},{OLD}")), "1111111aaaaa,0000000bbbbb");
    }
}
