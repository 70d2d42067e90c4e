//! The state relay: mirrors the gateway's view of Argo CD (applications, clusters, and for hubs
//! that read them ApplicationSets and projects) to the hub with as little traffic as possible.
//!
//! Each entity travels as JSON with a content hash that leaves out noisy fields
//! (`reconciledAt`, condition timestamps, cluster cache timestamps), so a change that only
//! touches those is never sent on its own. Both sides fold (kind, key, hash) into a state
//! digest; after a reconnect the gateway sends nothing when the digests match, only the
//! difference when the hub holds what the gateway last saw acknowledged, and a chunked snapshot
//! otherwise. Per entity the latest state wins: a key changed ten times while the hub was slow
//! is sent once, so memory is bounded by the number of entities.
//!
//! Files: [`source`] (the Argo CD view as the relay's source), [`engine`] (what to send after a
//! reconnect, deltas, acks), [`actions`] (the hub's requests answered against Argo CD). Entity
//! kinds, hashes and the digest are the wire's ([`crate::wire::entity`]).

pub mod actions;
pub mod engine;
pub mod source;

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use crate::wire::entity::{EntityKey, Hash, Kind, digest};
use crate::wire::proto;

/// One entity as relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// Kind.
    pub kind: Kind,
    /// Key.
    pub key: String,
    /// Hash of the significant content.
    pub hash: Hash,
    /// JSON of the full entity.
    pub json: Arc<Vec<u8>>,
}

impl Entity {
    /// Builds an entity from its JSON value: hashes the significant part, keeps the whole.
    pub fn from_value(kind: Kind, key: String, value: &Value) -> Self {
        let json = serde_json::to_vec(value).unwrap_or_default();
        Self {
            kind,
            key,
            hash: significance_hash(kind, value),
            json: Arc::new(json),
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::Entity {
        proto::Entity {
            kind: self.kind.to_proto() as i32,
            key: self.key.clone(),
            hash: self.hash.to_vec(),
            json: self.json.as_ref().clone(),
        }
    }
}

/// Fields that change on every reconciliation without meaning anything to a user.
fn strip_noisy(kind: Kind, v: &mut Value) {
    let Some(obj) = v.as_object_mut() else { return };
    match kind {
        Kind::Application => {
            obj.remove("reconciledAt");
            if let Some(Value::Array(conds)) = obj.get_mut("conditions") {
                for c in conds {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("lastTransitionTime");
                    }
                }
            }
        }
        Kind::ApplicationSet => {
            if let Some(Value::Array(conds)) = obj.get_mut("conditions") {
                for c in conds {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("lastTransitionTime");
                    }
                }
            }
        }
        Kind::Project => {}
        Kind::Cluster => {
            for field in ["refreshRequestedAt", "lastCacheSyncTime", "attemptedAt"] {
                obj.remove(field);
            }
            for nested in ["connectionState", "cacheInfo", "info"] {
                if let Some(Value::Object(inner)) = obj.get_mut(nested) {
                    for field in ["attemptedAt", "lastCacheSyncTime", "refreshRequestedAt"] {
                        inner.remove(field);
                    }
                    for deeper in ["connectionState", "cacheInfo"] {
                        if let Some(Value::Object(d)) = inner.get_mut(deeper) {
                            d.remove("attemptedAt");
                            d.remove("lastCacheSyncTime");
                        }
                    }
                }
            }
        }
    }
}

/// Feeds a JSON value into a hasher with object keys in sorted order, so the hash does not
/// depend on how the JSON was produced.
fn hash_canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            h.update(b"#");
            h.update(n.to_string().as_bytes());
            h.update(b";");
        }
        Value::String(s) => {
            h.update(b"s");
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
        Value::Array(a) => {
            h.update(b"[");
            h.update((a.len() as u64).to_be_bytes());
            for item in a {
                hash_canonical(item, h);
            }
        }
        Value::Object(o) => {
            h.update(b"{");
            h.update((o.len() as u64).to_be_bytes());
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            for k in keys {
                h.update((k.len() as u64).to_be_bytes());
                h.update(k.as_bytes());
                hash_canonical(&o[k], h);
            }
        }
    }
}

/// The hash of an entity without its noisy fields.
pub fn significance_hash(kind: Kind, value: &Value) -> Hash {
    stripped_hash(kind, value.clone())
}

/// The significance hash of a model object, made without the JSON text the relay sends: every
/// change in Argo CD is hashed when it reaches the view, and the relay bench's profile had the
/// text (thrown away) and a second copy of the tree at half of that cost.
pub fn model_hash<T: serde::Serialize>(kind: Kind, object: &T) -> Hash {
    stripped_hash(kind, serde_json::to_value(object).unwrap_or_default())
}

fn stripped_hash(kind: Kind, mut v: Value) -> Hash {
    strip_noisy(kind, &mut v);
    let mut h = Sha256::new();
    hash_canonical(&v, &mut h);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn noisy_fields_do_not_change_the_hash() {
        let a = json!({"name": "x", "reconciledAt": "2024-01-01T00:00:00Z", "conditions": [{"type": "W", "message": "m", "lastTransitionTime": "t1"}]});
        let b = json!({"conditions": [{"message": "m", "type": "W", "lastTransitionTime": "t2"}], "reconciledAt": "2025-01-01T00:00:00Z", "name": "x"});
        let c = json!({"name": "x", "reconciledAt": "2024-01-01T00:00:00Z", "conditions": [{"type": "W", "message": "other"}]});
        assert_eq!(
            significance_hash(Kind::Application, &a),
            significance_hash(Kind::Application, &b)
        );
        assert_ne!(
            significance_hash(Kind::Application, &a),
            significance_hash(Kind::Application, &c)
        );
        let c1 = json!({"server": "s", "info": {"connectionState": {"status": "Successful", "attemptedAt": "1"}}});
        let c2 = json!({"server": "s", "info": {"connectionState": {"status": "Successful", "attemptedAt": "2"}}});
        assert_eq!(
            significance_hash(Kind::Cluster, &c1),
            significance_hash(Kind::Cluster, &c2)
        );
    }
}
