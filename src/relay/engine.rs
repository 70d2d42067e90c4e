//! The gateway side of the relay: decides what to send after a reconnect (nothing, the
//! difference, or a snapshot), turns changes into deltas with latest-state-wins coalescing,
//! keeps a small window of unacknowledged messages, and learns what the hub holds from acks.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use super::{Entity, EntityKey, Hash, Kind};
use crate::wire::entity::{DigestBuilder, DigestKind};
use crate::wire::proto::{self, Delta, GatewayMessage, SnapshotChunk, gateway_message};

/// Where the relay reads current state from (the Argo CD view).
pub trait Source: Send + Sync {
    /// Every entity as it is now.
    fn entities(&self) -> Vec<Entity>;
    /// One entity as it is now; `None` when it no longer exists.
    fn get(&self, kind: Kind, key: &str) -> Option<Entity>;
    /// The keys of every entity; sources that make JSON on demand answer without making it.
    fn keys(&self) -> Vec<EntityKey> {
        self.entities().into_iter().map(|e| (e.kind, e.key)).collect()
    }
    /// The key and hash of every entity; sources that make JSON on demand answer without
    /// making it (a reconnect compares digests, and needs no JSON unless a snapshot is sent).
    fn hashes(&self) -> Vec<(EntityKey, Hash)> {
        self.entities().into_iter().map(|e| ((e.kind, e.key), e.hash)).collect()
    }
    /// Whether the source holds a complete state yet. Until it does, the relay sends nothing:
    /// comparing a half-loaded state with the hub's would trigger a needless snapshot, and
    /// sending it would make the hub forget applications that merely have not loaded yet.
    fn ready(&self) -> bool {
        true
    }
}

/// Keys that may have changed since they were last relayed, with when each was first marked
/// (for propagation latency). Bounded by the number of entities: a key marked twice is one entry.
#[derive(Default)]
pub struct Dirty {
    keys: Mutex<HashMap<EntityKey, Instant>>,
    /// Everything may have changed (the change feed lost events): the relay compares every
    /// current and every relayed key, so deletions missed meanwhile are found too.
    all: Mutex<Option<Instant>>,
    notify: Notify,
}

impl Dirty {
    /// Marks a key changed.
    pub fn mark(&self, kind: Kind, key: String) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.entry((kind, key)).or_insert_with(Instant::now);
        }
        self.notify.notify_one();
    }

    /// Marks every key changed, including keys the source no longer has.
    pub fn mark_all(&self) {
        if let Ok(mut all) = self.all.lock() {
            all.get_or_insert_with(Instant::now);
        }
        self.notify.notify_one();
    }

    /// Wakes the relay without marking anything (the source became ready).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    fn take_all(&self) -> Option<Instant> {
        self.all.lock().ok().and_then(|mut a| a.take())
    }

    /// Waits until something is marked.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    fn take(&self) -> HashMap<EntityKey, Instant> {
        self.keys
            .lock()
            .map(|mut k| std::mem::take(&mut *k))
            .unwrap_or_default()
    }

    fn put_back(&self, rest: HashMap<EntityKey, Instant>) {
        if rest.is_empty() {
            return;
        }
        if let Ok(mut keys) = self.keys.lock() {
            for (k, t) in rest {
                keys.entry(k).or_insert(t);
            }
        }
        self.notify.notify_one();
    }

    fn is_empty(&self) -> bool {
        self.keys.lock().map(|k| k.is_empty()).unwrap_or(true) && self.all.lock().map(|a| a.is_none()).unwrap_or(true)
    }
}

/// Counters the admin server exposes (Prometheus counters are shared handles, so the relay
/// updates the very values `/metrics` reads).
#[derive(Debug, Default, Clone)]
pub struct RelayCounters {
    /// Snapshots started.
    pub snapshots: Counter,
    /// Delta messages sent.
    pub deltas: Counter,
    /// Application upserts or deletions sent (in snapshots and deltas).
    pub applications_sent: Counter,
    /// Cluster upserts or deletions sent.
    pub clusters_sent: Counter,
    /// ApplicationSet upserts or deletions sent.
    pub applicationsets_sent: Counter,
    /// Project upserts or deletions sent.
    pub projects_sent: Counter,
    /// Payload bytes of relay messages.
    pub bytes_sent: Counter,
    /// Changes dropped because only noisy fields differed or nothing changed.
    pub suppressed: Counter,
}

impl RelayCounters {
    /// Registers the counters.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "argocd_gateway_relay_snapshots",
            "State snapshots sent to the hub",
            self.snapshots.clone(),
        );
        r.register(
            "argocd_gateway_relay_deltas",
            "Delta messages sent to the hub",
            self.deltas.clone(),
        );
        r.register(
            "argocd_gateway_relay_applications_sent",
            "Application upserts and deletions sent",
            self.applications_sent.clone(),
        );
        r.register(
            "argocd_gateway_relay_clusters_sent",
            "Cluster upserts and deletions sent",
            self.clusters_sent.clone(),
        );
        r.register(
            "argocd_gateway_relay_applicationsets_sent",
            "ApplicationSet upserts and deletions sent",
            self.applicationsets_sent.clone(),
        );
        r.register(
            "argocd_gateway_relay_projects_sent",
            "Project upserts and deletions sent",
            self.projects_sent.clone(),
        );
        r.register(
            "argocd_gateway_relay_bytes_sent",
            "Bytes of relay messages sent",
            self.bytes_sent.clone(),
        );
        r.register(
            "argocd_gateway_relay_suppressed_changes",
            "Changes not sent because nothing significant changed",
            self.suppressed.clone(),
        );
    }
}

/// Largest relay message payload; far below the 4 MiB gRPC limit so headers and one large
/// entity still fit.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Unacknowledged messages allowed in flight; more changes wait (and coalesce) meanwhile.
pub const WINDOW: usize = 8;

struct InFlight {
    seq: u64,
    /// Changes this message carries: key → hash, `None` for a deletion.
    changes: Vec<(EntityKey, Option<Hash>)>,
    /// For a snapshot's last chunk: the whole snapshot, which replaces what the hub holds.
    snapshot: Option<BTreeMap<EntityKey, Hash>>,
    /// When the carried changes were first seen, for latency.
    seen: Vec<Instant>,
}

/// What happened on an ack.
#[derive(Debug, Default)]
pub struct AckOutcome {
    /// Propagation latencies of the changes acknowledged.
    pub latencies: Vec<std::time::Duration>,
}

/// A snapshot being sent: its chunks are made one at a time as the window allows, so the JSON
/// of a large state is never all in memory at once.
struct SnapshotPlan {
    /// Keys still to send, in `(kind, key)` order.
    keys: std::vec::IntoIter<EntityKey>,
    /// An entity read for the previous chunk that did not fit in it.
    carry: Option<Entity>,
    /// The next chunk's index.
    index: u32,
    /// What has been sent, which the hub will hold.
    sent: BTreeMap<EntityKey, Hash>,
    /// The digest of what has been sent.
    digest: DigestBuilder,
}

/// The relay state that outlives sessions.
pub struct Relay {
    source: Arc<dyn Source>,
    dirty: Arc<Dirty>,
    /// What the hub confirmed holding (valid only when `acked_known`).
    acked: BTreeMap<EntityKey, Hash>,
    acked_known: bool,
    /// What the hub will hold once everything in flight is applied.
    projected: BTreeMap<EntityKey, Hash>,
    in_flight: VecDeque<InFlight>,
    next_seq: u64,
    /// The kinds the hub of this session reads (its capabilities); others are not relayed.
    kinds: Vec<Kind>,
    /// The snapshot being sent, if one is.
    snapshot: Option<SnapshotPlan>,
    /// The digest this session agreed on with the hub.
    digest_kind: DigestKind,
    /// Counters.
    pub counters: RelayCounters,
}

fn bump(c: &Counter, by: u64) {
    c.inc_by(by);
}

impl Relay {
    /// A relay reading from `source`, told about changes through `dirty`.
    pub fn new(source: Arc<dyn Source>, dirty: Arc<Dirty>) -> Self {
        Self {
            source,
            dirty,
            acked: BTreeMap::new(),
            acked_known: false,
            projected: BTreeMap::new(),
            in_flight: VecDeque::new(),
            next_seq: 1,
            kinds: Kind::ALL.to_vec(),
            snapshot: None,
            digest_kind: DigestKind::Ordered,
            counters: RelayCounters::default(),
        }
    }

    /// The change set this relay drains.
    pub fn dirty(&self) -> &Arc<Dirty> {
        &self.dirty
    }

    fn count(&self, kind: Kind, n: u64) {
        match kind {
            Kind::Application => bump(&self.counters.applications_sent, n),
            Kind::Cluster => bump(&self.counters.clusters_sent, n),
            Kind::ApplicationSet => bump(&self.counters.applicationsets_sent, n),
            Kind::Project => bump(&self.counters.projects_sent, n),
        }
    }

    /// Relays only these kinds from now on: what the hub of the coming session reads. Called
    /// before [`Relay::on_welcome`]; an older hub is never sent a kind it cannot read, and its
    /// digest is compared with the state of the kinds it holds.
    pub fn set_kinds(&mut self, kinds: Vec<Kind>) {
        if kinds != self.kinds {
            tracing::info!(kinds = ?kinds.iter().map(|k| k.name()).collect::<Vec<_>>(), "relaying these entity kinds to this hub");
        }
        self.kinds = kinds;
    }

    /// Starts a session whose digest is `kind`: compares digests with the hub and decides
    /// whether a snapshot is needed; its chunks, or deltas for any difference, follow through
    /// [`Relay::next_delta`]. Needs only keys and hashes; no JSON is made here.
    pub fn on_welcome(&mut self, hub_digest: &[u8], kind: DigestKind) {
        self.in_flight.clear();
        self.snapshot = None;
        self.digest_kind = kind;
        let acked_digest = kind.of(self.acked.iter().map(|((k, key), h)| (*k, key.as_str(), h)));
        let current: BTreeMap<EntityKey, Hash> = self
            .source
            .hashes()
            .into_iter()
            .filter(|((kind, _), _)| self.kinds.contains(kind))
            .collect();
        if self.acked_known && acked_digest.as_slice() == hub_digest {
            // The hub holds exactly what it last acknowledged: send only what changed since.
            self.projected = self.acked.clone();
            let mut rest = HashMap::new();
            let now = Instant::now();
            for key in current.keys().chain(self.acked.keys()) {
                rest.insert(key.clone(), now);
            }
            self.dirty.put_back(rest);
            tracing::debug!("hub state matches the last acknowledged state; sending differences only");
            return;
        }
        let current_digest = kind.of(current.iter().map(|((k, key), h)| (*k, key.as_str(), h)));
        if current_digest.as_slice() == hub_digest {
            self.acked = current;
            self.acked_known = true;
            self.projected = self.acked.clone();
            tracing::info!(
                entities = self.acked.len(),
                "hub already holds this state; no snapshot needed"
            );
            return;
        }
        tracing::info!(entities = current.len(), "sending a state snapshot to the hub");
        bump(&self.counters.snapshots, 1);
        // The snapshot carries each entity as it is when its chunk is made; marks until now are
        // covered by it, and later ones become deltas after it.
        let _ = self.dirty.take();
        let _ = self.dirty.take_all();
        self.snapshot = Some(SnapshotPlan {
            keys: current.into_keys().collect::<Vec<_>>().into_iter(),
            carry: None,
            index: 0,
            sent: BTreeMap::new(),
            digest: kind.builder(),
        });
    }

    /// The next chunk of the snapshot being sent; the last one carries the digest of all.
    fn next_chunk(&mut self) -> Option<GatewayMessage> {
        let plan = self.snapshot.as_mut()?;
        let mut entities = vec![];
        let mut size = 0usize;
        let mut counts: BTreeMap<Kind, u64> = BTreeMap::new();
        let last = loop {
            let e = match plan.carry.take() {
                Some(e) => e,
                None => {
                    let Some((kind, key)) = plan.keys.next() else {
                        break true;
                    };
                    // Gone since the welcome: not part of the snapshot (nothing to delete later).
                    let Some(e) = self.source.get(kind, &key) else { continue };
                    e
                }
            };
            let n = e.json.len() + e.key.len() + 48;
            if size + n > MAX_MESSAGE_BYTES && !entities.is_empty() {
                // It starts the next chunk.
                plan.carry = Some(e);
                break false;
            }
            size += n;
            plan.digest.add(e.kind, &e.key, &e.hash);
            plan.sent.insert((e.kind, e.key.clone()), e.hash);
            *counts.entry(e.kind).or_default() += 1;
            entities.push(e.to_proto());
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let index = plan.index;
        plan.index += 1;
        for (kind, n) in counts {
            self.count(kind, n);
        }
        let (digest, snapshot) = if last {
            let plan = self.snapshot.take()?;
            self.projected = plan.sent.clone();
            (plan.digest.finish().to_vec(), Some(plan.sent))
        } else {
            (vec![], None)
        };
        let chunk = SnapshotChunk {
            seq,
            index,
            last,
            entities,
            digest,
        };
        bump(&self.counters.bytes_sent, prost::Message::encoded_len(&chunk) as u64);
        self.in_flight.push_back(InFlight {
            seq,
            changes: vec![],
            snapshot,
            seen: vec![],
        });
        Some(GatewayMessage {
            body: Some(gateway_message::Body::Snapshot(chunk)),
        })
    }

    /// True when a delta may be sent now.
    pub fn can_send(&self) -> bool {
        self.in_flight.len() < WINDOW && (self.snapshot.is_some() || !self.dirty.is_empty()) && self.source.ready()
    }

    /// Whether the source has a complete state to relay.
    pub fn ready(&self) -> bool {
        self.source.ready()
    }

    /// The next message to send — a chunk of the snapshot being sent, else a delta — or `None`
    /// when nothing significant changed or the window is full.
    pub fn next_delta(&mut self) -> Option<GatewayMessage> {
        if self.in_flight.len() >= WINDOW || !self.source.ready() {
            return None;
        }
        if self.snapshot.is_some() {
            return self.next_chunk();
        }
        let mut marked_map = self.dirty.take();
        if let Some(since) = self.dirty.take_all() {
            for key in self.source.keys().into_iter().chain(self.projected.keys().cloned()) {
                marked_map.entry(key).or_insert(since);
            }
        }
        marked_map.retain(|(kind, _), _| self.kinds.contains(kind));
        let mut marked: Vec<(EntityKey, Instant)> = marked_map.into_iter().collect();
        marked.sort();
        let mut entities = vec![];
        let mut changes = vec![];
        let mut seen = vec![];
        let mut size = 0usize;
        let mut rest = HashMap::new();
        for ((kind, key), t) in marked {
            if size >= MAX_MESSAGE_BYTES {
                rest.insert((kind, key), t);
                continue;
            }
            let now = self.source.get(kind, &key);
            let expected = self.projected.get(&(kind, key.clone()));
            match (&now, expected) {
                (Some(e), Some(h)) if &e.hash == h => {
                    bump(&self.counters.suppressed, 1);
                    continue;
                }
                (None, None) => continue,
                _ => {}
            }
            let entity = match now {
                Some(e) => {
                    size += e.json.len() + e.key.len() + 48;
                    self.projected.insert((kind, key.clone()), e.hash);
                    changes.push(((kind, key.clone()), Some(e.hash)));
                    e.to_proto()
                }
                None => {
                    size += key.len() + 16;
                    self.projected.remove(&(kind, key.clone()));
                    changes.push(((kind, key.clone()), None));
                    proto::Entity {
                        kind: kind.to_proto() as i32,
                        key: key.clone(),
                        hash: vec![],
                        json: vec![],
                    }
                }
            };
            self.count(kind, 1);
            seen.push(t);
            entities.push(entity);
        }
        self.dirty.put_back(rest);
        if entities.is_empty() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let oldest_change_age_ms = seen
            .iter()
            .min()
            .map(|t| t.elapsed().as_millis().min(u128::from(u32::MAX)) as u32);
        let delta = Delta {
            seq,
            entities,
            oldest_change_age_ms,
        };
        bump(&self.counters.deltas, 1);
        bump(&self.counters.bytes_sent, prost::Message::encoded_len(&delta) as u64);
        self.in_flight.push_back(InFlight {
            seq,
            changes,
            snapshot: None,
            seen,
        });
        Some(GatewayMessage {
            body: Some(gateway_message::Body::Delta(delta)),
        })
    }

    /// The hub stored everything up to `seq`.
    pub fn on_ack(&mut self, seq: u64) -> AckOutcome {
        let mut outcome = AckOutcome::default();
        let now = Instant::now();
        while self.in_flight.front().is_some_and(|f| f.seq <= seq) {
            let Some(f) = self.in_flight.pop_front() else { break };
            if let Some(snapshot) = f.snapshot {
                self.acked = snapshot;
                self.acked_known = true;
            }
            for (key, hash) in f.changes {
                match hash {
                    Some(h) => self.acked.insert(key, h),
                    None => self.acked.remove(&key),
                };
            }
            outcome.latencies.extend(f.seen.iter().map(|t| now.duration_since(*t)));
        }
        outcome
    }

    /// Unacknowledged messages.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Keys currently known to differ from what the hub confirmed (for tests and metrics).
    pub fn unacknowledged_keys(&self) -> BTreeSet<EntityKey> {
        let mut keys: BTreeSet<EntityKey> = self
            .in_flight
            .iter()
            .flat_map(|f| f.changes.iter().map(|(k, _)| k.clone()))
            .collect();
        if let Ok(d) = self.dirty.keys.lock() {
            keys.extend(d.keys().cloned());
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::entity::{SetDigest, digest};
    use serde_json::json;

    #[derive(Default)]
    struct Map(Mutex<BTreeMap<EntityKey, serde_json::Value>>);

    impl Map {
        fn set(&self, key: &str, v: serde_json::Value) {
            self.0.lock().unwrap().insert((Kind::Application, key.into()), v);
        }
        fn del(&self, key: &str) {
            self.0.lock().unwrap().remove(&(Kind::Application, key.into()));
        }
    }

    impl Source for Map {
        fn entities(&self) -> Vec<Entity> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|((k, key), v)| Entity::from_value(*k, key.clone(), v))
                .collect()
        }
        fn get(&self, kind: Kind, key: &str) -> Option<Entity> {
            self.0
                .lock()
                .unwrap()
                .get(&(kind, key.to_owned()))
                .map(|v| Entity::from_value(kind, key.into(), v))
        }
    }

    fn delta_keys(m: &GatewayMessage) -> Vec<(String, bool)> {
        match &m.body {
            Some(gateway_message::Body::Delta(d)) => {
                d.entities.iter().map(|e| (e.key.clone(), e.json.is_empty())).collect()
            }
            other => panic!("not a delta: {other:?}"),
        }
    }

    /// A session start with the ordered digest, and the snapshot chunks it leads to (as many as
    /// the window allows).
    fn welcome(relay: &mut Relay, hub_digest: &[u8]) -> Vec<GatewayMessage> {
        relay.on_welcome(hub_digest, DigestKind::Ordered);
        let mut out = vec![];
        while relay.snapshot.is_some()
            && let Some(m) = relay.next_delta()
        {
            out.push(m);
        }
        out
    }

    fn seq_of(m: &GatewayMessage) -> u64 {
        match &m.body {
            Some(gateway_message::Body::Delta(d)) => d.seq,
            Some(gateway_message::Body::Snapshot(s)) => s.seq,
            _ => 0,
        }
    }

    #[test]
    fn snapshot_then_coalesced_deltas_and_noise_suppression() {
        let src = Arc::new(Map::default());
        src.set("ns/a", json!({"health": "Healthy", "reconciledAt": "1"}));
        src.set("ns/b", json!({"health": "Healthy"}));
        let dirty = Arc::new(Dirty::default());
        let mut relay = Relay::new(src.clone(), dirty.clone());

        let snap = welcome(&mut relay, &[]);
        assert_eq!(snap.len(), 1);
        relay.on_ack(seq_of(&snap[0]));
        assert_eq!(relay.in_flight(), 0);

        // Ten changes to one app coalesce into one upsert; a noisy-only change sends nothing.
        for i in 0..10 {
            src.set("ns/a", json!({"health": format!("H{i}"), "reconciledAt": "1"}));
            dirty.mark(Kind::Application, "ns/a".into());
        }
        src.set("ns/b", json!({"health": "Healthy", "reconciledAt": "later"}));
        dirty.mark(Kind::Application, "ns/b".into());
        let d = relay.next_delta().unwrap();
        assert_eq!(delta_keys(&d), vec![("ns/a".into(), false)]);
        assert!(relay.next_delta().is_none());

        src.del("ns/b");
        dirty.mark(Kind::Application, "ns/b".into());
        let d2 = relay.next_delta().unwrap();
        assert_eq!(delta_keys(&d2), vec![("ns/b".into(), true)]);
        relay.on_ack(seq_of(&d2));
        assert_eq!(relay.unacknowledged_keys().len(), 0);
    }

    #[test]
    fn reconnect_sends_nothing_when_digests_match_and_only_differences_otherwise() {
        let src = Arc::new(Map::default());
        for i in 0..5 {
            src.set(&format!("ns/{i}"), json!({"v": i}));
        }
        let dirty = Arc::new(Dirty::default());
        let mut relay = Relay::new(src.clone(), dirty.clone());
        let snap = welcome(&mut relay, &[]);
        relay.on_ack(seq_of(snap.last().unwrap()));
        let hub_digest = digest(relay.acked.iter().map(|((k, key), h)| (*k, key.as_str(), h)));

        // Same state: nothing at all.
        assert!(welcome(&mut relay, &hub_digest).is_empty());
        assert!(relay.next_delta().is_none());

        // A change while disconnected: the hub still holds the acked state, so one delta.
        src.set("ns/3", json!({"v": 33}));
        dirty.mark(Kind::Application, "ns/3".into());
        let lost = relay.next_delta().unwrap(); // sent, never acknowledged
        assert_eq!(delta_keys(&lost), vec![("ns/3".into(), false)]);
        assert!(welcome(&mut relay, &hub_digest).is_empty());
        let again = relay.next_delta().unwrap();
        assert_eq!(
            delta_keys(&again),
            vec![("ns/3".into(), false)],
            "unacknowledged change is resent"
        );

        // A fresh gateway process (nothing acked) whose state matches the hub: no snapshot.
        let mut fresh = Relay::new(src.clone(), Arc::new(Dirty::default()));
        relay.on_ack(seq_of(&again));
        let d = digest(relay.acked.iter().map(|((k, key), h)| (*k, key.as_str(), h)));
        assert!(welcome(&mut fresh, &d).is_empty());
        // ...and one whose state differs gets a snapshot.
        assert_eq!(welcome(&mut fresh, &hub_digest).len(), 1);
    }

    #[test]
    fn window_bounds_in_flight_and_snapshot_chunks_fit() {
        let src = Arc::new(Map::default());
        let big = "x".repeat(300 * 1024);
        for i in 0..10 {
            src.set(&format!("ns/{i}"), json!({"blob": big}));
        }
        let dirty = Arc::new(Dirty::default());
        let mut relay = Relay::new(src.clone(), dirty.clone());
        let snap = welcome(&mut relay, &[]);
        assert!(snap.len() >= 3);
        for m in &snap {
            assert!(prost::Message::encoded_len(m) < 4 * 1024 * 1024);
        }
        assert!(
            matches!(&snap.last().unwrap().body, Some(gateway_message::Body::Snapshot(s)) if s.last && !s.digest.is_empty())
        );
        relay.on_ack(seq_of(snap.last().unwrap()));
        let mut sent = 0;
        for round in 0..(WINDOW + 3) {
            src.set(&format!("ns/{}", round % 10), json!({"blob": format!("{round}")}));
            dirty.mark(Kind::Application, format!("ns/{}", round % 10));
            if relay.next_delta().is_some() {
                sent += 1;
            }
        }
        assert_eq!(sent, WINDOW);
        assert!(!relay.unacknowledged_keys().is_empty());
    }

    #[test]
    fn mark_all_finds_changes_and_deletions_the_feed_missed() {
        let src = Arc::new(Map::default());
        for i in 0..4 {
            src.set(&format!("ns/{i}"), json!({"v": i}));
        }
        let dirty = Arc::new(Dirty::default());
        let mut relay = Relay::new(src.clone(), dirty.clone());
        let snap = welcome(&mut relay, &[]);
        relay.on_ack(seq_of(snap.last().unwrap()));

        // Nothing marked individually: one change, one deletion, one addition, one untouched.
        src.set("ns/1", json!({"v": 11}));
        src.del("ns/2");
        src.set("ns/9", json!({"v": 9}));
        dirty.mark_all();
        let d = relay.next_delta().unwrap();
        let mut keys = delta_keys(&d);
        keys.sort();
        assert_eq!(
            keys,
            vec![("ns/1".into(), false), ("ns/2".into(), true), ("ns/9".into(), false)]
        );
        assert!(relay.next_delta().is_none());
        assert_eq!(relay.counters.suppressed.get(), 2, "the unchanged ns/0 and ns/3");
    }

    #[test]
    fn nothing_is_sent_until_the_source_is_ready() {
        struct NotYet(Map, std::sync::atomic::AtomicBool);
        impl Source for NotYet {
            fn entities(&self) -> Vec<Entity> {
                self.0.entities()
            }
            fn get(&self, kind: Kind, key: &str) -> Option<Entity> {
                self.0.get(kind, key)
            }
            fn ready(&self) -> bool {
                self.1.load(std::sync::atomic::Ordering::SeqCst)
            }
        }
        let src = Arc::new(NotYet(Map::default(), false.into()));
        src.0.set("ns/a", json!({"v": 1}));
        let dirty = Arc::new(Dirty::default());
        let mut relay = Relay::new(src.clone(), dirty.clone());
        dirty.mark(Kind::Application, "ns/a".into());
        assert!(!relay.ready());
        assert!(!relay.can_send());
        assert!(relay.next_delta().is_none());
        src.1.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(relay.can_send());
        assert_eq!(delta_keys(&relay.next_delta().unwrap()), vec![("ns/a".into(), false)]);
    }

    #[test]
    fn a_large_snapshot_is_made_chunk_by_chunk_within_the_window() {
        let src = Arc::new(Map::default());
        let big = "x".repeat(700 * 1024);
        for i in 0..(WINDOW + 4) {
            src.set(&format!("ns/{i:02}"), json!({"blob": big}));
        }
        let dirty = Arc::new(Dirty::default());
        let mut relay = Relay::new(src.clone(), dirty.clone());
        relay.on_welcome(&[], DigestKind::Ordered);
        let mut first = vec![];
        while let Some(m) = relay.next_delta() {
            first.push(m);
        }
        assert_eq!(first.len(), WINDOW, "no more chunks than the window holds");
        // A change to an entity not sent yet travels in the snapshot; one already sent follows
        // as a delta after it.
        src.set("ns/00", json!({"blob": "changed after its chunk"}));
        dirty.mark(Kind::Application, "ns/00".into());
        src.set(
            &format!("ns/{:02}", WINDOW + 3),
            json!({"blob": "changed before its chunk"}),
        );
        relay.on_ack(seq_of(&first[WINDOW - 1]));
        let mut rest = vec![];
        while relay.snapshot.is_some()
            && let Some(m) = relay.next_delta()
        {
            rest.push(m);
        }
        let last = match &rest.last().unwrap().body {
            Some(gateway_message::Body::Snapshot(s)) => s.clone(),
            other => panic!("not a snapshot chunk: {other:?}"),
        };
        assert!(
            last.last
                && last
                    .entities
                    .iter()
                    .any(|e| String::from_utf8_lossy(&e.json).contains("before its chunk"))
        );
        // The digest covers what was sent, in order.
        let sent: BTreeMap<EntityKey, Hash> = first
            .iter()
            .chain(&rest)
            .flat_map(|m| match &m.body {
                Some(gateway_message::Body::Snapshot(s)) => s.entities.clone(),
                _ => vec![],
            })
            .map(|e| ((Kind::Application, e.key), e.hash.try_into().unwrap()))
            .collect();
        assert_eq!(sent.len(), WINDOW + 4);
        assert_eq!(
            last.digest,
            digest(sent.iter().map(|((k, key), h)| (*k, key.as_str(), h))).to_vec()
        );
        relay.on_ack(seq_of(rest.last().unwrap()));
        assert_eq!(delta_keys(&relay.next_delta().unwrap()), vec![("ns/00".into(), false)]);
    }

    #[test]
    fn with_the_set_digest_a_reconnect_compares_sets() {
        let src = Arc::new(Map::default());
        for i in 0..5 {
            src.set(&format!("ns/{i}"), json!({"v": i}));
        }
        let dirty = Arc::new(Dirty::default());
        let mut relay = Relay::new(src.clone(), dirty.clone());
        relay.on_welcome(&[], DigestKind::Set);
        let snap = relay.next_delta().unwrap();
        let Some(gateway_message::Body::Snapshot(chunk)) = &snap.body else {
            panic!("a snapshot")
        };
        let set = SetDigest::of(relay.projected.iter().map(|((k, key), h)| (*k, key.as_str(), h))).finish();
        assert_eq!(chunk.digest, set.to_vec());
        relay.on_ack(seq_of(&snap));
        relay.on_welcome(&set, DigestKind::Set);
        assert!(relay.next_delta().is_none(), "the hub holds this set: nothing to send");
    }
}
