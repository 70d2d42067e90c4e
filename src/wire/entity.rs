//! Relayed entities as both sides see them: their kind, their key, the content hash the gateway
//! computes (leaving out noisy fields; see the relay), and the state digest that lets a
//! reconnecting gateway skip the snapshot when the hub already holds what it has.
//!
//! Kinds derive their order from their tag (applications, clusters, ApplicationSets, projects),
//! so a `BTreeMap` keyed by `(Kind, key)` iterates in digest order.
//!
//! Two digests exist. The ordered one ([`digest`]) is SHA-256 over `(kind tag, key length, key,
//! hash)` of every entity in `(kind, key)` order: computing it visits every entity. The set
//! digest ([`SetDigest`]) combines the SHA-256 of each such entry by addition, so the hub keeps
//! it up to date as entities come and go and its cost per change does not grow with the fleet.
//! Both sides use the set digest when both announce [`CAP_SET_DIGEST`]; otherwise the ordered
//! one, so gateways and hubs of the previous version still skip snapshots with each other.
//! Either way gateway and hub compute it the same way without agreeing on the JSON.

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

/// The capability a gateway and a hub announce (hello, welcome) when they use the set digest.
pub const CAP_SET_DIGEST: &str = "set-digest";

/// The state digest over `(kind, key, hash)` entries, which must come in `(kind, key)` order.
pub fn digest<'a>(entries: impl IntoIterator<Item = (Kind, &'a str, &'a Hash)>) -> Hash {
    let mut d = OrderedDigest::default();
    for (kind, key, hash) in entries {
        d.add(kind, key, hash);
    }
    d.finish()
}

/// [`digest`] computed entry by entry, for entries produced in `(kind, key)` order over time.
#[derive(Clone, Default)]
pub struct OrderedDigest(Sha256);

impl OrderedDigest {
    /// The next entry (after every smaller `(kind, key)`).
    pub fn add(&mut self, kind: Kind, key: &str, hash: &Hash) {
        self.0.update([kind.tag()]);
        self.0.update((key.len() as u64).to_be_bytes());
        self.0.update(key.as_bytes());
        self.0.update(hash);
    }

    /// The digest of the entries added.
    pub fn finish(self) -> Hash {
        self.0.finalize().into()
    }
}

/// An order-independent digest of a set of entities, kept up to date entity by entity: the sum,
/// lane by lane modulo 2^64, of each entry's SHA-256, and the number of entries. It detects a
/// difference between two states (not an attacker: a gateway is authenticated and may send
/// anything anyway), which is all a reconnect needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetDigest {
    sum: [u64; 4],
    count: u64,
}

impl SetDigest {
    fn entry(kind: Kind, key: &str, hash: &Hash) -> [u64; 4] {
        let mut h = Sha256::new();
        h.update([kind.tag()]);
        h.update((key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        h.update(hash);
        let d: [u8; 32] = h.finalize().into();
        std::array::from_fn(|i| u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().unwrap_or_default()))
    }

    /// The digest of `entries`, in any order.
    pub fn of<'a>(entries: impl IntoIterator<Item = (Kind, &'a str, &'a Hash)>) -> Self {
        let mut d = Self::default();
        for (kind, key, hash) in entries {
            d.add(kind, key, hash);
        }
        d
    }

    /// Counts an entity in.
    pub fn add(&mut self, kind: Kind, key: &str, hash: &Hash) {
        for (s, e) in self.sum.iter_mut().zip(Self::entry(kind, key, hash)) {
            *s = s.wrapping_add(e);
        }
        self.count = self.count.wrapping_add(1);
    }

    /// Counts an entity out (it must have been counted in with the same hash).
    pub fn remove(&mut self, kind: Kind, key: &str, hash: &Hash) {
        for (s, e) in self.sum.iter_mut().zip(Self::entry(kind, key, hash)) {
            *s = s.wrapping_sub(e);
        }
        self.count = self.count.wrapping_sub(1);
    }

    /// The digest as sent: SHA-256 over the sums and the count, with a domain tag so it can
    /// never equal an ordered digest.
    pub fn finish(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(b"argocd-gateway set digest v1");
        for s in self.sum {
            h.update(s.to_le_bytes());
        }
        h.update(self.count.to_le_bytes());
        h.finalize().into()
    }
}

/// Which digest a session uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestKind {
    /// [`digest`]: both sides of the previous version.
    Ordered,
    /// [`SetDigest`]: both sides announced [`CAP_SET_DIGEST`].
    Set,
}

impl DigestKind {
    /// The digest of `entries` (in `(kind, key)` order, which the ordered digest needs).
    pub fn of<'a>(self, entries: impl IntoIterator<Item = (Kind, &'a str, &'a Hash)>) -> Hash {
        match self {
            Self::Ordered => digest(entries),
            Self::Set => SetDigest::of(entries).finish(),
        }
    }

    /// A digest to compute entry by entry, in `(kind, key)` order.
    pub fn builder(self) -> DigestBuilder {
        match self {
            Self::Ordered => DigestBuilder::Ordered(OrderedDigest::default()),
            Self::Set => DigestBuilder::Set(SetDigest::default()),
        }
    }

    /// The kind a session uses, from what the other side announced.
    pub fn negotiated(capabilities: &[String]) -> Self {
        if capabilities.iter().any(|c| c == CAP_SET_DIGEST) {
            Self::Set
        } else {
            Self::Ordered
        }
    }
}

/// A digest of either kind being computed entry by entry.
#[derive(Clone)]
pub enum DigestBuilder {
    /// Ordered.
    Ordered(OrderedDigest),
    /// Set.
    Set(SetDigest),
}

impl DigestBuilder {
    /// The next entry, in `(kind, key)` order.
    pub fn add(&mut self, kind: Kind, key: &str, hash: &Hash) {
        match self {
            Self::Ordered(d) => d.add(kind, key, hash),
            Self::Set(d) => d.add(kind, key, hash),
        }
    }

    /// The digest.
    pub fn finish(self) -> Hash {
        match self {
            Self::Ordered(d) => d.finish(),
            Self::Set(d) => d.finish(),
        }
    }
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
        // The set digest: any order, kept up to date, and never an ordered digest.
        let entries = [(Kind::Application, "a/b", &h1), (Kind::Cluster, "s", &h2)];
        let set = SetDigest::of(entries);
        assert_eq!(set, SetDigest::of(entries.iter().rev().copied()));
        let mut kept = SetDigest::of([(Kind::Application, "a/b", &h2)]);
        kept.remove(Kind::Application, "a/b", &h2);
        kept.add(Kind::Cluster, "s", &h2);
        kept.add(Kind::Application, "a/b", &h1);
        assert_eq!(kept.finish(), set.finish());
        assert_ne!(set.finish(), d);
        assert_ne!(SetDigest::of([]).finish(), digest([]));
        assert_ne!(
            SetDigest::of([(Kind::Application, "a/b", &h1)]).finish(),
            SetDigest::of([(Kind::Application, "a/b", &h2)]).finish()
        );
        for k in Kind::ALL {
            assert_eq!(Kind::from_tag(k.tag()), Some(k));
            assert_eq!(Kind::from_proto(k.to_proto() as i32), Some(k));
        }
    }
}
