//! Relayed entities as both sides see them: their kind, their key, the content hash the gateway
//! computes (leaving out noisy fields; see the relay), and the state digest that lets a
//! reconnecting gateway skip the snapshot when the hub already holds what it has.
//!
//! Kinds derive their order from their tag (applications, clusters, ApplicationSets, projects),
//! so a `BTreeMap` keyed by `(Kind, key)` iterates in digest order.
//!
//! The digest is SHA-256 over `(kind tag, key length, key, hash)` of every entity in
//! `(kind, key)` order, so gateway and hub compute it the same way without agreeing on the JSON.

use sha2::{Digest, Sha256};

use super::proto::EntityKind;

/// What kind of entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An Argo CD Application, keyed `namespace/name`.
    Application,
    /// An Argo CD cluster, keyed by server URL.
    Cluster,
    /// An Argo CD ApplicationSet, keyed `namespace/name` (relayed to hubs with the
    /// "applicationsets" capability).
    ApplicationSet,
    /// An Argo CD AppProject, keyed by name (relayed to hubs with the "projects" capability).
    Project,
}

impl Kind {
    /// The wire enum.
    pub fn to_proto(self) -> EntityKind {
        match self {
            Self::Application => EntityKind::Application,
            Self::Cluster => EntityKind::Cluster,
            Self::ApplicationSet => EntityKind::ApplicationSet,
            Self::Project => EntityKind::Project,
        }
    }

    /// From the wire enum.
    pub fn from_proto(k: i32) -> Option<Self> {
        match EntityKind::try_from(k).ok()? {
            EntityKind::Application => Some(Self::Application),
            EntityKind::Cluster => Some(Self::Cluster),
            EntityKind::ApplicationSet => Some(Self::ApplicationSet),
            EntityKind::Project => Some(Self::Project),
            EntityKind::Unspecified => None,
        }
    }

    /// The one-byte tag folded into the digest (and used by the hub's store).
    pub fn tag(self) -> u8 {
        match self {
            Self::Application => 1,
            Self::Cluster => 2,
            Self::ApplicationSet => 3,
            Self::Project => 4,
        }
    }

    /// Every kind, in digest order.
    pub const ALL: [Kind; 4] = [Self::Application, Self::Cluster, Self::ApplicationSet, Self::Project];

    /// The name used in logs, metrics and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Application => "application",
            Self::Cluster => "cluster",
            Self::ApplicationSet => "applicationset",
            Self::Project => "project",
        }
    }

    /// The kind of a tag.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Application),
            2 => Some(Self::Cluster),
            3 => Some(Self::ApplicationSet),
            4 => Some(Self::Project),
            _ => None,
        }
    }
}

/// A content hash (SHA-256).
pub type Hash = [u8; 32];

/// An entity's identity.
pub type EntityKey = (Kind, String);

/// The kinds a peer with these capabilities reads: applications and clusters always, the
/// others when the capability naming them is present.
pub fn kinds_for(capabilities: &[String]) -> Vec<Kind> {
    let has = |c: &str| capabilities.iter().any(|x| x == c);
    let mut kinds = vec![Kind::Application, Kind::Cluster];
    if has(super::codes::CAP_APPLICATION_SETS) {
        kinds.push(Kind::ApplicationSet);
    }
    if has(super::codes::CAP_PROJECTS) {
        kinds.push(Kind::Project);
    }
    kinds
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
        for k in Kind::ALL {
            assert_eq!(Kind::from_tag(k.tag()), Some(k));
            assert_eq!(Kind::from_proto(k.to_proto() as i32), Some(k));
        }
    }
}
