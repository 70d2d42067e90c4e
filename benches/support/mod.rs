//! What the benches share: real-sized Argo CD applications and process measurements.
//!
//! Real applications as argocd-server returns them are about 11 KB: besides the spec they carry
//! every managed resource with its status and health, the last sync's result per resource, a
//! deployment history, managed fields and the last-applied annotation. The benches start from
//! Argo CD's own objects in `tests/fixtures/argocd` and give each the status a real one has, so
//! the figures are not flattered by small synthetic objects.

#![allow(dead_code)]

use serde_json::{Value, json};

/// Argo CD's Application fixtures (from its own test data).
pub fn fixtures() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/argocd");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/argocd")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| serde_json::from_slice::<Value>(&std::fs::read(p).ok()?).ok())
        // The folder also holds ApplicationSets, projects and lists.
        .filter(|v| v["kind"] == "Application")
        .collect()
}

fn sha(i: usize, salt: usize) -> String {
    let mut x = (i as u64 ^ ((salt as u64) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = String::with_capacity(40);
    while out.len() < 40 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(40);
    out
}

/// The kinds a typical application manages, in the proportions a Helm chart has them.
const KINDS: [(&str, &str, bool); 8] = [
    ("", "ConfigMap", false),
    ("", "Service", true),
    ("apps", "Deployment", true),
    ("", "ServiceAccount", false),
    ("rbac.authorization.k8s.io", "Role", false),
    ("rbac.authorization.k8s.io", "RoleBinding", false),
    ("networking.k8s.io", "Ingress", true),
    ("autoscaling", "HorizontalPodAutoscaler", true),
];

/// Application `i` in `namespace`: fixture `i % n` renamed, with the status of a real
/// application that manages `resources` resources (14 makes about 11 KB with the fixtures as they are).
pub fn real_sized_app(fixtures: &[Value], i: usize, namespace: &str, resources: usize) -> Value {
    let mut app = fixtures[i % fixtures.len()].clone();
    let name = format!("app-{i:05}");
    let dest_ns = format!("{name}-ns");
    let revision = sha(i, 1);
    app["metadata"]["name"] = json!(name);
    app["metadata"]["namespace"] = json!(namespace);
    app["metadata"]["uid"] = json!(format!("{}-{}-{}", &revision[..8], &revision[8..12], &revision[12..24]));
    app["metadata"]["resourceVersion"] = json!((1_000_000 + i).to_string());
    app["metadata"]["generation"] = json!(7);
    app["metadata"]["creationTimestamp"] = json!("2026-01-05T09:00:00Z");
    app["metadata"]["labels"] = json!({"team": format!("team-{}", i % 12), "tier": "web"});
    let spec_text = app["spec"].to_string();
    app["metadata"]["annotations"] = json!({
        "argocd.argoproj.io/tracking-id": format!("root:argoproj.io/Application:{namespace}/{name}"),
        "kubectl.kubernetes.io/last-applied-configuration": format!(
            "{{\"apiVersion\":\"argoproj.io/v1alpha1\",\"kind\":\"Application\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{namespace}\"}},\"spec\":{spec_text}}}"
        ),
    });
    app["metadata"]["managedFields"] = json!([
        {"apiVersion": "argoproj.io/v1alpha1", "fieldsType": "FieldsV1", "manager": "argocd-server",
         "operation": "Update", "time": "2026-01-05T09:00:00Z",
         "fieldsV1": {"f:spec": {".": {}, "f:destination": {".": {}, "f:namespace": {}, "f:server": {}},
                      "f:project": {}, "f:source": {".": {}, "f:path": {}, "f:repoURL": {}, "f:targetRevision": {}},
                      "f:syncPolicy": {".": {}, "f:automated": {".": {}, "f:prune": {}, "f:selfHeal": {}}}}}},
        {"apiVersion": "argoproj.io/v1alpha1", "fieldsType": "FieldsV1", "manager": "argocd-application-controller",
         "operation": "Update", "time": "2026-01-05T09:05:00Z",
         "fieldsV1": {"f:status": {".": {}, "f:controllerNamespace": {}, "f:health": {".": {}, "f:status": {}},
                      "f:history": {}, "f:operationState": {".": {}, "f:finishedAt": {}, "f:message": {},
                      "f:operation": {}, "f:phase": {}, "f:startedAt": {}, "f:syncResult": {}},
                      "f:reconciledAt": {}, "f:resources": {}, "f:sourceType": {}, "f:summary": {}, "f:sync": {}}}}
    ]);
    if app["spec"]["project"].is_null() {
        app["spec"]["project"] = json!("default");
    }
    let source = if app["spec"]["source"].is_object() {
        app["spec"]["source"].clone()
    } else {
        json!({"repoURL": "https://github.com/example/deploy.git", "path": name, "targetRevision": "HEAD"})
    };
    let managed: Vec<(String, &str, &str, bool)> = (0..resources)
        .map(|r| {
            let (group, kind, healthy) = KINDS[r % KINDS.len()];
            (format!("{name}-{}", r / KINDS.len()), group, kind, healthy)
        })
        .collect();
    let status_resources: Vec<Value> = managed
        .iter()
        .map(|(rname, group, kind, has_health)| {
            let mut r = json!({"group": group, "version": "v1", "kind": kind, "namespace": dest_ns,
                               "name": rname, "status": "Synced"});
            if *has_health {
                r["health"] = json!({"status": "Healthy"});
            }
            r
        })
        .collect();
    let sync_results: Vec<Value> = managed
        .iter()
        .map(|(rname, group, kind, _)| {
            json!({"group": group, "version": "v1", "kind": kind, "namespace": dest_ns, "name": rname,
                   "status": "Synced", "message": format!("{} {rname} unchanged", kind.to_lowercase()),
                   "hookPhase": "Running", "syncPhase": "Sync"})
        })
        .collect();
    let history: Vec<Value> = (0..6)
        .map(|h| {
            json!({"id": h, "revision": sha(i, 10 + h), "source": source,
                   "deployedAt": format!("2026-01-{:02}T09:01:00Z", 5 + h),
                   "deployStartedAt": format!("2026-01-{:02}T09:00:30Z", 5 + h),
                   "initiatedBy": {"automated": true}})
        })
        .collect();
    app["status"] = json!({
        "sync": {"status": "Synced", "revision": revision,
                 "comparedTo": {"source": source, "destination": {"server": "https://kubernetes.default.svc", "namespace": dest_ns}}},
        "health": {"status": "Healthy", "lastTransitionTime": "2026-01-05T09:01:00Z"},
        "history": history,
        "reconciledAt": "2026-01-05T09:05:00Z",
        "operationState": {
            "operation": {"sync": {"revision": revision}, "initiatedBy": {"automated": true}, "retry": {"limit": 5}},
            "phase": "Succeeded",
            "message": "successfully synced (all tasks run)",
            "startedAt": "2026-01-05T09:00:30Z",
            "finishedAt": "2026-01-05T09:01:00Z",
            "syncResult": {"resources": sync_results, "revision": revision, "source": source}
        },
        "resources": status_resources,
        "summary": {"images": [format!("registry.example.com/{name}:1.{}.0", i % 40)],
                    "externalURLs": [format!("https://{name}.example.com")]},
        "sourceType": "Helm",
        "controllerNamespace": "argocd",
        "sourceHydrator": {}
    });
    app
}

/// A `/proc/<pid>/status` field in MiB.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// CPU time (user + system) of the calling thread.
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time (user + system) of process `pid` from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> std::time::Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces) start after ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    std::time::Duration::from_millis(ticks * 1000 / hz)
}
