//! The hub's store interface, one behaviour for both implementations: every test here runs
//! against the embedded SQLite file and against a real PostgreSQL server started for it.

#[path = "support/ports.rs"]
mod ports;
#[path = "support/postgres.rs"]
mod postgres;

use std::sync::Arc;

use argocd_gateway::hub::postgres::{PgOptions, PgStore};
use argocd_gateway::hub::store::{
    ApiTokenRecord, CertRecord, GatewayRecord, NewFeedEvent, NewGateway, Store, StoreError, TimelineRow, TokenCheck,
    TokenRecord, TokenState, WebSessionRecord,
};
use argocd_gateway::secret::Secret;
use postgres::Postgres;

/// A store of each kind; the server and directory live as long as the returned guards.
async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Store::open(&dir.path().join("hub.db")).unwrap(), dir)
}

async fn postgres_store(pg: &Postgres) -> Store {
    let url = pg.create_db("hub");
    let store = PgStore::open(&PgOptions {
        url: Secret::new(url),
        password_file: None,
        ca_file: None,
        pool_size: 8,
    })
    .await
    .expect("the PostgreSQL store opens");
    Store::new(Arc::new(store))
}

/// Runs `body` against SQLite, then against PostgreSQL.
macro_rules! both_stores {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (store, _dir) = super::sqlite().await;
                ($body)(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let pg = Postgres::start();
                let store = postgres_store(&pg).await;
                ($body)(store).await;
            }
        }
    };
}

fn token(id: &str, expires_at: i64) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        name: format!("name-{id}"),
        environments: vec!["prod".into()],
        created_at: 100,
        expires_at,
        used_at: None,
        gateway_id: None,
    }
}

fn new_gateway(id: &str, now: i64) -> NewGateway {
    NewGateway {
        gateway: GatewayRecord {
            id: id.into(),
            name: format!("gw {id}"),
            environments: vec!["prod".into()],
            argocd_web_url: String::new(),
            created_at: now,
            last_seen_at: Some(now),
            version: "1.0.0".into(),
            protocol_version: 0,
            certificate_expires_at: Some(now + 1000),
        },
        cert: CertRecord {
            fingerprint: format!("fp-{id}"),
            gateway_id: id.into(),
            public_key: vec![1, 2, 3],
            not_after: now + 1000,
            retire_after: None,
        },
    }
}

async fn register(store: &Store, token_id: &str, gateway: &str, now: i64) -> TokenCheck {
    let g = gateway.to_owned();
    store
        .register_with_token(
            token_id.into(),
            vec![7; 32],
            now,
            Box::new(move |_, _| Ok(new_gateway(&g, now))),
        )
        .await
        .unwrap()
        .0
}

both_stores!(tokens_register_once_and_report_their_state, |store: Store| async move {
    store.insert_token(token("t1", 1000), vec![7; 32]).await.unwrap();
    store.insert_token(token("t2", 150), vec![7; 32]).await.unwrap();
    assert_eq!(store.list_tokens().await.unwrap().len(), 2);
    assert_eq!(
        store.check_token("t1".into(), vec![7; 32], 120).await.unwrap(),
        TokenState::Active
    );
    assert_eq!(
        store.check_token("t1".into(), vec![8; 32], 120).await.unwrap(),
        TokenState::Unknown
    );
    assert_eq!(
        store.check_token("t2".into(), vec![7; 32], 200).await.unwrap(),
        TokenState::Expired
    );
    assert!(matches!(
        register(&store, "t1", "gw-1", 120).await,
        TokenCheck::Consumed { .. }
    ));
    assert_eq!(register(&store, "t1", "gw-x", 121).await, TokenCheck::Used);
    assert_eq!(register(&store, "t2", "gw-y", 200).await, TokenCheck::Expired);
    assert_eq!(register(&store, "nope", "gw-z", 120).await, TokenCheck::Unknown);
    assert_eq!(
        store.check_token("t1".into(), vec![7; 32], 130).await.unwrap(),
        TokenState::Used
    );
    let t = store.token("t1".into()).await.unwrap().unwrap();
    assert_eq!((t.used_at, t.gateway_id.as_deref()), (Some(120), Some("gw-1")));
    let g = store.gateway("gw-1".into()).await.unwrap().unwrap();
    assert_eq!(g.environments, vec!["prod".to_owned()]);
    assert!(store.gateway("gw-x".into()).await.unwrap().is_none());
    assert!(store.delete_token("t2".into()).await.unwrap());
    assert!(!store.delete_token("t2".into()).await.unwrap());
});

both_stores!(
    a_token_raced_by_many_registers_exactly_once,
    |store: Store| async move {
        store.insert_token(token("race", 10_000), vec![7; 32]).await.unwrap();
        let mut tasks = vec![];
        for i in 0..24 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                register(&store, "race", &format!("gw-{i}"), 500).await
            }));
        }
        let mut consumed = 0;
        for t in tasks {
            match t.await.unwrap() {
                TokenCheck::Consumed { .. } => consumed += 1,
                TokenCheck::Used => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(consumed, 1);
        assert_eq!(store.gateways().await.unwrap().len(), 1);
    }
);

both_stores!(certificates_gateways_and_settings, |store: Store| async move {
    store.insert_token(token("t", 1000), vec![7; 32]).await.unwrap();
    register(&store, "t", "gw-1", 100).await;
    let renewed = CertRecord {
        fingerprint: "fp-new".into(),
        gateway_id: "gw-1".into(),
        public_key: vec![9],
        not_after: 5000,
        retire_after: None,
    };
    store.add_certificate(renewed.clone(), 700).await.unwrap();
    assert_eq!(
        store.certificate("fp-gw-1".into()).await.unwrap().unwrap().retire_after,
        Some(700)
    );
    assert_eq!(store.certificate("fp-new".into()).await.unwrap().unwrap(), renewed);
    assert_eq!(
        store
            .gateway("gw-1".into())
            .await
            .unwrap()
            .unwrap()
            .certificate_expires_at,
        Some(5000)
    );
    store.record_hello("gw-1".into(), "2.0.0".into(), 2, 300).await.unwrap();
    store.record_seen("gw-1".into(), 400).await.unwrap();
    let g = store.gateway("gw-1".into()).await.unwrap().unwrap();
    assert_eq!(
        (g.version.as_str(), g.protocol_version, g.last_seen_at),
        ("2.0.0", 2, Some(400))
    );
    assert!(store.setting("desired_version").await.unwrap().is_none());
    store.set_setting("desired_version", "1.2.3".into(), 1).await.unwrap();
    store.set_setting("desired_version", "1.2.4".into(), 2).await.unwrap();
    assert_eq!(
        store.setting("desired_version").await.unwrap().as_deref(),
        Some("1.2.4")
    );
    assert!(store.use_nonce("n1".into(), 500, 100).await.unwrap());
    assert!(!store.use_nonce("n1".into(), 500, 200).await.unwrap(), "a replay");
    assert!(
        store.use_nonce("n1".into(), 900, 600).await.unwrap(),
        "expired nonces are forgotten"
    );
    store
        .set_update_hold("gw-1".into(), Some("argo owns it".into()), 10)
        .await
        .unwrap();
    assert_eq!(
        store.update_holds().await.unwrap()["gw-1"],
        ("argo owns it".to_owned(), 10)
    );
    store.set_update_hold("gw-1".into(), None, 11).await.unwrap();
    assert!(store.update_holds().await.unwrap().is_empty());
    assert!(store.delete_gateway("gw-1".into()).await.unwrap());
    assert!(
        store.certificate("fp-new".into()).await.unwrap().is_none(),
        "certificates go with the gateway"
    );
});

both_stores!(entities_snapshots_deltas_and_ownership, |store: Store| async move {
    store.insert_token(token("t", 1000), vec![7; 32]).await.unwrap();
    register(&store, "t", "gw-1", 100).await;
    let row = |key: &str, v: u8| {
        (
            1u8,
            key.to_owned(),
            vec![v; 32],
            Arc::new(format!("{{\"k\":\"{key}\"}}").into_bytes()),
        )
    };
    store
        .write_entities("gw-1".into(), true, vec![row("a", 1), row("b", 1)], vec![], None)
        .await
        .unwrap();
    store
        .write_entities("gw-1".into(), false, vec![row("c", 2)], vec![(1, "a".into())], None)
        .await
        .unwrap();
    let mut keys: Vec<String> = store.load_entities().await.unwrap().into_iter().map(|r| r.2).collect();
    keys.sort();
    assert_eq!(keys, ["b", "c"]);
    // A snapshot replaces everything.
    store
        .write_entities("gw-1".into(), true, vec![row("d", 3)], vec![], None)
        .await
        .unwrap();
    let rows = store.load_entities().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].2.as_str(), rows[0].3.clone()), ("d", vec![3; 32]));
    // A write naming an owner happens only while that session owns the gateway: no session
    // owns it here, so it is refused where the store keeps ownership, and done where one
    // process holds every session.
    let owned = store
        .write_entities("gw-1".into(), false, vec![row("e", 4)], vec![], Some("s-1".into()))
        .await;
    match store.kind() {
        "postgres" => assert!(matches!(owned, Err(StoreError::Fenced(_))), "{owned:?}"),
        _ => assert!(owned.is_ok()),
    }
    // Deleting the gateway takes its state.
    assert!(store.delete_gateway("gw-1".into()).await.unwrap());
    assert!(store.load_entities().await.unwrap().is_empty());
});

fn event(i: i64) -> NewFeedEvent {
    NewFeedEvent {
        at_ms: 1000 + i,
        kind: "gateway.disconnected".into(),
        gateway_id: "gw-1".into(),
        json: format!("{{\"type\":\"gateway.disconnected\",\"n\":{i}}}"),
    }
}

both_stores!(the_feed_assigns_increasing_ids_and_prunes, |store: Store| async move {
    let mut ids = vec![];
    for batch in 0..4 {
        let events: Vec<NewFeedEvent> = (0..3).map(|i| event(batch * 3 + i)).collect();
        ids.extend(
            store
                .record_history(Arc::new(events), Arc::new(vec![]), 10)
                .await
                .unwrap(),
        );
    }
    assert_eq!(ids.len(), 12);
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "{ids:?}");
    let (rows, bounds) = store.feed_events_after(ids[5], 3).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), &ids[6..9]);
    assert_eq!(rows[0].event, event(6));
    assert_eq!((bounds.pruned_through, bounds.last), (0, ids[11]));
    let pruned = store.prune_feed(4, 0).await.unwrap();
    assert_eq!(pruned.pruned_through, ids[7]);
    assert_eq!(pruned.last, ids[11]);
    // Pruning by age drops everything older; the newest id is still known.
    let all = store.prune_feed(100, i64::MAX).await.unwrap();
    assert_eq!((all.pruned_through, all.last), (ids[11], ids[11]));
    let next = store
        .record_history(Arc::new(vec![event(99)]), Arc::new(vec![]), 10)
        .await
        .unwrap();
    assert!(next[0] > ids[11]);
});

both_stores!(timelines_are_capped_per_application, |store: Store| async move {
    store.insert_token(token("t", 1000), vec![7; 32]).await.unwrap();
    register(&store, "t", "gw-1", 100).await;
    let point = |i: i64, first: bool| TimelineRow {
        gateway_id: "gw-1".into(),
        app: "argocd/guestbook".into(),
        at_ms: i,
        health: format!("h{i}"),
        changed: vec![if first { "first" } else { "health" }.into()],
        ..Default::default()
    };
    store
        .record_history(Arc::new(vec![]), Arc::new(vec![point(1, true)]), 3)
        .await
        .unwrap();
    for i in 2..7 {
        store
            .record_history(Arc::new(vec![]), Arc::new(vec![point(i, false)]), 3)
            .await
            .unwrap();
    }
    let rows = store
        .app_timeline("gw-1".into(), "argocd/guestbook".into(), 0, 100)
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.at_ms).collect::<Vec<_>>(), [6, 5, 4]);
    assert_eq!(rows[0].changed, ["health"]);
    assert_eq!(store.gateway_timeline("gw-1".into(), 5, 100).await.unwrap().len(), 2);
    assert_eq!(store.prune_timeline(6).await.unwrap(), 2);
    // A point for an unknown gateway is dropped.
    let mut stray = point(9, false);
    stray.gateway_id = "gw-gone".into();
    store
        .record_history(Arc::new(vec![]), Arc::new(vec![stray]), 3)
        .await
        .unwrap();
    assert!(
        store
            .gateway_timeline("gw-gone".into(), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
});

both_stores!(api_tokens_and_page_sessions, |store: Store| async move {
    let record = ApiTokenRecord {
        id: "a1".into(),
        name: "ci".into(),
        role: "operator".into(),
        created_at: 10,
        expires_at: Some(1000),
        last_used_at: None,
    };
    store.insert_api_token(record.clone(), vec![5; 32]).await.unwrap();
    assert_eq!(
        store.api_token("a1".into()).await.unwrap(),
        Some((record.clone(), vec![5; 32]))
    );
    store.touch_api_token("a1".into(), 50).await.unwrap();
    assert_eq!(store.api_tokens().await.unwrap()[0].last_used_at, Some(50));
    let session = |id: u8, expires_at: i64| WebSessionRecord {
        id_hash: vec![id; 32],
        credential: "a1".into(),
        name: "ci".into(),
        role: "operator".into(),
        csrf: "c".into(),
        created_at: 20,
        expires_at,
    };
    store.insert_web_session(session(1, 500)).await.unwrap();
    store.insert_web_session(session(2, 500)).await.unwrap();
    assert!(store.web_session(vec![1; 32], 100).await.unwrap().is_some());
    assert!(store.web_session(vec![1; 32], 600).await.unwrap().is_none(), "expired");
    store.delete_web_session(vec![1; 32]).await.unwrap();
    assert!(store.web_session(vec![1; 32], 100).await.unwrap().is_none());
    // Revoking the token ends the sessions opened with it.
    assert!(store.delete_api_token("a1".into()).await.unwrap());
    assert!(store.web_session(vec![2; 32], 100).await.unwrap().is_none());
    assert!(!store.delete_api_token("a1".into()).await.unwrap());
});

both_stores!(
    registration_steps_pending_and_removed_gateways,
    |store: Store| async move {
        store.insert_token(token("t1", 200), vec![7; 32]).await.unwrap();
        store.insert_token(token("t2", 200), vec![7; 32]).await.unwrap();
        register(&store, "t1", "gw-1", 150).await;
        register(&store, "t2", "gw-2", 150).await;
        store.record_hello("gw-2".into(), "1.0.0".into(), 2, 160).await.unwrap();
        let pending = store.pending_gateways().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].gateway.id.as_str(), pending[0].expires_at), ("gw-1", 200));
        assert!(
            store
                .remove_gateway("gw-2".into(), "x".into(), 300, true)
                .await
                .unwrap()
                .is_none()
        );
        let removed = store
            .remove_gateway("gw-1".into(), "never connected".into(), 300, true)
            .await
            .unwrap();
        assert_eq!(removed.unwrap().id, "gw-1");
        let listed = store.removed_gateways().await.unwrap();
        assert_eq!(
            (listed[0].id.as_str(), listed[0].reason.as_str()),
            ("gw-1", "never connected")
        );
        store
            .record_step("t1".into(), "used", "done", String::new(), 151)
            .await
            .unwrap();
        store
            .record_step("t1".into(), "used", "failed", "later".into(), 152)
            .await
            .unwrap();
        let steps = store.token_steps("t1".into()).await.unwrap();
        assert_eq!(
            (steps[0].state.as_str(), steps[0].at),
            ("done", 151),
            "a done step stays done"
        );
        assert!(
            store
                .record_gateway_step("gw-2".into(), "connected", "done", String::new(), 170, true)
                .await
                .unwrap()
        );
        assert!(
            !store
                .record_gateway_step("gw-2".into(), "connected", "done", String::new(), 171, true)
                .await
                .unwrap()
        );
        assert_eq!(store.gateway_steps("gw-2".into()).await.unwrap().unwrap().len(), 1);
        assert!(store.gateway_steps("gw-none".into()).await.unwrap().is_none());
        assert_eq!(store.prune_removed_gateways(301).await.unwrap(), 1);
        assert!(store.removed_gateways().await.unwrap().is_empty());
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let pg = Postgres::start();
    let url = pg.create_db("hub");
    let options = PgOptions {
        url: Secret::new(url.clone()),
        password_file: None,
        ca_file: None,
        pool_size: 4,
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let o = options.clone();
            tokio::spawn(async move { PgStore::open(&o).await.map(|_| ()) })
        })
        .collect();
    for o in opens {
        o.await.unwrap().expect("every replica starts");
    }
    // A database a newer hub migrated is refused with a message saying what to do.
    let store = PgStore::open(&options).await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .execute("INSERT INTO schema_migrations (version) VALUES (999)", &[])
        .await
        .unwrap();
    drop(store);
    let err = PgStore::open(&options).await.err().expect("refused").to_string();
    assert!(err.contains("newer than this hub"), "{err}");
    // The password never shows, even in errors.
    let bad = PgOptions {
        url: Secret::new(format!(
            "postgres://postgres:hunter2@127.0.0.1:{}/nodb?sslmode=disable",
            pg.port
        )),
        ..options
    };
    let err = PgStore::open(&bad).await.err().expect("no such database").to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("--store"), "{err}");
}

/// Replica leases and session ownership (PostgreSQL only: one SQLite hub is one process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_leases_own_sessions_and_dead_replicas_are_reaped() {
    use argocd_gateway::hub::postgres::{Claim, NewSession};
    use std::time::Duration;
    let pg = Postgres::start();
    let store = postgres_store(&pg).await;
    let options = PgOptions {
        url: Secret::new(pg.url("hub")),
        password_file: None,
        ca_file: None,
        pool_size: 4,
    };
    let pgs = PgStore::open(&options).await.unwrap();
    store.insert_token(token("t1", 1000), vec![7; 32]).await.unwrap();
    assert!(matches!(
        register(&store, "t1", "gw-1", 200).await,
        TokenCheck::Consumed { .. }
    ));
    let session = |id: &str, replica: &str, instance: &str| NewSession {
        gateway_id: "gw-1".into(),
        session_id: id.into(),
        replica_id: replica.into(),
        instance: instance.into(),
        version: "1.0.0".into(),
        protocol_version: 1,
        now: 300,
    };
    pgs.renew_replica("r-a", "https://10.0.0.1:8444", 100, Duration::from_secs(60))
        .await
        .unwrap();
    pgs.renew_replica("r-b", "https://10.0.0.2:8444", 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        pgs.claim_session(&session("s1", "r-a", "pod-1")).await.unwrap(),
        Claim::Owned(None)
    );
    let on_a = pgs.session("gw-1").await.unwrap().expect("recorded");
    assert!(on_a.live);
    assert_eq!(on_a.replica_id, "r-a");
    assert_eq!(on_a.peer_url, "https://10.0.0.1:8444");
    // Another instance with the same identity while the first is live: a copied identity.
    assert!(matches!(
        pgs.claim_session(&session("s2", "r-b", "pod-2")).await.unwrap(),
        Claim::Copied(s) if s.session_id == "s1"
    ));
    // The same instance reconnecting through replica B takes over.
    match pgs.claim_session(&session("s3", "r-b", "pod-1")).await.unwrap() {
        Claim::Owned(Some(old)) => assert_eq!(old.session_id, "s1"),
        other => panic!("expected a takeover, got {other:?}"),
    }
    // The replaced session cannot release the new one.
    assert!(!pgs.release_session("gw-1", "s1").await.unwrap());
    assert_eq!(pgs.session("gw-1").await.unwrap().unwrap().session_id, "s3");
    // Replica B stops renewing: its session is no longer live, and once the grace is over it
    // is reaped with the replica (exactly once).
    pgs.renew_replica("r-b", "https://10.0.0.2:8444", 100, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pgs.session("gw-1").await.unwrap().unwrap().live);
    assert!(pgs.reap_replicas(Duration::from_secs(3600)).await.unwrap().is_empty());
    assert_eq!(
        pgs.reap_replicas(Duration::ZERO).await.unwrap(),
        vec!["gw-1".to_owned()]
    );
    assert!(pgs.reap_replicas(Duration::ZERO).await.unwrap().is_empty());
    assert!(pgs.session("gw-1").await.unwrap().is_none());
    // A gateway that is not registered cannot be claimed.
    let mut ghost = session("s4", "r-a", "pod-1");
    ghost.gateway_id = "gw-none".into();
    assert_eq!(pgs.claim_session(&ghost).await.unwrap(), Claim::Unknown);
}
