//! Deployment verification figures, printed beside their targets (never asserted): what one
//! evaluation of a wait's expectations costs the gateway — decoding Argo CD's managed-resources
//! answer of a large application (target and live manifests as JSON text, as argocd-server
//! sends them) and evaluating 1, 10 and 100 expectations against it — and what one verdict
//! costs the hub, which judges every followed application on each relayed change.
//!
//! `cargo bench --bench verify` (optionally `-- RESOURCES`, default 500).

use std::time::{Duration, Instant};

use argocd_gateway::hub::verdict::{Content, Memory, RevisionSpec, SourceRef, Verdict, Want, judge, revision_key};
use argocd_gateway::wire::expectation::{Expectation, evaluate};
use argocd_gateway::wire::item::Application;
use serde_json::{Value, json};

/// A Deployment as the cluster holds it: containers with env, probes and resources, managed
/// fields and status — live objects are several times the size of their manifests.
fn deployment(i: usize, live: bool) -> Value {
    let containers: Vec<Value> = ["web", "sidecar", "metrics"]
        .iter()
        .map(|c| {
            let env: Vec<Value> = (0..15)
                .map(|e| json!({"name": format!("SETTING_{e}"), "value": format!("value-{i}-{e}")}))
                .collect();
            json!({"name": c, "image": format!("registry.example.com/team/{c}:1.{i}.0"), "env": env,
                   "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                   "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                   "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10}})
        })
        .collect();
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("svc-{i}"), "namespace": "shop",
                     "labels": {"app.kubernetes.io/name": format!("svc-{i}"), "app.kubernetes.io/instance": "shop"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app.kubernetes.io/name": format!("svc-{i}")}},
                 "template": {"metadata": {"labels": {"app.kubernetes.io/name": format!("svc-{i}")}},
                              "spec": {"containers": containers}}}
    });
    if live {
        let fields: Vec<Value> = (0..4)
            .map(|m| {
                json!({"manager": format!("manager-{m}"), "operation": "Update", "apiVersion": "apps/v1",
                           "time": "2024-05-01T10:00:00Z", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}}})
            })
            .collect();
        d["metadata"]["managedFields"] = json!(fields);
        d["metadata"]["uid"] = json!(format!("0000-{i:08}"));
        d["metadata"]["resourceVersion"] = json!(format!("{}", 1000 + i));
        d["status"] = json!({"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3, "observedGeneration": 4,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                           {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]});
    }
    d
}

/// Argo CD's `GET …/managed-resources` answer: one ResourceDiff per resource.
fn managed(resources: usize) -> Vec<u8> {
    let items: Vec<Value> = (0..resources)
        .map(|i| {
            json!({"group": "apps", "kind": "Deployment", "namespace": "shop", "name": format!("svc-{i}"),
                   "targetState": deployment(i, false).to_string(), "liveState": deployment(i, true).to_string(),
                   "normalizedLiveState": deployment(i, false).to_string(), "modified": false, "hook": false})
        })
        .collect();
    serde_json::to_vec(&json!({"items": items})).unwrap()
}

/// `n` expectations on resources spread over the list, the last at its end (the slowest to find).
fn expectations(n: usize, resources: usize) -> Vec<Expectation> {
    (0..n)
        .map(|k| {
            let i = resources - 1 - (k * resources / n.max(1)).min(resources - 1);
            Expectation {
                group: "apps".into(),
                kind: "Deployment".into(),
                namespace: "shop".into(),
                name: format!("svc-{i}"),
                path: "spec.template.spec.containers[name=web].image".into(),
                value: json!(format!("registry.example.com/team/web:1.{i}.0")),
            }
        })
        .collect()
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

fn row(what: &str, got: Duration, target: Duration) {
    let verdict = if got <= target { "ok" } else { "OVER" };
    println!(
        "{what:<62} {:>10.3} ms   target {:>8.3} ms   {verdict}",
        got.as_secs_f64() * 1e3,
        target.as_secs_f64() * 1e3
    );
}

fn main() {
    let resources: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let body = managed(resources);
    println!(
        "managed-resources answer of {resources} Deployments: {:.1} MiB",
        body.len() as f64 / (1024.0 * 1024.0)
    );
    let decode = median(9, || {
        let v: Value = serde_json::from_slice(&body).unwrap();
        std::hint::black_box(v);
    });
    row("gateway: decode the answer", decode, Duration::from_millis(100));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    for n in [1, 10, 100] {
        let list = expectations(n, resources);
        let out = evaluate(&list, &answer);
        assert!(
            out.iter().all(|o| o.target.met && o.live.met),
            "the bench evaluates what it means to"
        );
        let t = median(9, || {
            std::hint::black_box(evaluate(&list, &answer));
        });
        row(
            &format!("gateway: evaluate {n} expectation(s)"),
            t,
            Duration::from_millis(n as u64),
        );
    }

    // The hub: one judgement of an application at a later revision whose target keeps our
    // change (the longest path: revision, history, content, sync, health).
    let ours = "1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let later = "2222222ccccccccccccccccccccccccccccccccc";
    let history: Vec<Value> = (0..10)
        .map(|i| json!({"id": i, "revision": format!("{i:040x}")}))
        .collect();
    let app: Application = serde_json::from_value(json!({
        "namespace": "argocd", "name": "shop", "sources": [{"repoURL": "https://git.example.com/shop.git"}],
        "sync": {"status": "Synced", "revision": later}, "health": {"status": "Healthy"},
        "operation": {"phase": "Succeeded", "message": "successfully synced (all tasks run)", "revision": later},
        "syncPolicy": {"automated": true}, "history": history
    }))
    .unwrap();
    let list = expectations(10, resources);
    let memory = Memory {
        seen_ours: true,
        content: Some(Content {
            key: revision_key(&app),
            outcomes: Ok(evaluate(&list, &answer)),
        }),
    };
    let want = Want {
        revision: Some(RevisionSpec {
            revision: ours.into(),
            source: SourceRef::Any,
        }),
        expectations: list,
        degraded_grace: Duration::from_secs(60),
    };
    assert_eq!(judge(&app, &want, &memory, None).verdict, Verdict::Deployed);
    let per = 1000;
    let t = median(9, || {
        for _ in 0..per {
            std::hint::black_box(judge(&app, &want, &memory, None));
        }
    });
    row(
        &format!("hub: {per} verdicts (10 expectations each)"),
        t,
        Duration::from_millis(20),
    );
}
