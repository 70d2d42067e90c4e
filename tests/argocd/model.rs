//! The model against the real Argo CD objects and the simulator's synthetic ones.

use argocd_gateway::argocd::model::{HealthStatusCode, OperationPhase, SyncStatusCode, decode_application};
use argocd_gateway::simulator::objects::synthetic_app;
use serde_json::Value;

/// The Application fixtures (the directory also holds ApplicationSets and a project).
fn fixtures() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/argocd");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read fixture");
            (p.file_name().unwrap_or_default().to_string_lossy().into_owned(), text)
        })
        .filter(|(_, text)| serde_json::from_str::<Value>(text).is_ok_and(|v| v["kind"] == "Application"))
        .collect();
    out.sort();
    out
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[test]
fn every_real_application_decodes_with_values_intact() {
    let files = fixtures();
    assert_eq!(
        files.len(),
        14,
        "all Application objects of ../shared/argocd/json are fixtures"
    );
    for (name, text) in files {
        let raw: Value = serde_json::from_str(&text).expect("fixture is JSON");
        assert_eq!(raw["kind"], "Application", "{name}");
        let d = decode_application(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let app = &d.app;
        assert_eq!(app.name, s(&raw, &["metadata", "name"]), "{name}");
        assert_eq!(app.namespace, s(&raw, &["metadata", "namespace"]), "{name}");
        let project = s(&raw, &["spec", "project"]);
        assert_eq!(
            app.project,
            if project.is_empty() { "default" } else { project },
            "{name}"
        );
        assert_eq!(
            app.sync.status.as_str(),
            s(&raw, &["status", "sync", "status"]),
            "{name}"
        );
        assert_eq!(app.sync.revision, s(&raw, &["status", "sync", "revision"]), "{name}");
        assert_eq!(
            app.sync.revisions,
            strings(&raw["status"]["sync"]["revisions"]),
            "{name}"
        );
        assert_eq!(
            app.health.status.as_str(),
            s(&raw, &["status", "health", "status"]),
            "{name}"
        );
        assert_eq!(app.health.message, s(&raw, &["status", "health", "message"]), "{name}");
        let op = &raw["status"]["operationState"];
        match (&app.operation, op.is_object()) {
            (None, false) => {}
            (Some(o), true) => {
                assert_eq!(o.phase.as_str(), s(op, &["phase"]), "{name}");
                assert_eq!(o.message, s(op, &["message"]), "{name}");
                let (rev, revs) = if op["syncResult"].is_object() {
                    (
                        s(op, &["syncResult", "revision"]),
                        strings(&op["syncResult"]["revisions"]),
                    )
                } else {
                    (
                        s(op, &["operation", "sync", "revision"]),
                        strings(&op["operation"]["sync"]["revisions"]),
                    )
                };
                assert_eq!(o.revision, rev, "{name}");
                assert_eq!(o.revisions, revs, "{name}");
                assert_eq!(
                    o.started_at.map(|t| t.to_string()).unwrap_or_default(),
                    s(op, &["startedAt"]),
                    "{name}"
                );
                assert_eq!(
                    o.finished_at.map(|t| t.to_string()).unwrap_or_default(),
                    s(op, &["finishedAt"]),
                    "{name}"
                );
            }
            (got, want) => panic!("{name}: operation {got:?} but operationState present = {want}"),
        }
        let sources = if raw["spec"]["sources"].is_array() {
            raw["spec"]["sources"].as_array().cloned().unwrap_or_default()
        } else if raw["spec"]["source"].is_object() {
            vec![raw["spec"]["source"].clone()]
        } else {
            vec![]
        };
        assert_eq!(app.sources.len(), sources.len(), "{name}");
        for (m, r) in app.sources.iter().zip(&sources) {
            assert_eq!(m.repo_url, s(r, &["repoURL"]), "{name}");
            assert_eq!(m.target_revision, s(r, &["targetRevision"]), "{name}");
            assert_eq!(m.chart, s(r, &["chart"]), "{name}");
            assert_eq!(m.reference, s(r, &["ref"]), "{name}");
        }
        assert_eq!(
            app.destination.server,
            s(&raw, &["spec", "destination", "server"]),
            "{name}"
        );
        assert_eq!(
            app.destination.name,
            s(&raw, &["spec", "destination", "name"]),
            "{name}"
        );
        assert_eq!(
            app.conditions.len(),
            raw["status"]["conditions"].as_array().map_or(0, Vec::len),
            "{name}"
        );
        let labels = raw["metadata"]["labels"].as_object().map_or(0, |m| m.len());
        assert_eq!(app.labels.len(), labels, "{name}");
    }
}

#[test]
fn specific_real_values() {
    let load = |f: &str| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/argocd")
            .join(f);
        decode_application(&std::fs::read_to_string(p).expect("fixture"))
            .expect("decodes")
            .app
    };
    let multi = load("controller__appcontroller_test.go__fakeMultiSourceApp.json");
    assert_eq!(multi.sources.len(), 3);
    assert_eq!(multi.sources[2].reference, "values_test");
    let op = multi.operation.expect("operation");
    assert_eq!(op.phase, OperationPhase::Succeeded);
    assert_eq!(op.revisions.len(), 3);
    assert!(op.revisions[0].starts_with("aaaa"));
    let running = load("controller__metrics__metrics_test.go__fakeAppOperationRunning.json");
    let op = running.operation.expect("operation");
    assert_eq!(op.phase, OperationPhase::Running);
    assert_eq!(op.finished_at, None);
    assert_eq!(running.health.status, HealthStatusCode::Progressing);
    assert_eq!(running.sync.status, SyncStatusCode::OutOfSync);
    let unknown = load("test__e2e__app_management_test.go__reconciledAt-unknown-health.json");
    assert_eq!(unknown.health.status, HealthStatusCode::Unknown);
    assert_eq!(
        unknown.reconciled_at.map(|t| t.to_string()).as_deref(),
        Some("2023-01-01T00:00:00Z")
    );
    let conditions = load("controller__metrics__metrics_test.go__fakeApp4.json");
    assert_eq!(conditions.conditions[0].kind, "OrphanedResourceWarning");
    let default_project = load("controller__metrics__metrics_test.go__fakeDefaultApp.json");
    assert_eq!(default_project.project, "default");
}

#[test]
fn hub_field_names() {
    let d = decode_application(&synthetic_app(3, "argocd").to_string()).expect("decodes");
    let v = serde_json::to_value(&d.app).expect("serialises");
    for key in [
        "namespace",
        "name",
        "project",
        "annotations",
        "labels",
        "sources",
        "destination",
        "sync",
        "health",
        "operation",
        "reconciledAt",
        "resources",
        "images",
        "conditions",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    for key in ["repoURL", "path", "chart", "targetRevision", "ref", "name"] {
        assert!(v["sources"][0].get(key).is_some(), "missing sources[].{key}");
    }
    for key in ["phase", "message", "startedAt", "finishedAt", "revision", "revisions"] {
        assert!(v["operation"].get(key).is_some(), "missing operation.{key}");
    }
    for key in ["group", "version", "kind", "namespace", "name", "status", "health"] {
        assert!(v["resources"][1].get(key).is_some(), "missing resources[].{key}");
    }
    assert_eq!(
        v["sync"]["revisions"].as_array().map(Vec::len),
        Some(2),
        "multi-source app {v}"
    );
    assert_eq!(v["resources"][1]["health"]["status"], "Healthy");
    assert_eq!(v["images"][0], "gcr.io/heptio-images/ks-guestbook-demo:0.2");
    // Round trip: what the hub receives decodes back to the same model.
    let back: argocd_gateway::argocd::Application = serde_json::from_value(v).expect("round trip");
    assert_eq!(back, d.app);
}
