//! The Kubernetes half of the gateway against an in-process fake API server with real
//! resourceVersion and conflict semantics (`support/fake_api.rs`): the identity Secret, Lease
//! leader election, and `self-update` (library and binary, with a real in-process hub).
//!
//! Lease and rollout timing runs on paused tokio time, so 15-second leases and 5-minute rollout
//! deadlines take milliseconds and never depend on the machine's speed.

#[path = "support/fake_api.rs"]
mod fake_api;

use std::path::Path;
use std::time::Duration;

use argocd_gateway::hub::{self, Hub, ServeArgs};
use argocd_gateway::identity::Identity;
use argocd_gateway::identity::store::{IdentityStore, StoreError};
use argocd_gateway::kube::lease::{LeaderElector, LeaderHandle, LeaseConfig};
use argocd_gateway::kube::secret_store::SecretStore;
use argocd_gateway::kube::self_update::{
    Applied, ApplyOptions, Decision, SelfUpdateError, Targets, apply, plan, read_current,
};
use argocd_gateway::secret::Secret;
use argocd_gateway::uplink::config::{HubConfig, HubEndpoint};
use argocd_gateway::uplink::register::{RegistrationArgs, register};
use argocd_gateway::uplink::version::desired_version;
use fake_api::{CRONJOBS, DEPLOYMENTS, FakeApi, LEASES, Mode, SECRETS};
use semver::Version;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const NS: &str = "argocd";

// ---------------------------------------------------------------------------------------------
// Identity Secret

fn identity(id: &str) -> Identity {
    Identity {
        gateway_id: id.into(),
        name: format!("name-of-{id}"),
        environments: vec!["prod".into(), "eu-west".into()],
        hub_url: "https://hub.example.com:8443".into(),
        key_pem: Secret::new(format!("PRIVATE-KEY-OF-{id}")),
        cert_pem: format!("CERT-OF-{id}"),
        ca_pem: "HUB-CA".into(),
    }
}

fn same(a: &Identity, b: &Identity) -> bool {
    a.gateway_id == b.gateway_id
        && a.name == b.name
        && a.environments == b.environments
        && a.hub_url == b.hub_url
        && a.key_pem.expose() == b.key_pem.expose()
        && a.cert_pem == b.cert_pem
        && a.ca_pem == b.ca_pem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_registering_at_once_end_with_one_identity() {
    for round in 0..20 {
        let api = FakeApi::new();
        let name = "gw-identity";
        if round % 2 == 1 {
            // Pre-created and empty (an operator made it, or a revocation cleared it): the race
            // is then between two resourceVersion-guarded updates rather than two creates.
            api.insert(
                SECRETS,
                NS,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": {"unrelated": "eA=="}}),
            );
        }
        // Two replicas: two clients, two stores, two freshly registered identities.
        let a = SecretStore::new(api.client(), NS, name);
        let b = SecretStore::new(api.client(), NS, name);
        let (id_a, id_b) = (identity("gw-a"), identity("gw-b"));
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { a.create(&id_a).await }),
            tokio::spawn(async move { b.create(&id_b).await })
        );
        let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
        assert!(same(&ra, &rb), "round {round}: {ra:?} vs {rb:?}");
        let stored = SecretStore::new(api.client(), NS, name).load().await.unwrap().unwrap();
        assert!(same(&stored, &ra), "round {round}: stored {stored:?}, returned {ra:?}");
        let secret = api.get(SECRETS, NS, name).unwrap();
        if round % 2 == 1 {
            assert_eq!(secret["data"]["unrelated"], "eA==", "foreign keys survive");
        } else {
            assert_eq!(secret["type"], "Opaque");
        }
    }
}

#[tokio::test]
async fn secret_store_keys_replace_with_conflicts_and_remove() {
    let api = FakeApi::new();
    let store = SecretStore::new(api.client(), NS, "gw-identity");
    assert_eq!(store.describe(), "secret:argocd/gw-identity");
    assert!(store.load().await.unwrap().is_none());

    let first = store.create(&identity("gw-1")).await.unwrap();
    assert_eq!(first.gateway_id, "gw-1");
    let secret = api.get(SECRETS, NS, "gw-identity").unwrap();
    let data = secret["data"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "ca.crt",
            "environments",
            "gateway-id",
            "hub-url",
            "name",
            "tls.crt",
            "tls.key"
        ]
    );
    let decoded = |k: &str| {
        use base64::Engine;
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(data[k].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(decoded("gateway-id"), "gw-1");
    assert_eq!(decoded("environments"), "prod\neu-west");
    assert_eq!(decoded("tls.key"), "PRIVATE-KEY-OF-gw-1");

    // A renewal that loses two write races in a row re-reads and still lands.
    api.force_conflicts(2);
    let mut renewed = identity("gw-1");
    renewed.cert_pem = "RENEWED-CERT".into();
    store.replace(&renewed).await.unwrap();
    assert_eq!(store.load().await.unwrap().unwrap().cert_pem, "RENEWED-CERT");
    let puts = api.writes().iter().filter(|w| w.starts_with("PUT ")).count();
    assert_eq!(puts, 3, "two refused by conflicts, one accepted: {:?}", api.writes());

    // Endless conflicts end in an error instead of a loop.
    api.force_conflicts(usize::MAX);
    let err = store.replace(&renewed).await.unwrap_err();
    assert!(matches!(err, StoreError::Kube { .. }), "{err}");
    api.force_conflicts(0);

    // Forgetting another gateway's identity leaves this one alone.
    store.remove("gw-other").await.unwrap();
    assert_eq!(store.load().await.unwrap().unwrap().gateway_id, "gw-1");
    store.remove("gw-1").await.unwrap();
    assert!(store.load().await.unwrap().is_none());
    assert!(
        api.get(SECRETS, NS, "gw-identity").is_some(),
        "the Secret is cleared, never deleted"
    );
    assert!(api.writes().iter().all(|w| !w.starts_with("DELETE")));

    // A cleared Secret takes a new registration.
    assert_eq!(store.create(&identity("gw-2")).await.unwrap().gateway_id, "gw-2");

    // A half-written Secret is reported as corrupt, naming the missing key but never the key.
    api.edit(SECRETS, NS, "gw-identity", |s| {
        s["data"].as_object_mut().unwrap().remove("tls.crt");
    });
    let err = store.load().await.unwrap_err().to_string();
    assert!(
        err.contains("tls.crt") && err.contains("secret:argocd/gw-identity"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE-KEY"), "{err}");
    assert!(!format!("{:?}", store.load().await).contains("PRIVATE-KEY"));

    // API failures name the store and the flag.
    api.set_mode(Mode::Unavailable);
    let err = store.load().await.unwrap_err().to_string();
    assert!(err.contains("--identity") && err.contains("503"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Lease leader election

const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);
/// The elector jitters its retry period by up to 20 %.
const RETRY_MAX: Duration = Duration::from_millis(2400);
const SIM_WAIT: Duration = Duration::from_secs(120);

fn lease_cfg(holder: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: NS.into(),
        name: "argocd-gateway".into(),
        holder: holder.into(),
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY,
    }
}

struct Replica {
    handle: LeaderHandle,
    stop: CancellationToken,
}

fn replica(api: &FakeApi, holder: &str) -> Replica {
    let stop = CancellationToken::new();
    let handle = LeaderElector::new(api.client(), lease_cfg(holder)).spawn(stop.clone());
    Replica { handle, stop }
}

impl Replica {
    fn is_leader(&self) -> bool {
        *self.handle.leader.borrow()
    }

    async fn wait_leader(&mut self, want: bool) -> Duration {
        let start = Instant::now();
        tokio::time::timeout(SIM_WAIT, self.handle.leader.wait_for(|l| *l == want))
            .await
            .unwrap_or_else(|_| panic!("leadership did not become {want}"))
            .unwrap();
        start.elapsed()
    }
}

/// Watches replicas' leadership and records whether two ever led at once. A replica whose
/// elector is gone (crashed) no longer counts.
fn monitor(mut rxs: Vec<watch::Receiver<bool>>) -> (tokio::task::JoinHandle<()>, watch::Receiver<usize>) {
    let (tx, max_leaders) = watch::channel(0usize);
    let task = tokio::spawn(async move {
        loop {
            let leaders = rxs.iter().filter(|rx| rx.has_changed().is_ok() && *rx.borrow()).count();
            tx.send_modify(|m| *m = (*m).max(leaders));
            let changes = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
            let (res, _, _) = futures_util::future::select_all(changes).await;
            if res.is_err() {
                // A sender is gone; keep watching the others at a slower pace.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (task, max_leaders)
}

fn lease_holder(api: &FakeApi) -> Option<String> {
    api.get(LEASES, NS, "argocd-gateway")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

#[tokio::test(start_paused = true)]
async fn two_electors_race_then_standby_takes_over_a_crashed_leader() {
    let api = FakeApi::new();
    let mut a = replica(&api, "pod-a");
    let mut b = replica(&api, "pod-b");
    let (watcher, max_leaders) = monitor(vec![a.handle.leader.clone(), b.handle.leader.clone()]);

    tokio::time::timeout(SIM_WAIT, async {
        while !a.is_leader() && !b.is_leader() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("someone leads");
    // A minute of renewals: leadership stays where it is.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (leader, standby) = if a.is_leader() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(!standby.is_leader());
    assert_eq!(leader.handle.stats.transitions(), 1);
    assert!(leader.handle.stats.is_leader());
    assert_eq!(standby.handle.stats.transitions(), 0);
    let leader_name = lease_holder(&api).unwrap();

    // The leader crashes: no release, its renewals just stop.
    leader.handle.task.abort();
    let crashed = Instant::now();
    let took = standby.wait_leader(true).await;
    let bound = LEASE_DURATION + 2 * RETRY_MAX;
    assert!(took >= LEASE_DURATION - 2 * RETRY_MAX && took <= bound, "took {took:?}");
    assert!(crashed.elapsed() <= bound);
    assert_ne!(lease_holder(&api).unwrap(), leader_name);
    let lease = api.get(LEASES, NS, "argocd-gateway").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(*max_leaders.borrow(), 1, "never two leaders at once");
    watcher.abort();
}

#[tokio::test(start_paused = true)]
async fn leader_demotes_by_the_renew_deadline_when_the_api_server_is_lost() {
    let api = FakeApi::new();
    let mut a = replica(&api, "pod-a");
    a.wait_leader(true).await;
    let mut b = replica(&api, "pod-b");
    let (watcher, max_leaders) = monitor(vec![a.handle.leader.clone(), b.handle.leader.clone()]);
    tokio::time::sleep(Duration::from_secs(30)).await;

    for mode in [Mode::BlackHole, Mode::Unavailable] {
        // A leader re-elected after the previous outage may hold the Lease on a round that
        // started during it (a conservative renewal time); let it renew normally first.
        tokio::time::sleep(RETRY_MAX * 3).await;
        let leader = if a.is_leader() { &mut a } else { &mut b };
        let transitions = leader.handle.stats.transitions();
        api.set_mode(mode);
        let took = leader.wait_leader(false).await;
        // The last renewal happened at most one retry period before the outage, and the
        // leader must not give up before its deadline nor hold on after it.
        assert!(
            took <= RENEW_DEADLINE && took >= RENEW_DEADLINE - RETRY_MAX,
            "{mode:?}: demoted after {took:?}"
        );
        assert_eq!(leader.handle.stats.transitions(), transitions + 1);
        assert!(!leader.handle.stats.is_leader());
        // Nobody can lead without the API server.
        tokio::time::sleep(LEASE_DURATION * 2).await;
        assert!(!a.is_leader() && !b.is_leader(), "{mode:?}");
        // Back online: one of them leads again.
        api.set_mode(Mode::Normal);
        tokio::time::timeout(SIM_WAIT, async {
            while !a.is_leader() && !b.is_leader() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("someone leads again");
    }
    assert_eq!(*max_leaders.borrow(), 1, "never two leaders at once");
    watcher.abort();
}

#[tokio::test(start_paused = true)]
async fn release_on_shutdown_lets_the_standby_take_over_at_once() {
    let api = FakeApi::new();
    let mut a = replica(&api, "pod-a");
    a.wait_leader(true).await;
    let mut b = replica(&api, "pod-b");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!b.is_leader());

    a.stop.cancel();
    let released = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), &mut a.handle.task)
        .await
        .expect("the elector ends after releasing")
        .unwrap();
    assert!(!a.is_leader());
    assert_eq!(a.handle.stats.transitions(), 2);
    let lease = api.get(LEASES, NS, "argocd-gateway").unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");

    b.wait_leader(true).await;
    let took = released.elapsed();
    assert!(
        took <= RETRY_MAX,
        "took {took:?}, a lease duration is {LEASE_DURATION:?}"
    );
    assert_eq!(lease_holder(&api).as_deref(), Some("pod-b"));

    // A standby that shuts down has nothing to release and leaves the leader alone.
    let c = replica(&api, "pod-c");
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.stop.cancel();
    c.handle.task.await.unwrap();
    assert_eq!(c.handle.stats.transitions(), 0);
    assert_eq!(lease_holder(&api).as_deref(), Some("pod-b"));
}

// ---------------------------------------------------------------------------------------------
// self-update

const IMAGE: &str = "registry.example.com:5000/acme/argocd-gateway";

fn install(api: &FakeApi, tag: &str) {
    api.insert(
        DEPLOYMENTS,
        NS,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "gw"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "gw"}},
                "template": {
                    "metadata": {"labels": {"app": "gw"}},
                    "spec": {"containers": [
                        {"name": "proxy", "image": "envoyproxy/envoy:v1.30.0"},
                        {"name": "gateway", "image": format!("{IMAGE}:{tag}")}
                    ]}
                }
            },
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}
        }),
    );
    api.insert(
        CRONJOBS,
        NS,
        json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "gw-self-update"},
            "spec": {
                "schedule": "0 0 * * *",
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "self-update", "image": format!("{IMAGE}:{tag}")}]
                }}}}
            }
        }),
    );
}

fn targets() -> Targets {
    Targets {
        namespace: NS.into(),
        deployment: "gw".into(),
        container: "gateway".into(),
        cronjob: Some(("gw-self-update".into(), "self-update".into())),
    }
}

fn deployment_image(api: &FakeApi) -> String {
    api.get(DEPLOYMENTS, NS, "gw").unwrap()["spec"]["template"]["spec"]["containers"][1]["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn cronjob_image(api: &FakeApi) -> String {
    api.get(CRONJOBS, NS, "gw-self-update").unwrap()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        ["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A stand-in for the Deployment controller: once it sees a new generation it reports one
/// replica updated, then (when `healthy`) the whole rollout complete, else stays stuck.
fn controller(api: &FakeApi, healthy: bool) -> tokio::task::JoinHandle<()> {
    let api = api.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            api.edit(DEPLOYMENTS, NS, "gw", |d| {
                let generation = d["metadata"]["generation"].as_i64().unwrap();
                let status = &mut d["status"];
                if status["observedGeneration"].as_i64() < Some(generation) {
                    *status = json!({"observedGeneration": generation, "replicas": 3, "updatedReplicas": 1,
                        "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 1});
                } else if healthy {
                    *status = json!({"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2,
                        "readyReplicas": 2, "availableReplicas": 2});
                }
            });
        }
    })
}

async fn plan_for(api: &FakeApi, desired: Option<&str>) -> argocd_gateway::kube::self_update::Plan {
    let client = api.client();
    let current = read_current(&client, &targets()).await.unwrap();
    plan(
        NS,
        current,
        desired.map(|d| Version::parse(d).unwrap()),
        Duration::from_secs(300),
    )
}

#[tokio::test(start_paused = true)]
async fn self_update_upgrades_deployment_and_cronjob_and_waits_for_the_rollout() {
    let api = FakeApi::new();
    install(&api, "1.2.0");
    let ctl = controller(&api, true);
    let p = plan_for(&api, Some("1.3.1")).await;
    assert_eq!(p.decision, Decision::Upgrade);
    assert_eq!(p.changes.len(), 2);
    assert!(api.writes().is_empty(), "planning changes nothing");

    let started = Instant::now();
    let out = apply(&api.client(), &p, ApplyOptions::default()).await.unwrap();
    assert_eq!(
        out,
        Applied::Updated {
            version: Version::new(1, 3, 1)
        }
    );
    assert!(started.elapsed() >= Duration::from_secs(2), "waited for the rollout");
    assert_eq!(deployment_image(&api), format!("{IMAGE}:1.3.1"));
    assert_eq!(cronjob_image(&api), format!("{IMAGE}:1.3.1"));
    let d = api.get(DEPLOYMENTS, NS, "gw").unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"], "envoyproxy/envoy:v1.30.0",
        "other containers untouched"
    );
    assert_eq!(
        api.writes(),
        [
            "PATCH /apis/apps/v1/namespaces/argocd/deployments/gw",
            "PATCH /apis/batch/v1/namespaces/argocd/cronjobs/gw-self-update"
        ]
    );
    ctl.abort();
}

#[tokio::test(start_paused = true)]
async fn self_update_does_nothing_when_equal_unset_older_or_another_major() {
    let api = FakeApi::new();
    install(&api, "1.2.0");
    for (desired, decision, says) in [
        (Some("1.2.0"), Decision::UpToDate, "already at the desired version"),
        (None, Decision::NotSet, "no desired version"),
        (Some("1.1.9"), Decision::RefuseDowngrade, "never downgrades"),
        (Some("0.9.0"), Decision::RefuseDowngrade, "never downgrades"),
        (Some("2.0.0"), Decision::RefuseMajor, "helm upgrade"),
    ] {
        let p = plan_for(&api, desired).await;
        assert_eq!(p.decision, decision, "{desired:?}");
        assert!(p.changes.is_empty());
        assert!(p.to_string().contains(says), "{desired:?}: {p}");
        assert_eq!(
            apply(&api.client(), &p, ApplyOptions::default()).await.unwrap(),
            Applied::Nothing
        );
    }
    assert!(api.writes().is_empty(), "{:?}", api.writes());
    assert_eq!(deployment_image(&api), format!("{IMAGE}:1.2.0"));
}

#[tokio::test(start_paused = true)]
async fn self_update_rolls_both_back_when_the_rollout_is_not_ready_by_the_deadline() {
    let api = FakeApi::new();
    install(&api, "1.2.0");
    let ctl = controller(&api, false);
    let p = plan_for(&api, Some("1.4.0")).await;
    let started = Instant::now();
    let err = apply(&api.client(), &p, ApplyOptions::default()).await.unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_secs(300),
        "waited the full deadline"
    );
    assert!(matches!(err, SelfUpdateError::RolloutFailed { .. }), "{err}");
    let msg = err.to_string();
    for needle in [
        "not ready within 5m (1 of 2 replicas updated)",
        "Rollback:",
        "rolled CronJob gw-self-update back",
        "rolled Deployment gw back",
        "--rollout-timeout",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing in: {msg}");
    }
    assert_eq!(deployment_image(&api), format!("{IMAGE}:1.2.0"));
    assert_eq!(cronjob_image(&api), format!("{IMAGE}:1.2.0"));
    assert_eq!(api.writes().len(), 4, "two patches, two rollbacks: {:?}", api.writes());
    ctl.abort();
}

#[tokio::test(start_paused = true)]
async fn self_update_never_overwrites_a_concurrent_edit() {
    let api = FakeApi::new();
    install(&api, "1.2.0");
    let p = plan_for(&api, Some("1.3.0")).await;
    // Someone changes the image between reading and patching.
    api.edit(DEPLOYMENTS, NS, "gw", |d| {
        d["spec"]["template"]["spec"]["containers"][1]["image"] = json!(format!("{IMAGE}:1.2.5"));
    });
    let err = apply(&api.client(), &p, ApplyOptions::default()).await.unwrap_err();
    assert!(matches!(err, SelfUpdateError::Patch { .. }), "{err}");
    assert!(err.to_string().contains("nothing was overwritten"), "{err}");
    assert_eq!(deployment_image(&api), format!("{IMAGE}:1.2.5"));
    assert_eq!(
        cronjob_image(&api),
        format!("{IMAGE}:1.2.0"),
        "the CronJob was never touched"
    );
}

#[tokio::test(start_paused = true)]
async fn self_update_reports_missing_objects_containers_and_unversioned_images() {
    let api = FakeApi::new();
    let client = api.client();
    let err = read_current(&client, &targets()).await.unwrap_err().to_string();
    assert!(err.contains("404") && err.contains("--deployment"), "{err}");
    install(&api, "latest");
    let err = read_current(&client, &targets()).await.unwrap_err().to_string();
    assert!(
        err.contains("image.tag") && err.contains("autoUpdate.enabled=false"),
        "{err}"
    );
    let mut t = targets();
    t.container = "gw".into();
    let err = read_current(&client, &t).await.unwrap_err().to_string();
    assert!(
        err.contains("\"proxy\", \"gateway\"") && err.contains("--container"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Desired version at the hub, and the binary's dry run

struct RegisteredHub {
    hub: Hub,
    _dir: tempfile::TempDir,
    admin: String,
    hub_cfg: HubConfig,
    identity: Identity,
}

/// A real hub on 127.0.0.1:0 and a gateway registered with it, its identity in the fake's
/// Secret `argocd/gw-identity`.
async fn registered(api: &FakeApi) -> RegisteredHub {
    argocd_gateway::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub::start(ServeArgs {
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        client_cert_ttl: Duration::from_secs(3600),
        health_check_interval: Duration::from_secs(3600),
        ..ServeArgs::new(dir.path().to_owned())
    })
    .await
    .unwrap();
    let admin = std::fs::read_to_string(&hub.admin_token_path)
        .unwrap()
        .trim()
        .to_owned();
    let (status, token) = hub_api(
        &hub,
        &admin,
        reqwest::Method::POST,
        "/api/v1/registration-tokens",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{token}");
    let hub_cfg = HubConfig {
        endpoint: HubEndpoint::parse(&format!("https://localhost:{}", hub.grpc_addr.port()), false).unwrap(),
        pin: None,
        ca_fingerprint: Some(hub.ca_fingerprint.clone()),
        connect_timeout: Duration::from_secs(5),
        transport: argocd_gateway::uplink::Transport::Auto,
        memory: Default::default(),
    };
    let store = SecretStore::new(api.client(), NS, "gw-identity");
    let args = RegistrationArgs {
        registration_token: Some(Secret::new(token["token"].as_str().unwrap())),
        name: Some("edge-1".into()),
        ..Default::default()
    };
    let identity = register(&hub_cfg, &[], &store, &args).await.unwrap();
    RegisteredHub {
        hub,
        _dir: dir,
        admin,
        hub_cfg,
        identity,
    }
}

async fn hub_api(hub: &Hub, admin: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{path}", hub.http_addr))
        .bearer_auth(admin);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_desired_version_api_and_authenticated_query() {
    let api = FakeApi::new();
    let r = registered(&api).await;
    let current = Version::new(1, 2, 0);
    assert_eq!(
        desired_version(&r.hub_cfg, &[], &r.identity, &current).await.unwrap(),
        None
    );
    let path = "/api/v1/desired-version";
    let put = reqwest::Method::PUT;
    assert_eq!(
        hub_api(&r.hub, &r.admin, reqwest::Method::GET, path, None).await,
        (200, json!({"version": null}))
    );
    let (status, body) = hub_api(&r.hub, &r.admin, put.clone(), path, Some(json!({"version": "soon"}))).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("semantic version"), "{body}");
    let (status, _) = hub_api(&r.hub, &r.admin, put.clone(), path, Some(json!({"tag": "1.0.0"}))).await;
    assert_eq!(status, 400);
    let (status, _) = hub_api(&r.hub, "wrong", put.clone(), path, Some(json!({"version": "1.3.0"}))).await;
    assert_eq!(status, 401);
    assert_eq!(
        hub_api(&r.hub, &r.admin, put, path, Some(json!({"version": "v1.3.0"}))).await,
        (200, json!({"version": "1.3.0"}))
    );
    assert_eq!(
        hub_api(&r.hub, &r.admin, reqwest::Method::GET, path, None).await,
        (200, json!({"version": "1.3.0"}))
    );
    assert_eq!(
        desired_version(&r.hub_cfg, &[], &r.identity, &current).await.unwrap(),
        Some(Version::new(1, 3, 0))
    );

    // An assertion made for another purpose is refused: it cannot be replayed here.
    let channel = argocd_gateway::uplink::dial::Dialer::new(&r.hub_cfg, &[], Some(&r.identity))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tunnel_assertion = argocd_gateway::wire::assertion::sign(
        &r.identity.key().unwrap(),
        &r.identity.gateway_id,
        &r.identity.cert_info().unwrap(),
        argocd_gateway::wire::assertion::Purpose::Tunnel,
        jiff::Timestamp::now().as_second(),
    )
    .unwrap();
    let mut request = tonic::Request::new(argocd_gateway::wire::proto::GetDesiredVersionRequest::default());
    request.metadata_mut().insert(
        argocd_gateway::wire::assertion::METADATA_KEY,
        tunnel_assertion.parse().unwrap(),
    );
    let status = argocd_gateway::wire::proto::registration_client::RegistrationClient::new(channel)
        .get_desired_version(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("another purpose"), "{}", status.message());
    r.hub.shutdown().await;
}

fn write_kubeconfig(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_self_update_dry_run_prints_the_plan_and_changes_nothing() {
    let api = FakeApi::new();
    install(&api, "1.2.0");
    let r = registered(&api).await;
    let (status, _) = hub_api(
        &r.hub,
        &r.admin,
        reqwest::Method::PUT,
        "/api/v1/desired-version",
        Some(json!({"version": "1.5.0"})),
    )
    .await;
    assert_eq!(status, 200);
    let server = api.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &server);
    let writes_before = api.writes().len();

    let hub_url = format!("https://localhost:{}", r.hub.grpc_addr.port());
    let run = |deployment: &str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"));
        cmd.args(["--log-format", "text", "self-update", "--hub-url", &hub_url])
            .args(["--identity", "secret:argocd/gw-identity"])
            .args(["--deployment", deployment, "--cronjob", "gw-self-update", "--dry-run"])
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", NS)
            .env("RUST_LOG", "warn")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("ARGOCD_GATEWAY_IDENTITY")
            .kill_on_drop(true);
        cmd
    };
    let out = tokio::time::timeout(Duration::from_secs(60), run("gw").output())
        .await
        .expect("self-update --dry-run finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    eprintln!("{stdout}");
    for needle in [
        "dry run: nothing is changed",
        "namespace:        argocd",
        &format!("current version:  1.2.0 (Deployment gw container gateway: {IMAGE}:1.2.0)"),
        "desired version:  1.5.0 (from the hub)",
        "decision:         upgrade 1.2.0 -> 1.5.0",
        &format!("patch:            Deployment argocd/gw container gateway: {IMAGE}:1.2.0 -> {IMAGE}:1.5.0"),
        &format!(
            "patch:            CronJob argocd/gw-self-update container self-update: {IMAGE}:1.2.0 -> {IMAGE}:1.5.0"
        ),
        "wait up to 5m",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing in:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(!stdout.contains("PRIVATE KEY") && !stderr.contains("PRIVATE KEY"));
    assert_eq!(
        api.writes().len(),
        writes_before,
        "a dry run writes nothing: {:?}",
        api.writes()
    );
    assert_eq!(deployment_image(&api), format!("{IMAGE}:1.2.0"));

    // A deployment that does not exist fails with the flag to fix, and a non-zero exit.
    let out = run("nope").output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--deployment") && stderr.contains("404"), "{stderr}");
    r.hub.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Two gateway processes with --leader-elect: one relays, the other stands by and takes over

async fn get_text(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 30s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_relays_and_the_standby_takes_over_on_sigterm() {
    use argocd_gateway::simulator::{SimOptions, SimTls, Simulator, TokenSpec};
    let api = FakeApi::new();
    let r = registered(&api).await;
    let server = api.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), &server);
    let sim = Simulator::start(SimOptions {
        tls: SimTls::Plaintext,
        ..Default::default()
    })
    .await
    .unwrap();
    sim.add_synthetic_apps(4);
    let token_file = dir.path().join("argocd-token");
    std::fs::write(&token_file, sim.add_token(TokenSpec::account("gateway"))).unwrap();
    let hub_url = format!("https://localhost:{}", r.hub.grpc_addr.port());
    let gateway_id = r.identity.gateway_id.clone();

    let spawn = |pod: &str| {
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"));
        cmd.args(["--log-format", "text", "run", "--hub-url", &hub_url])
            .args(["--identity", "secret:argocd/gw-identity", "--keepalive-interval", "1"])
            .args(["--argocd-server", &sim.url(), "--argocd-plaintext"])
            .arg("--argocd-token-file")
            .arg(&token_file)
            .args(["--admin-addr", &admin.to_string()])
            .args(["--leader-elect", "--lease-name", "gw"])
            .args([
                "--lease-duration",
                "4s",
                "--lease-renew-deadline",
                "3s",
                "--lease-retry-period",
                "1s",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", NS)
            .env("POD_NAME", pod)
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("ARGOCD_GATEWAY_IDENTITY")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        (cmd.spawn().unwrap(), format!("http://{admin}"))
    };
    let connected = || async {
        let (_, g) = hub_api(
            &r.hub,
            &r.admin,
            reqwest::Method::GET,
            &format!("/api/v1/gateways/{gateway_id}"),
            None,
        )
        .await;
        g["connected"] == json!(true)
    };
    let holder = || {
        api.get(LEASES, NS, "gw")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };

    let (mut a, admin_a) = spawn("pod-a");
    until("pod-a leads and relays", || async {
        holder() == "pod-a" && connected().await
    })
    .await;
    let (b, admin_b) = spawn("pod-b");
    // The standby is ready (its view is warm) but does not lead.
    until("pod-b is a ready standby", || async {
        get_text(&format!("{admin_b}/readyz"))
            .await
            .is_some_and(|(s, _)| s == 200)
    })
    .await;
    let (_, metrics_b) = get_text(&format!("{admin_b}/metrics")).await.unwrap();
    assert_eq!(metric(&metrics_b, "argocd_gateway_leader"), Some(0.0), "{metrics_b}");
    assert_eq!(metric(&metrics_b, "argocd_gateway_hub_connected"), Some(0.0));
    let (_, metrics_a) = get_text(&format!("{admin_a}/metrics")).await.unwrap();
    assert_eq!(metric(&metrics_a, "argocd_gateway_leader"), Some(1.0), "{metrics_a}");
    assert_eq!(metric(&metrics_a, "argocd_gateway_leader_transitions"), Some(1.0));
    assert_eq!(holder(), "pod-a");

    // SIGTERM the leader: it says goodbye, releases the Lease, and the standby takes over at its
    // next retry rather than after a lease duration.
    let pid = a.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(15), a.wait())
        .await
        .expect("the leader exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    until("pod-b leads and relays", || async {
        holder() == "pod-b" && connected().await
    })
    .await;
    let (_, apps) = hub_api(
        &r.hub,
        &r.admin,
        reqwest::Method::GET,
        &format!("/api/v1/gateways/{gateway_id}/applications"),
        None,
    )
    .await;
    assert_eq!(apps["items"].as_array().map(Vec::len), Some(4), "{apps}");
    drop(b);
    r.hub.shutdown().await;
}
