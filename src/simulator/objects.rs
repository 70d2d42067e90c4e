//! Synthetic Argo CD objects shaped like what argocd-server returns: the fields of the real
//! objects in `../shared/argocd/` plus the always-present structs the live API adds
//! (`status.sync.comparedTo`, `status.summary`, `status.sourceHydrator`, history, resources).

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value, json};

/// The projects synthetic applications are spread over.
pub const SYNTHETIC_PROJECTS: [&str; 3] = ["default", "team-a", "team-b"];

fn sha(i: usize, salt: u64) -> String {
    // A stable 40-hex "commit" per app and salt, so objects look real without randomness.
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut out = String::with_capacity(40);
    while out.len() < 40 {
        x ^= x >> 31;
        x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
        out.push_str(&format!("{:016x}", x));
    }
    out.truncate(40);
    out
}

/// Synthetic application number `i` in `namespace`: single-source (every seventh multi-source),
/// Synced/Healthy with a finished sync operation, two managed resources with health.
pub fn synthetic_app(i: usize, namespace: &str) -> Value {
    let name = format!("app-{i:05}");
    let project = SYNTHETIC_PROJECTS[i % SYNTHETIC_PROJECTS.len()];
    let revision = sha(i, 1);
    let dest_ns = format!("{name}-ns");
    let multi = i % 7 == 3;
    let source = json!({
        "repoURL": "https://github.com/argoproj/argocd-example-apps.git",
        "path": "guestbook",
        "targetRevision": "HEAD"
    });
    let sources = json!([
        {"repoURL": "https://github.com/argoproj/argocd-example-apps.git", "path": "helm-guestbook",
         "targetRevision": "HEAD", "helm": {"valueFiles": ["$values/guestbook/values.yaml"]}},
        {"repoURL": "https://github.com/argoproj/argocd-example-apps-values.git", "targetRevision": "main", "ref": "values"}
    ]);
    let destination = json!({"server": "https://kubernetes.default.svc", "namespace": dest_ns});
    let mut spec = json!({
        "project": project,
        "destination": destination,
        "syncPolicy": {"automated": {"prune": true, "selfHeal": true}}
    });
    let mut compared = json!({"destination": destination});
    let mut sync = json!({"status": "Synced"});
    let mut op_sync = json!({});
    let mut result = json!({});
    if multi {
        let revs = json!([revision.clone(), sha(i, 2)]);
        spec["sources"] = sources.clone();
        compared["sources"] = sources.clone();
        sync["revisions"] = revs.clone();
        op_sync["revisions"] = revs.clone();
        result["revisions"] = revs;
        result["sources"] = sources;
    } else {
        spec["source"] = source.clone();
        compared["source"] = source.clone();
        sync["revision"] = json!(revision);
        op_sync["revision"] = json!(revision);
        result["revision"] = json!(revision);
        result["source"] = source;
    }
    sync["comparedTo"] = compared;
    result["resources"] = json!([
        {"group": "", "version": "v1", "kind": "Service", "namespace": dest_ns, "name": "guestbook-ui",
         "status": "Synced", "message": "service/guestbook-ui unchanged", "hookPhase": "Running", "syncPhase": "Sync"},
        {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": dest_ns, "name": "guestbook-ui",
         "status": "Synced", "message": "deployment.apps/guestbook-ui unchanged", "hookPhase": "Running", "syncPhase": "Sync"}
    ]);
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("{}-{}-{}", &revision[..8], &revision[8..12], &revision[12..24]),
            "generation": 3,
            "creationTimestamp": "2026-01-05T09:00:00Z",
            "labels": {"team": project, "tier": if i.is_multiple_of(2) { "web" } else { "api" }},
            "annotations": {"argocd.argoproj.io/manifest-generate-paths": "."},
            "finalizers": ["resources-finalizer.argocd.argoproj.io"]
        },
        "spec": spec,
        "status": {
            "sync": sync,
            "health": {"status": "Healthy", "lastTransitionTime": "2026-01-05T09:01:00Z"},
            "history": [{"id": 0, "revision": revision, "deployedAt": "2026-01-05T09:01:00Z",
                         "deployStartedAt": "2026-01-05T09:00:30Z",
                         "initiatedBy": {"automated": true}}],
            "reconciledAt": "2026-01-05T09:05:00Z",
            "operationState": {
                "operation": {"sync": op_sync, "initiatedBy": {"automated": true},
                              "retry": {"limit": 5}},
                "phase": "Succeeded",
                "message": "successfully synced (all tasks run)",
                "startedAt": "2026-01-05T09:00:30Z",
                "finishedAt": "2026-01-05T09:01:00Z",
                "syncResult": result
            },
            "resources": [
                {"version": "v1", "kind": "Service", "namespace": dest_ns, "name": "guestbook-ui",
                 "status": "Synced", "health": {"status": "Healthy"}},
                {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": dest_ns,
                 "name": "guestbook-ui", "status": "Synced", "health": {"status": "Healthy"}}
            ],
            "summary": {"images": ["gcr.io/heptio-images/ks-guestbook-demo:0.2"]},
            "sourceType": if multi { "Helm" } else { "Directory" },
            "controllerNamespace": "argocd",
            "sourceHydrator": {}
        }
    })
}

/// A cluster object as `GET /api/v1/clusters` returns it (sanitised: no credentials).
pub fn cluster(server: &str, name: &str) -> Value {
    json!({
        "server": server,
        "name": name,
        "config": {"tlsClientConfig": {"insecure": false}},
        "connectionState": {"status": "Successful", "message": "", "attemptedAt": "2026-01-05T09:00:00Z"},
        "serverVersion": "1.33",
        "info": {
            "connectionState": {"status": "Successful", "message": "", "attemptedAt": "2026-01-05T09:00:00Z"},
            "serverVersion": "1.33",
            "cacheInfo": {"resourcesCount": 412, "apisCount": 58, "lastCacheSyncTime": "2026-01-05T09:00:00Z"},
            "applicationsCount": 0,
            "apiVersions": ["apps/v1", "v1"]
        },
        "labels": null,
        "annotations": null
    })
}

/// An AppProject as `GET /api/v1/projects` returns it: everything allowed, like Argo CD's own
/// `default` project.
pub fn project(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "argocd", "resourceVersion": "1", "creationTimestamp": "2026-01-05T09:00:00Z"},
        "spec": {
            "sourceRepos": ["*"],
            "destinations": [{"server": "*", "namespace": "*"}],
            "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]
        },
        "status": {}
    })
}

/// An ApplicationSet with a list generator over `elements` (each becomes an application
/// `<name>-<element>`), a rolling-sync strategy of `steps` steps when non-zero, and a healthy
/// status listing the applications it owns (shaped like Argo CD's `resource_customizations`
/// ApplicationSet test data).
pub fn appset(name: &str, namespace: &str, elements: &[&str], steps: usize) -> Value {
    let elements_json: Vec<Value> = elements
        .iter()
        .map(|e| json!({"cluster": e, "url": "https://kubernetes.default.svc"}))
        .collect();
    let resources: Vec<Value> = elements
        .iter()
        .map(|e| {
            json!({"group": "argoproj.io", "version": "v1alpha1", "kind": "Application",
                   "namespace": namespace, "name": format!("{name}-{e}"), "status": "Synced",
                   "health": {"status": "Healthy"}})
        })
        .collect();
    let mut spec = json!({
        "generators": [{"list": {"elements": elements_json}}],
        "template": {
            "metadata": {"name": format!("{name}-{{{{cluster}}}}")},
            "spec": {
                "project": "default",
                "source": {"repoURL": "https://github.com/argoproj/argocd-example-apps/", "path": "guestbook", "targetRevision": "HEAD"},
                "destination": {"server": "{{url}}", "namespace": "guestbook"}
            }
        }
    });
    if steps > 0 {
        let steps: Vec<Value> = (0..steps)
            .map(|i| json!({"matchExpressions": [{"key": "step", "operator": "In", "values": [i.to_string()]}]}))
            .collect();
        spec["strategy"] = json!({"type": "RollingSync", "rollingSync": {"steps": steps}});
    }
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "ApplicationSet",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-01-05T09:00:00Z"},
        "spec": spec,
        "status": {
            "conditions": [
                {"lastTransitionTime": "2026-01-05T09:00:00Z", "message": "Successfully generated parameters for all Applications",
                 "reason": "ApplicationSetUpToDate", "status": "False", "type": "ErrorOccurred"},
                {"lastTransitionTime": "2026-01-05T09:00:00Z", "message": "Successfully generated parameters for all Applications",
                 "reason": "ParametersGenerated", "status": "True", "type": "ParametersGenerated"},
                {"lastTransitionTime": "2026-01-05T09:00:00Z", "message": "ApplicationSet up to date",
                 "reason": "ApplicationSetUpToDate", "status": "True", "type": "ResourcesUpToDate"}
            ],
            "resources": resources,
            "resourcesCount": elements.len(),
            "health": {"status": "Healthy"}
        }
    })
}

/// The owner reference an ApplicationSet puts on the applications it generates.
pub fn appset_owner(name: &str) -> Value {
    json!([{"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet", "name": name,
            "uid": format!("uid-{name}"), "controller": true, "blockOwnerDeletion": true}])
}

/// An application as argocd-server shapes it for output, serialized straight from the stored
/// object: a list of 10,000 real-sized applications is 100 MB, and a copy of each object to
/// reshape it cost the simulator seconds of CPU per list (time the benches' churn waited for).
/// 3.x marks resource health as tree-sourced (`status.resourceHealthSource: appTree`) and its
/// lists omit the per-resource health.
pub(crate) struct Presented<'a> {
    /// The stored object.
    pub app: &'a Value,
    /// Whether the simulated Argo CD is 3.x.
    pub v3: bool,
    /// Whether the object is a list item.
    pub for_list: bool,
}

impl Serialize for Presented<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(obj) = self.app.as_object().filter(|_| self.v3) else {
            return self.app.serialize(s);
        };
        let mut map = s.serialize_map(None)?;
        for (k, v) in obj {
            if k == "status" {
                continue;
            }
            map.serialize_entry(k, v)?;
        }
        let empty = Map::new();
        let status = obj.get("status").and_then(Value::as_object).unwrap_or(&empty);
        map.serialize_entry(
            "status",
            &Status {
                status,
                for_list: self.for_list,
            },
        )?;
        map.end()
    }
}

/// `status` with `resourceHealthSource` set, and in lists without per-resource health.
struct Status<'a> {
    status: &'a Map<String, Value>,
    for_list: bool,
}

impl Serialize for Status<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.status {
            match (k.as_str(), v) {
                ("resourceHealthSource", _) => {}
                ("resources", Value::Array(items)) if self.for_list => {
                    map.serialize_entry(k, &WithoutHealth(items))?;
                }
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.serialize_entry("resourceHealthSource", "appTree")?;
        map.end()
    }
}

/// Resource entries without their `health`.
struct WithoutHealth<'a>(&'a [Value]);

impl Serialize for WithoutHealth<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            match item.as_object() {
                Some(o) => seq.serialize_element(&Fields(o, "health"))?,
                None => seq.serialize_element(item)?,
            }
        }
        seq.end()
    }
}

/// An object's fields but one.
struct Fields<'a>(&'a Map<String, Value>, &'static str);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.0.iter().filter(|(k, _)| k.as_str() != self.1) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod presented_tests {
    use super::*;

    fn app() -> Value {
        json!({
            "metadata": {"name": "a", "namespace": "argocd"},
            "spec": {"project": "default"},
            "status": {
                "health": {"status": "Healthy"},
                "resources": [
                    {"kind": "Service", "name": "s", "health": {"status": "Healthy"}},
                    {"kind": "ConfigMap", "name": "c"}
                ]
            }
        })
    }

    fn shaped(app: &Value, v3: bool, for_list: bool) -> Value {
        serde_json::to_value(Presented { app, v3, for_list }).expect("serializes")
    }

    #[test]
    fn two_x_objects_are_served_as_stored() {
        assert_eq!(shaped(&app(), false, true), app());
        assert_eq!(shaped(&app(), false, false), app());
    }

    #[test]
    fn three_x_marks_tree_sourced_health_and_lists_drop_resource_health() {
        let mut want = app();
        want["status"]["resourceHealthSource"] = json!("appTree");
        assert_eq!(shaped(&app(), true, false), want);
        if let Some(r) = want["status"]["resources"][0].as_object_mut() {
            r.remove("health");
        }
        assert_eq!(shaped(&app(), true, true), want);
        // Without a status (a just-created object) the marker still appears.
        let bare = json!({"metadata": {"name": "b"}});
        assert_eq!(
            shaped(&bare, true, true),
            json!({"metadata": {"name": "b"}, "status": {"resourceHealthSource": "appTree"}})
        );
    }
}
