//! Expectations: what a deployment tool says its change sets, so a deployment can be judged by
//! content rather than by revision. Each names one Kubernetes resource (group, kind, namespace,
//! name), a field path in it and the value expected there, for example the image of container
//! `web` in Deployment `shop`:
//!
//! ```json
//! {"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "shop",
//!  "path": "spec.template.spec.containers[name=web].image", "value": "shop:1.4.2"}
//! ```
//!
//! Paths are dotted keys with brackets: `[0]` indexes a list, `[name=web]` picks the first list
//! element whose `name` is `web`, `["app.kubernetes.io/version"]` is a key that contains dots.
//! A scalar compares by its text, so `"3"` matches `3`; objects and lists compare exactly.
//!
//! The hub checks paths when a wait starts (so a typo fails at once); the gateway evaluates
//! them against the target and live manifests of Argo CD's managed resources and answers only
//! the verdicts, never the manifests (see [`Evaluation`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most expectations one wait may state.
pub const MAX_EXPECTATIONS: usize = 100;

/// What one resource field should hold.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectation {
    /// API group (empty for the core group).
    #[serde(default)]
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace (empty: any, and cluster-scoped resources).
    #[serde(default)]
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Field path, e.g. `spec.template.spec.containers[name=web].image`.
    pub path: String,
    /// The expected value.
    pub value: Value,
}

impl Expectation {
    /// `group/Kind namespace/name path`, for messages.
    pub fn describe(&self) -> String {
        let kind = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}/{}", self.group, self.kind)
        };
        let name = if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        };
        format!("{kind} {name} {}", self.path)
    }

    /// Whether a managed resource (as Argo CD lists it) is the one this expectation names.
    pub fn names(&self, group: &str, kind: &str, namespace: &str, name: &str) -> bool {
        self.group == group
            && self.kind == kind
            && self.name == name
            && (self.namespace.is_empty() || self.namespace == namespace)
    }

    /// Checks the expectation is usable: a kind, a name and a path that parses.
    pub fn validate(&self) -> Result<(), String> {
        if self.kind.is_empty() || self.name.is_empty() {
            return Err("an expectation needs kind and name".into());
        }
        parse_path(&self.path).map(|_| ())
    }
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// An object key.
    Key(String),
    /// A list index.
    Index(usize),
    /// The first list element whose field `key` reads `value`.
    Select {
        /// The field to look at.
        key: String,
        /// Its wanted text.
        value: String,
    },
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
}

/// Parses a field path such as `spec.template.spec.containers[name=web].image`.
pub fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let bad = |why: &str| format!("field path {path:?}: {why}");
    let mut steps = Vec::new();
    let mut rest = path.trim();
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut expect_key = true;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            // A bracket may hold a quoted key with `]` or `.` in it: find its end past quotes.
            let mut end = None;
            let mut quote: Option<char> = None;
            for (i, c) in after.char_indices() {
                match (quote, c) {
                    (None, '"' | '\'') => quote = Some(c),
                    (Some(q), c) if c == q => quote = None,
                    (None, ']') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| bad("a [ is not closed"))?;
            let inner = after[..end].trim();
            rest = &after[end + 1..];
            let step = if let Some(key) = unquote(inner) {
                Step::Key(key.to_owned())
            } else if let Ok(i) = inner.parse::<usize>() {
                Step::Index(i)
            } else if let Some((k, v)) = inner.split_once('=') {
                let value = unquote(v).unwrap_or(v.trim());
                if k.trim().is_empty() {
                    return Err(bad("a [key=value] selector needs a key"));
                }
                Step::Select {
                    key: k.trim().to_owned(),
                    value: value.to_owned(),
                }
            } else {
                return Err(bad(&format!(
                    "[{inner}] is neither an index, a quoted key nor a key=value selector"
                )));
            };
            steps.push(step);
            expect_key = false;
            continue;
        }
        if let Some(after) = rest.strip_prefix('.') {
            if expect_key {
                return Err(bad("an empty key"));
            }
            rest = after;
            expect_key = true;
            continue;
        }
        if !expect_key {
            return Err(bad("a key must follow a dot"));
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let key = rest[..end].trim();
        if key.is_empty() {
            return Err(bad("an empty key"));
        }
        steps.push(Step::Key(key.to_owned()));
        rest = &rest[end..];
        expect_key = false;
    }
    if expect_key {
        return Err(bad("ends with a dot"));
    }
    Ok(steps)
}

/// The text of a scalar, for selectors and lenient comparison.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The value at `steps` in `obj`, if there is one.
pub fn lookup<'a>(obj: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in steps {
        cur = match step {
            Step::Key(k) => cur.as_object()?.get(k)?,
            Step::Index(i) => cur.as_array()?.get(*i)?,
            Step::Select { key, value } => cur
                .as_array()?
                .iter()
                .find(|e| e.get(key).and_then(scalar_text).as_deref() == Some(value.as_str()))?,
        };
    }
    Some(cur)
}

/// Whether `actual` is the expected value: scalars by their text, the rest exactly.
pub fn value_matches(expected: &Value, actual: &Value) -> bool {
    if expected == actual {
        return true;
    }
    match (scalar_text(expected), scalar_text(actual)) {
        (Some(e), Some(a)) => e == a,
        _ => false,
    }
}

/// One side (target or live) of an expectation's evaluation.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Side {
    /// The resource exists on this side.
    pub present: bool,
    /// The value found at the path (null when the resource or the path is absent).
    pub value: Value,
    /// The value is the expected one.
    pub met: bool,
}

/// The gateway's answer to an evaluate request.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Evaluation {
    /// The revision Argo CD compared against when the manifests were read (single source).
    pub revision: String,
    /// The same for multi-source applications, one per source.
    pub revisions: Vec<String>,
    /// One result per expectation, in the order asked.
    pub results: Vec<Outcome>,
}

/// The target and live result of one expectation.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Outcome {
    /// In the manifests Argo CD renders for the revision it runs.
    pub target: Side,
    /// In the cluster.
    pub live: Side,
}

/// Parses one manifest as Argo CD serialises it in a managed resource (`"null"` or empty when
/// the resource does not exist on that side).
fn manifest(text: Option<&str>) -> Option<Value> {
    let text = text?.trim();
    if text.is_empty() {
        return None;
    }
    serde_json::from_str::<Value>(text).ok().filter(|v| v.is_object())
}

fn side(expectation: &Expectation, steps: &[Step], state: Option<&Value>) -> Side {
    match state {
        None => Side::default(),
        Some(obj) => {
            let value = lookup(obj, steps).cloned().unwrap_or(Value::Null);
            let met = !value.is_null() && value_matches(&expectation.value, &value);
            Side {
                present: true,
                value,
                met,
            }
        }
    }
}

/// Evaluates expectations against Argo CD's managed-resources answer (`{"items": [ResourceDiff]}`
/// with `targetState` and `liveState` as JSON text).
pub fn evaluate(expectations: &[Expectation], managed: &Value) -> Vec<Outcome> {
    let items = managed.get("items").and_then(Value::as_array);
    expectations
        .iter()
        .map(|e| {
            let Ok(steps) = parse_path(&e.path) else {
                return Outcome::default();
            };
            let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let item = items
                .into_iter()
                .flatten()
                .find(|it| e.names(&s(it, "group"), &s(it, "kind"), &s(it, "namespace"), &s(it, "name")));
            let target = item.and_then(|it| manifest(it.get("targetState").and_then(Value::as_str)));
            let live = item.and_then(|it| manifest(it.get("liveState").and_then(Value::as_str)));
            Outcome {
                target: side(e, &steps, target.as_ref()),
                live: side(e, &steps, live.as_ref()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_path("spec.template.spec.containers[name=web].image").unwrap(),
            vec![
                Step::Key("spec".into()),
                Step::Key("template".into()),
                Step::Key("spec".into()),
                Step::Key("containers".into()),
                Step::Select {
                    key: "name".into(),
                    value: "web".into()
                },
                Step::Key("image".into()),
            ]
        );
        assert_eq!(
            parse_path(r#"metadata.annotations["app.kubernetes.io/version"]"#).unwrap()[2],
            Step::Key("app.kubernetes.io/version".into())
        );
        assert_eq!(parse_path("spec.ports[0].port").unwrap()[2], Step::Index(0));
        assert_eq!(
            parse_path("a[name='x.y']").unwrap()[1],
            Step::Select {
                key: "name".into(),
                value: "x.y".into()
            }
        );
        for bad in ["", "a..b", ".a", "a.", "a[", "a[b]", "a[=x]", "a[0]b"] {
            assert!(parse_path(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn lookups_and_comparisons() {
        let d = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
            {"name": "sidecar", "image": "envoy:1"}, {"name": "web", "image": "shop:1.4.2"}]}}}});
        let image = parse_path("spec.template.spec.containers[name=web].image").unwrap();
        assert_eq!(lookup(&d, &image), Some(&json!("shop:1.4.2")));
        assert_eq!(
            lookup(&d, &parse_path("spec.template.spec.containers[1].name").unwrap()),
            Some(&json!("web"))
        );
        assert_eq!(lookup(&d, &parse_path("spec.containers[name=db]").unwrap()), None);
        assert!(value_matches(&json!("3"), &json!(3)));
        assert!(value_matches(&json!(3), &json!("3")));
        assert!(!value_matches(&json!("shop:1.4"), &json!("shop:1.4.2")));
        assert!(value_matches(&json!({"a": 1}), &json!({"a": 1})));
        assert!(!value_matches(&json!({"a": 1}), &json!({"a": "1"})));
    }

    #[test]
    fn evaluates_target_and_live_of_managed_resources() {
        let target = json!({"kind": "Deployment", "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop:2"}]}}}});
        let live = json!({"kind": "Deployment", "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop:1"}]}}}});
        let managed = json!({"items": [
            {"group": "", "kind": "Service", "namespace": "shop", "name": "shop", "targetState": "{}", "liveState": "null"},
            {"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "shop",
             "targetState": target.to_string(), "liveState": live.to_string()},
        ]});
        let e = |name: &str, value: &str| Expectation {
            group: "apps".into(),
            kind: "Deployment".into(),
            namespace: String::new(),
            name: name.into(),
            path: "spec.template.spec.containers[name=web].image".into(),
            value: json!(value),
        };
        let out = evaluate(&[e("shop", "shop:2"), e("other", "shop:2")], &managed);
        assert!(out[0].target.present && out[0].target.met);
        assert!(out[0].live.present && !out[0].live.met);
        assert_eq!(out[0].live.value, json!("shop:1"));
        assert!(!out[1].target.present && !out[1].target.met);
        assert!(e("shop", "x").validate().is_ok());
        assert!(
            Expectation {
                path: "a..b".into(),
                ..e("shop", "x")
            }
            .validate()
            .is_err()
        );
    }
}
