//! The state relay: mirrors the gateway's view of Argo CD (applications and clusters) to the
//! hub with as little traffic as possible.
//!
//! Each entity travels as JSON with a content hash that leaves out noisy fields
//! (`reconciledAt`, condition timestamps, cluster cache timestamps), so a change that only
//! touches those is never sent on its own. Both sides fold (kind, key, hash) into a state
//! digest; after a reconnect the gateway sends nothing when the digests match, only the
//! difference when the hub holds what the gateway last saw acknowledged, and a chunked snapshot
//! otherwise. Per entity the latest state wins: a key changed ten times while the hub was slow
//! is sent once, so memory is bounded by the number of entities.

pub mod engine;
pub mod source;

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::proto::EntityKind;

/// What kind of entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An Argo CD Application, keyed `namespace/name`.
    Application,
    /// An Argo CD cluster, keyed by server URL.
    Cluster,
}

impl Kind {
    /// The wire enum.
    pub fn to_proto(self) -> EntityKind {
        match self {
            Self::Application => EntityKind::Application,
            Self::Cluster => EntityKind::Cluster,
        }
    }

    /// From the wire enum.
    pub fn from_proto(k: i32) -> Option<Self> {
        match EntityKind::try_from(k).ok()? {
            EntityKind::Application => Some(Self::Application),
            EntityKind::Cluster => Some(Self::Cluster),
            EntityKind::Unspecified => None,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::Application => 1,
            Self::Cluster => 2,
        }
    }
}

/// A content hash (SHA-256).
pub type Hash = [u8; 32];

/// An entity's identity.
pub type EntityKey = (Kind, String);

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
    pub fn to_proto(&self) -> crate::proto::Entity {
        crate::proto::Entity {
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
    let mut v = value.clone();
    strip_noisy(kind, &mut v);
    let mut h = Sha256::new();
    hash_canonical(&v, &mut h);
    h.finalize().into()
}

/// The state digest over `(kind, key, hash)` entries, which must come in `(kind, key)` order.
pub fn digest<'a>(entries: impl IntoIterator<Item = (Kind, &'a str, &'a Hash)>) -> Hash {
    let mut h = Sha256::new();
    for (kind, key, hash) in entries {
        h.update([kind.tag()]);
        h.update((key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        h.update(hash);
    }
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

    #[test]
    fn digest_depends_on_every_entry() {
        let h1 = [1u8; 32];
        let h2 = [2u8; 32];
        let d = digest([(Kind::Application, "a/b", &h1), (Kind::Cluster, "s", &h2)]);
        assert_ne!(d, digest([(Kind::Application, "a/b", &h2), (Kind::Cluster, "s", &h2)]));
        assert_ne!(d, digest([(Kind::Application, "a/b", &h1)]));
        // Keys cannot run into each other.
        assert_ne!(
            digest([(Kind::Application, "ab", &h1)]),
            digest([(Kind::Application, "a", &h1)])
        );
    }
}
