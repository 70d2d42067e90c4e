//! Property tests over what crosses a trust boundary: Argo CD's JSON (applications, clusters,
//! lists, watch events), the stream framing, and the relay messages the hub applies. Inputs are
//! generated around the real shapes (Argo CD field names, odd types in their places, empty and
//! deep values). The case budget is fixed for CI (`PROPTEST_CASES` raises it for a long run).

use std::sync::Arc;

use argocd_gateway::argocd::model::{
    decode_application, decode_application_list, decode_cluster, decode_cluster_list, decode_stream_chunk,
    decode_watch_result, stream_payload,
};
use argocd_gateway::argocd::split::{ListSplitter, Piece};
use argocd_gateway::hub::entities::{EntityLimits, EntityState};
use argocd_gateway::hub::feed::{Feed, HistoryConfig};
use argocd_gateway::hub::store::Store;
use argocd_gateway::wire::item::Application;
use argocd_gateway::wire::proto::{self, Delta, EntityKind};
use argocd_gateway::wire::{DigestKind, Hash, Kind, SetDigest, digest};
use proptest::prelude::*;
use serde_json::{Value, json};

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Field names of Argo CD objects, so generated objects hit the decoders' real paths.
const KEYS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "resourceVersion",
    "labels",
    "annotations",
    "spec",
    "project",
    "source",
    "sources",
    "destination",
    "server",
    "repoURL",
    "targetRevision",
    "status",
    "sync",
    "health",
    "status",
    "message",
    "revision",
    "revisions",
    "operationState",
    "phase",
    "syncResult",
    "resources",
    "kind",
    "group",
    "version",
    "summary",
    "images",
    "conditions",
    "type",
    "reconciledAt",
    "info",
    "connectionState",
    "result",
    "error",
    "application",
    "items",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z0-9 :./_-]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "Healthy",
            "Synced",
            "OutOfSync",
            "Running",
            "Failed",
            "ADDED",
            "DELETED"
        ])
        .prop_map(|s| json!(s)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A plausible application with one part replaced by anything.
fn application() -> impl Strategy<Value = Value> {
    (
        "[a-z][a-z0-9-]{0,8}",
        prop::sample::select(vec!["metadata", "spec", "status", "status.health", "status.sync", "status.resources", "metadata.labels", "spec.source"]),
        json_value(),
    )
        .prop_map(|(name, path, junk)| {
            let mut app = json!({
                "metadata": {"name": name, "namespace": "argocd", "resourceVersion": "7", "labels": {"a": "b"}},
                "spec": {"project": "default", "source": {"repoURL": "https://x", "targetRevision": "HEAD"},
                         "destination": {"server": "https://kubernetes.default.svc", "namespace": "n"}},
                "status": {"sync": {"status": "Synced", "revision": "abc"}, "health": {"status": "Healthy"},
                           "resources": [{"kind": "Deployment", "name": "d", "status": "Synced", "health": {"status": "Healthy"}}]}
            });
            let mut cur = &mut app;
            let parts: Vec<&str> = path.split('.').collect();
            for p in &parts[..parts.len() - 1] {
                cur = &mut cur[*p];
            }
            cur[parts[parts.len() - 1]] = junk;
            app
        })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn argocd_decoders_never_panic_and_what_decodes_relays(v in json_value(), app in application()) {
        for text in [v.to_string(), app.to_string()] {
            if let Ok(d) = decode_application(&text) {
                // Whatever decodes is a valid relayed item.
                let item = serde_json::to_vec(&d.app).unwrap();
                let back: Application = serde_json::from_slice(&item).unwrap();
                prop_assert_eq!(back, d.app);
            }
            let _ = decode_cluster(&text);
            let _ = decode_watch_result(&text);
            let _ = decode_stream_chunk(&text, decode_watch_result);
        }
    }

    #[test]
    fn every_list_item_is_applied_or_accounted_for(items in prop::collection::vec(prop_oneof![application(), json_value()], 0..8)) {
        let list = json!({"metadata": {"resourceVersion": "9"}, "items": items});
        let decoded = decode_application_list(list.to_string().as_bytes()).expect("a well-formed list decodes");
        prop_assert_eq!(decoded.items.len() + decoded.skipped.len(), items.len());
        prop_assert_eq!(decoded.resource_version, "9");
        let clusters = decode_cluster_list(list.to_string().as_bytes()).expect("a well-formed list decodes");
        prop_assert_eq!(clusters.items.len() + clusters.skipped.len(), items.len());
    }

    #[test]
    fn the_list_splitter_finds_what_a_parser_finds_however_the_body_is_cut(
        items in prop::collection::vec(json_value(), 0..6),
        meta in json_value(),
        extra in json_value(),
        pretty in any::<bool>(),
        cuts in prop::collection::vec(1usize..64, 1..40),
    ) {
        let list = json!({"kind": "ApplicationList", "metadata": meta, "items": items, "extra": extra});
        prop_assert!(list["items"].is_array());
        let text = if pretty { serde_json::to_string_pretty(&list).unwrap() } else { list.to_string() };
        let mut splitter = ListSplitter::new(usize::MAX);
        let (mut got_items, mut got_meta) = (vec![], vec![]);
        let mut rest = text.as_bytes();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
            rest = tail;
            splitter
                .feed(chunk, &mut |p| match p {
                    Piece::Item(raw) => got_items.push(serde_json::from_slice::<Value>(raw).expect("an item is one JSON value")),
                    Piece::Meta(raw) => got_meta.push(serde_json::from_slice::<Value>(raw).expect("metadata is one JSON value")),
                })
                .expect("a well-formed list splits");
        }
        splitter.finish().expect("the whole list was read");
        // What a parser of the whole text finds (floats compared as parsed from the same text).
        let parsed: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(Value::Array(got_items), parsed["items"].clone());
        prop_assert_eq!(got_meta, vec![parsed["metadata"].clone()]);
        // Cut anywhere before its end, the same list is never taken for a whole one.
        let cut = cuts[0] % text.len().max(1);
        let mut partial = ListSplitter::new(usize::MAX);
        let fed = partial.feed(&text.as_bytes()[..cut], &mut |_| {});
        prop_assert!(fed.is_err() || partial.finish().is_err());
    }

    #[test]
    fn stream_framing_reads_ndjson_and_sse_alike(v in json_value(), noise in ".{0,40}") {
        let chunk = json!({"result": {"type": "MODIFIED", "application": v}}).to_string();
        prop_assert_eq!(stream_payload(&chunk), Some(chunk.as_str()));
        let sse = format!("data: {chunk} ");
        prop_assert_eq!(stream_payload(&sse), Some(chunk.as_str()));
        // Keepalives and other SSE fields carry nothing; nothing panics.
        let keepalive = format!(":{noise}");
        prop_assert_eq!(stream_payload(&keepalive), None);
        let _ = stream_payload(&noise);
    }
}

/// One relayed entity as a hostile or buggy gateway might send it.
fn entity() -> impl Strategy<Value = proto::Entity> {
    let names = prop::sample::select(vec!["a", "b", "c", "d"]);
    (
        prop::sample::select(vec![0i32, 1, 1, 1, 2, 7]),
        names.clone(),
        names,
        prop::sample::select(vec![0u8, 1, 2, 3, 4, 5]),
        prop::sample::select(vec![32usize, 32, 32, 3]),
    )
        .prop_map(|(kind, key, named, shape, hash_len)| {
            let json = match shape {
                0 => Vec::new(),
                1 | 2 => serde_json::to_vec(&json!({"namespace": "argocd", "name": named, "project": "p"})).unwrap(),
                3 => b"[1,2,3]".to_vec(),
                4 => b"null".to_vec(),
                _ => serde_json::to_vec(&json!({"server": named})).unwrap(),
            };
            let key = if kind == EntityKind::Cluster as i32 {
                key.to_owned()
            } else {
                format!("argocd/{key}")
            };
            proto::Entity {
                kind,
                key,
                hash: vec![shape; hash_len],
                json,
            }
        })
}

/// A gateway row for relayed state to belong to (as registration makes one).
async fn register_gateway(store: &Store, id: &str) {
    use argocd_gateway::hub::store::{CertRecord, GatewayRecord, NewGateway, TokenRecord};
    let now = jiff::Timestamp::now().as_second();
    let token = TokenRecord {
        id: "t".into(),
        name: String::new(),
        environments: vec![],
        created_at: now,
        expires_at: now + 3600,
        used_at: None,
        gateway_id: None,
    };
    store.insert_token(token, vec![1; 32]).await.unwrap();
    let id = id.to_owned();
    store
        .register_with_token(
            "t".into(),
            vec![1; 32],
            now,
            Box::new(move |_, _| {
                Ok(NewGateway {
                    gateway: GatewayRecord {
                        id: id.clone(),
                        name: id.clone(),
                        environments: vec![],
                        argocd_web_url: String::new(),
                        created_at: now,
                        last_seen_at: None,
                        version: String::new(),
                        protocol_version: 0,
                        certificate_expires_at: None,
                    },
                    cert: CertRecord {
                        fingerprint: "f".into(),
                        gateway_id: id,
                        public_key: vec![],
                        not_after: now + 3600,
                        retire_after: None,
                    },
                })
            }),
        )
        .await
        .unwrap();
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn the_hub_applies_any_relay_messages_safely(deltas in prop::collection::vec(prop::collection::vec(entity(), 0..6), 1..6)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("hub.db")).unwrap();
            register_gateway(&store, "gw").await;
            let (feed, recorder) = Feed::new(store.clone(), HistoryConfig::default());
            tokio::spawn(recorder.run(tokio_util::sync::CancellationToken::new()));
            let state = Arc::new(EntityState::load(store.clone(), feed.clone()).await.unwrap());
            let limits = EntityLimits { kinds: argocd_gateway::wire::Kind::ALL.to_vec(), max_entities: 3, max_entity_bytes: 4096, max_state_bytes: 1 << 20 };
            let refused = |_: &str| {};
            for (seq, entities) in deltas.into_iter().enumerate() {
                let digest_after = state
                    .apply_delta("gw", Delta { seq: seq as u64, entities, oldest_change_age_ms: None }, &limits, &refused, DigestKind::Set)
                    .await
                    .unwrap();
                // What is held is valid, within the limits, and digests to what was acknowledged.
                let (count, recomputed) = state.with("gw", |g| {
                    let g = g.expect("the gateway's state exists after a delta");
                    for (key, s) in &g.apps {
                        assert_eq!(key, &format!("{}/{}", s.item.namespace, s.item.name));
                    }
                    for (key, s) in &g.clusters {
                        assert_eq!(key, &s.item.server);
                    }
                    let entries: Vec<(Kind, String, Hash)> = g
                        .apps
                        .iter()
                        .map(|(k, s)| (Kind::Application, k.clone(), s.hash))
                        .chain(g.clusters.iter().map(|(k, s)| (Kind::Cluster, k.clone(), s.hash)))
                        .collect();
                    let set = SetDigest::of(entries.iter().map(|(k, key, h)| (*k, key.as_str(), h))).finish();
                    // The incrementally kept set digest is the set digest of what is held, and
                    // the ordered digest still reads the same state.
                    assert_eq!(g.digest(DigestKind::Ordered), digest(entries.iter().map(|(k, key, h)| (*k, key.as_str(), h))));
                    (g.len(), set)
                });
                assert!(count <= limits.max_entities);
                assert_eq!(recomputed, digest_after);
            }
            // A restarted hub reads back exactly what it acknowledged.
            let reloaded = EntityState::load(store, feed).await.unwrap();
            for kind in [DigestKind::Set, DigestKind::Ordered] {
                assert_eq!(reloaded.digest("gw", kind), state.digest("gw", kind));
            }
        });
    }
}
