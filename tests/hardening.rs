//! The hub's trust and resource boundaries, against a real hub on 127.0.0.1:0 with real TLS:
//! client certificates required, renewal retiring the old key, replay protection across
//! restarts, private data files, authentication before body parsing, copied identities,
//! deadlines for connections that never speak, and bounds on what a registered gateway may
//! make the hub hold.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argocd_gateway::hub::{self, Hub, ServeArgs};
use argocd_gateway::identity::Identity;
use argocd_gateway::identity::store::{FileStore, IdentityStore};
use argocd_gateway::secret::Secret;
use argocd_gateway::tunnel::{RunConfig, TunnelStatus, run};
use argocd_gateway::uplink::config::{HubConfig, HubEndpoint};
use argocd_gateway::uplink::dial::Dialer;
use argocd_gateway::uplink::register::{RegistrationArgs, register, renew};
use argocd_gateway::wire::ErrorCode;
use argocd_gateway::wire::assertion::{self, Purpose};
use argocd_gateway::wire::proto::{
    self, GatewayMessage, Hello, SnapshotChunk, gateway_message, hub_message, tunnel_client::TunnelClient,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(20);

async fn start_hub(dir: &Path, tweak: impl FnOnce(&mut ServeArgs)) -> Hub {
    argocd_gateway::tls::install_crypto_provider();
    let mut args = ServeArgs {
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        health_check_interval: Duration::from_secs(3600),
        ..ServeArgs::new(dir)
    };
    tweak(&mut args);
    hub::start(args).await.expect("hub starts")
}

fn admin(hub: &Hub) -> String {
    std::fs::read_to_string(&hub.admin_token_path)
        .unwrap()
        .trim()
        .to_owned()
}

async fn api(hub: &Hub, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{path}", hub.http_addr))
        .bearer_auth(admin(hub));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn hub_cfg(hub: &Hub) -> HubConfig {
    HubConfig {
        endpoint: HubEndpoint::parse(&format!("https://localhost:{}", hub.grpc_addr.port()), false).unwrap(),
        pin: None,
        ca_fingerprint: Some(hub.ca_fingerprint.clone()),
        connect_timeout: Duration::from_secs(5),
        transport: argocd_gateway::uplink::Transport::Auto,
        memory: Default::default(),
    }
}

/// Registers a gateway and returns its identity (stored in `path`).
async fn registered(hub: &Hub, path: &Path) -> Identity {
    let (status, tok) = api(
        hub,
        reqwest::Method::POST,
        "/api/v1/registration-tokens",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{tok}");
    let args = RegistrationArgs {
        registration_token: Some(Secret::new(tok["token"].as_str().unwrap())),
        name: Some("edge".into()),
        ..Default::default()
    };
    register(&hub_cfg(hub), &[], &FileStore::new(path.to_owned()), &args)
        .await
        .expect("registers")
}

fn hello(identity: &Identity, instance: &str) -> GatewayMessage {
    GatewayMessage {
        body: Some(gateway_message::Body::Hello(Hello {
            gateway_id: identity.gateway_id.clone(),
            gateway_version: "test".into(),
            protocol_version: argocd_gateway::wire::PROTOCOL_VERSION,
            instance: instance.into(),
            ..Default::default()
        })),
    }
}

fn signed(identity: &Identity, purpose: Purpose) -> String {
    assertion::sign(
        &identity.key().unwrap(),
        &identity.gateway_id,
        &identity.cert_info().unwrap(),
        purpose,
        jiff::Timestamp::now().as_second(),
    )
    .unwrap()
}

/// Opens a raw tunnel as `identity` (its certificate presented unless `cert` is false) with the
/// given assertion; returns the outbound sender and the stream, or the refusal.
async fn open_raw(
    hub: &Hub,
    identity: &Identity,
    cert: bool,
    token: &str,
    instance: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<GatewayMessage>,
        tonic::Streaming<proto::HubMessage>,
    ),
    tonic::Status,
> {
    let channel = Dialer::new(&hub_cfg(hub), &[], cert.then_some(identity))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(hello(identity, instance)).await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert(assertion::METADATA_KEY, token.parse().unwrap());
    let stream = TunnelClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024)
        .open(req)
        .await?
        .into_inner();
    Ok((tx, stream))
}

async fn first_message(stream: &mut tonic::Streaming<proto::HubMessage>) -> proto::HubMessage {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an answer in time")
        .expect("no stream error")
        .expect("a message")
}

#[tokio::test]
async fn a_tls_hub_refuses_a_valid_assertion_without_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&dir.path().join("hub"), |_| {}).await;
    let id = registered(&hub, &dir.path().join("id.json")).await;
    let err = open_raw(&hub, &id, false, &signed(&id, Purpose::Tunnel), "a")
        .await
        .expect_err("refused without the client certificate");
    assert_eq!(
        ErrorCode::from_status(&err),
        Some(ErrorCode::CertificateRequired),
        "{err:?}"
    );
    assert!(err.message().contains("--assertion-only"), "{}", err.message());
    // With the certificate, the same kind of assertion works.
    let (_tx, mut stream) = open_raw(&hub, &id, true, &signed(&id, Purpose::Tunnel), "a")
        .await
        .expect("accepted with the certificate");
    assert!(matches!(
        first_message(&mut stream).await.body,
        Some(hub_message::Body::Welcome(_))
    ));
    hub.shutdown().await;
}

#[tokio::test]
async fn a_renewal_retires_the_previous_certificate_after_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&dir.path().join("hub"), |a| a.renewal_grace = Duration::from_secs(1)).await;
    let old = registered(&hub, &dir.path().join("id.json")).await;
    let channel = Dialer::new(&hub_cfg(&hub), &[], Some(&old))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let new = renew(channel, &old).await.expect("renews");
    // Within the grace the old certificate still opens a stream (one just opened finishes).
    assert!(
        open_raw(&hub, &old, true, &signed(&old, Purpose::Tunnel), "a")
            .await
            .is_ok()
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let err = open_raw(&hub, &old, true, &signed(&old, Purpose::Tunnel), "a")
        .await
        .expect_err("the pre-renewal identity is refused after the grace");
    assert_eq!(
        ErrorCode::from_status(&err),
        Some(ErrorCode::IdentityExpired),
        "{err:?}"
    );
    assert!(err.message().contains("retired"), "{}", err.message());
    assert!(
        open_raw(&hub, &new, true, &signed(&new, Purpose::Tunnel), "a")
            .await
            .is_ok(),
        "the renewed identity works"
    );

    // A gateway still holding the old identity says what to do and forgets it.
    let copy = dir.path().join("old.json");
    let store = FileStore::new(copy.clone());
    store.create(&old).await.unwrap();
    let cfg = RunConfig {
        hub: hub_cfg(&hub),
        extra_roots: vec![],
        store: Arc::new(store),
        registration: RegistrationArgs::default(),
        keepalive_interval: Duration::from_secs(30),
        keepalive_max_failures: 10,
        max_answer_bytes: 1 << 20,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(30),
        healthy_after: Duration::from_secs(60),
        drain_grace: Duration::from_secs(1),
        renew_retry: Duration::from_secs(60),
        protocol_version: argocd_gateway::wire::PROTOCOL_VERSION,
    };
    let (status_tx, mut status) = watch::channel(TunnelStatus::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(cfg, stop.clone(), status_tx, Default::default()));
    let seen = tokio::time::timeout(
        WAIT,
        status.wait_for(|s| s.last_error.as_deref().is_some_and(|e| e.contains("expired"))),
    )
    .await
    .expect("the gateway reports the expired identity")
    .unwrap()
    .clone();
    let text = seen.last_error.unwrap();
    assert!(
        text.contains("register again with a new token") && text.contains("registration.token"),
        "{text}"
    );
    assert!(
        !copy.exists(),
        "the expired identity is removed so a new token can register"
    );
    stop.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_replayed_assertion_is_refused_after_a_hub_restart_and_data_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    let hub = start_hub(&data, |_| {}).await;
    let port = hub.grpc_addr.port();
    let id = registered(&hub, &dir.path().join("id.json")).await;
    let token = signed(&id, Purpose::Tunnel);
    let (_tx, mut stream) = open_raw(&hub, &id, true, &token, "a").await.expect("first use");
    let _ = first_message(&mut stream).await;
    hub.shutdown().await;
    let hub = start_hub(&data, |a| a.grpc_addr = format!("127.0.0.1:{port}").parse().unwrap()).await;
    let err = open_raw(&hub, &id, true, &token, "a")
        .await
        .expect_err("the replay is refused");
    assert_eq!(ErrorCode::from_status(&err), Some(ErrorCode::BadAssertion), "{err:?}");
    assert!(err.message().contains("already used"), "{}", err.message());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["hub.db", "hub.db-wal"] {
            let p = data.join(f);
            if p.exists() {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{f} is private");
            }
        }
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn the_api_authenticates_before_it_reads_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&dir.path().join("hub"), |_| {}).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/v1/registration-tokens", hub.http_addr);
    for body in [
        "{not json".to_owned(),
        json!({"unexpected": true}).to_string(),
        "x".repeat(8 * 1024 * 1024),
    ] {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "without a token the answer is 401, whatever the body");
    }
    let r = http
        .post(format!(
            "http://{}/api/v1/gateways/x/applications/a/b/wait",
            hub.http_addr
        ))
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_copied_identity_is_refused_while_the_original_is_connected() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&dir.path().join("hub"), |_| {}).await;
    let id = registered(&hub, &dir.path().join("id.json")).await;
    let (_tx, mut first) = open_raw(&hub, &id, true, &signed(&id, Purpose::Tunnel), "cluster-a")
        .await
        .unwrap();
    let welcome = first_message(&mut first).await;
    let Some(hub_message::Body::Welcome(w)) = welcome.body else {
        panic!("welcome expected: {welcome:?}")
    };
    // The same identity from another instance (a Secret copied to another cluster).
    let (_tx2, mut second) = open_raw(&hub, &id, true, &signed(&id, Purpose::Tunnel), "cluster-b")
        .await
        .unwrap();
    let answer = first_message(&mut second).await;
    let Some(hub_message::Body::Rejected(r)) = answer.body else {
        panic!("a rejection expected: {answer:?}")
    };
    assert_eq!(r.reason, proto::rejected::Reason::IdentityCopied as i32);
    assert!(
        r.message.contains("copied") && r.message.contains("registration.token"),
        "{}",
        r.message
    );
    // The original session is untouched.
    let (_, g) = api(
        &hub,
        reqwest::Method::GET,
        &format!("/api/v1/gateways/{}", id.gateway_id),
        None,
    )
    .await;
    assert_eq!(g["connected"], json!(true));
    let quiet_until = Instant::now() + Duration::from_millis(500);
    while let Ok(m) = tokio::time::timeout(quiet_until.saturating_duration_since(Instant::now()), first.message()).await
    {
        match m {
            Ok(Some(proto::HubMessage {
                body: Some(hub_message::Body::Ping(_) | hub_message::Body::Request(_)),
            })) => continue,
            other => panic!("nothing but pings and requests reach the first session: {other:?}"),
        }
    }
    // A replica of the same instance still takes over (as on a Lease failover).
    let (_tx3, mut third) = open_raw(&hub, &id, true, &signed(&id, Purpose::Tunnel), "cluster-a")
        .await
        .unwrap();
    let Some(hub_message::Body::Welcome(w3)) = first_message(&mut third).await.body else {
        panic!("the same instance is welcomed")
    };
    assert_ne!(w3.session_id, w.session_id);
    hub.shutdown().await;
}

/// A raw gateway session that has been welcomed.
async fn welcomed(
    hub: &Hub,
    id: &Identity,
) -> (
    tokio::sync::mpsc::Sender<GatewayMessage>,
    tonic::Streaming<proto::HubMessage>,
) {
    let (tx, mut stream) = open_raw(hub, id, true, &signed(id, Purpose::Tunnel), "i")
        .await
        .unwrap();
    let m = first_message(&mut stream).await;
    assert!(matches!(m.body, Some(hub_message::Body::Welcome(_))), "{m:?}");
    (tx, stream)
}

fn app_entity(name: &str) -> proto::Entity {
    let json = json!({"namespace": "argocd", "name": name, "project": "default"});
    proto::Entity {
        kind: proto::EntityKind::Application as i32,
        key: format!("argocd/{name}"),
        hash: vec![7; 32],
        json: serde_json::to_vec(&json).unwrap(),
    }
}

async fn apps(hub: &Hub, id: &Identity) -> Vec<String> {
    let (_, v) = api(
        hub,
        reqwest::Method::GET,
        &format!("/api/v1/gateways/{}/applications", id.gateway_id),
        None,
    )
    .await;
    v["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn ack(stream: &mut tonic::Streaming<proto::HubMessage>) -> proto::Ack {
    loop {
        match first_message(stream).await.body {
            Some(hub_message::Body::Ack(a)) => return a,
            // The hub pings, and health-checks a newly connected gateway; a raw client need
            // not answer.
            Some(hub_message::Body::Ping(_) | hub_message::Body::Request(_)) => continue,
            other => panic!("an ack expected: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unterminated_snapshot_does_not_survive_its_session_and_bad_entities_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&dir.path().join("hub"), |_| {}).await;
    let id = registered(&hub, &dir.path().join("id.json")).await;
    let (tx, mut stream) = welcomed(&hub, &id).await;
    let chunk = |index, last, entities| GatewayMessage {
        body: Some(gateway_message::Body::Snapshot(SnapshotChunk {
            seq: u64::from(index) + 1,
            index,
            last,
            entities,
            digest: vec![],
        })),
    };
    tx.send(chunk(0, false, vec![app_entity("from-session-one")]))
        .await
        .unwrap();
    ack(&mut stream).await;
    drop(tx);
    drop(stream);
    // The next session's snapshot starts afresh: nothing of the first one is kept.
    let (tx, mut stream) = welcomed(&hub, &id).await;
    tx.send(chunk(0, true, vec![app_entity("from-session-two")]))
        .await
        .unwrap();
    ack(&mut stream).await;
    assert_eq!(apps(&hub, &id).await, vec!["from-session-two".to_owned()]);

    // Entities that are not items of the schema are refused and counted, the rest applied.
    let mut bad = vec![];
    for (i, json) in ["[1,2,3]", "null", "{\"namespace\":\"argocd\",\"name\":\"other\"}"]
        .into_iter()
        .enumerate()
    {
        bad.push(proto::Entity {
            kind: proto::EntityKind::Application as i32,
            key: format!("argocd/not-an-object-{i}"),
            hash: vec![1; 32],
            json: json.as_bytes().to_vec(),
        });
    }
    bad.push(app_entity("fine"));
    tx.send(GatewayMessage {
        body: Some(gateway_message::Body::Delta(proto::Delta {
            seq: 9,
            entities: bad,
            oldest_change_age_ms: None,
        })),
    })
    .await
    .unwrap();
    ack(&mut stream).await;
    let mut names = apps(&hub, &id).await;
    names.sort();
    assert_eq!(names, vec!["fine".to_owned(), "from-session-two".to_owned()]);
    let (_, g) = api(
        &hub,
        reqwest::Method::GET,
        &format!("/api/v1/gateways/{}", id.gateway_id),
        None,
    )
    .await;
    assert_eq!(g["refused"]["count"], json!(3), "{g}");
    hub.shutdown().await;
}

#[tokio::test]
async fn an_oversized_snapshot_ends_the_session_on_both_sides_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&dir.path().join("hub"), |a| a.limits.max_state_bytes = 64 * 1024).await;
    let id = registered(&hub, &dir.path().join("id.json")).await;
    let (tx, mut stream) = welcomed(&hub, &id).await;
    let big: Vec<proto::Entity> = (0..200)
        .map(|i| app_entity(&format!("app-{i:04}-{}", "x".repeat(300))))
        .collect();
    tx.send(GatewayMessage {
        body: Some(gateway_message::Body::Snapshot(SnapshotChunk {
            seq: 1,
            index: 0,
            last: false,
            entities: big,
            digest: vec![],
        })),
    })
    .await
    .unwrap();
    let started = Instant::now();
    let ended = loop {
        match tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("the hub ends the session")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let Err(status) = ended else {
        panic!("an error status says why: {ended:?}")
    };
    assert!(status.message().contains("--max-state-bytes"), "{}", status.message());
    eprintln!(
        "the hub ended the session {:?} after the oversized snapshot",
        started.elapsed()
    );
    let (_, g) = api(
        &hub,
        reqwest::Method::GET,
        &format!("/api/v1/gateways/{}", id.gateway_id),
        None,
    )
    .await;
    assert_eq!(g["connected"], json!(false), "the hub shows it disconnected");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_are_closed_and_gateways_still_connect() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&dir.path().join("hub"), |a| {
        a.limits.handshake_timeout = Duration::from_secs(2);
        a.limits.http_header_timeout = Duration::from_secs(2);
    })
    .await;
    // 200 connections that finish TLS (no client certificate) and never send the HTTP/2
    // preface.
    let config = rustls::ClientConfig::builder_with_provider(argocd_gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(argocd_gateway::tls::accept_any())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut silent = vec![];
    for _ in 0..200 {
        let tcp = tokio::net::TcpStream::connect(hub.grpc_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        silent.push(connector.connect(name, tcp).await.expect("TLS completes"));
    }
    // 300 slowloris HTTP connections: headers that never end.
    let mut slow = vec![];
    for _ in 0..300 {
        let mut tcp = tokio::net::TcpStream::connect(hub.http_addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(tcp);
    }
    // A gateway still connects meanwhile.
    let id = registered(&hub, &dir.path().join("id.json")).await;
    let _session = welcomed(&hub, &id).await;
    let start = Instant::now();
    let mut open = 0;
    let mut buf = [0u8; 256];
    for conn in &mut silent {
        let left = (start + WAIT).saturating_duration_since(Instant::now());
        loop {
            match tokio::time::timeout(left, conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => {
                    open += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(open, 0, "every silent TLS connection was closed");
    let start = Instant::now();
    let mut open = 0;
    for conn in &mut slow {
        // Keep trickling: a slowloris client never stops sending a little.
        let _ = conn.write_all(b"X-a: b\r\n").await;
        let left = (start + WAIT).saturating_duration_since(Instant::now());
        loop {
            match tokio::time::timeout(left, conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => {
                    open += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(open, 0, "every slowloris connection was closed");
    let metrics = reqwest::get(format!("http://{}/metrics", hub.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("argocd_gateway_hub_connections_refused_total{reason=\"preface_timeout\"} 200"),
        "{metrics}"
    );
    hub.shutdown().await;
}

/// `VmRSS` of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unterminated_snapshots_do_not_accumulate_in_the_hub() {
    argocd_gateway::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The hub as its own process, so its memory is its own.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"))
        .args([
            "hub",
            "serve",
            "--data-dir",
            &dir.path().join("hub").display().to_string(),
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--hostname",
            "localhost",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let admin_path = dir.path().join("hub/admin-token");
    let started = Instant::now();
    while !admin_path.exists() || reqwest::get(format!("http://127.0.0.1:{http}/healthz")).await.is_err() {
        assert!(started.elapsed() < WAIT, "the hub process starts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = std::fs::read_to_string(&admin_path).unwrap().trim().to_owned();
    let tok: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/api/v1/registration-tokens"))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cfg = HubConfig {
        endpoint: HubEndpoint::parse(&format!("https://localhost:{grpc}"), false).unwrap(),
        pin: None,
        ca_fingerprint: Some(
            argocd_gateway::tls::Fingerprint::parse(tok["caFingerprint"].as_str().unwrap(), "test").unwrap(),
        ),
        connect_timeout: Duration::from_secs(5),
        transport: argocd_gateway::uplink::Transport::Auto,
        memory: Default::default(),
    };
    let args = RegistrationArgs {
        registration_token: Some(Secret::new(tok["token"].as_str().unwrap())),
        ..Default::default()
    };
    let id = register(&cfg, &[], &FileStore::new(dir.path().join("id.json")), &args)
        .await
        .unwrap();
    // 50 MiB per session: 50 chunks of 1 MiB (100 entities of ~10 KiB), never the last.
    let filler = "x".repeat(10 * 1024);
    let mut figures = vec![];
    for session in 0..10 {
        let channel = Dialer::new(&cfg, &[], Some(&id)).unwrap().connect().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello(&id, "i")).await.unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut()
            .insert(assertion::METADATA_KEY, signed(&id, Purpose::Tunnel).parse().unwrap());
        let mut stream = TunnelClient::new(channel).open(req).await.unwrap().into_inner();
        let _welcome = first_message(&mut stream).await;
        for index in 0..50u32 {
            let entities = (0..100)
                .map(|i| {
                    let name = format!("s{session}-c{index}-e{i}");
                    let json = json!({"namespace": "argocd", "name": name, "project": filler});
                    proto::Entity {
                        kind: proto::EntityKind::Application as i32,
                        key: format!("argocd/{name}"),
                        hash: vec![1; 32],
                        json: serde_json::to_vec(&json).unwrap(),
                    }
                })
                .collect();
            tx.send(GatewayMessage {
                body: Some(gateway_message::Body::Snapshot(SnapshotChunk {
                    seq: u64::from(index) + 1,
                    index,
                    last: false,
                    entities,
                    digest: vec![],
                })),
            })
            .await
            .unwrap();
            ack(&mut stream).await;
        }
        drop(tx);
        drop(stream);
        tokio::time::sleep(Duration::from_millis(300)).await;
        figures.push(rss_mib(pid));
    }
    let text: Vec<String> = figures.iter().map(|f| format!("{f:.0}")).collect();
    eprintln!(
        "hub RSS after each of 10 unterminated 50 MiB snapshots (MiB): {}",
        text.join(", ")
    );
    let early = figures[..3].iter().copied().fold(0.0, f64::max);
    let late = figures[7..].iter().copied().fold(0.0, f64::max);
    assert!(
        late <= early + 64.0,
        "the hub's memory grows with every abandoned snapshot: {}",
        text.join(", ")
    );
    let _ = child.kill().await;
}

#[tokio::test]
async fn a_gateway_without_deploy_actions_gets_no_request_it_would_misread() {
    // A gateway from before terminate, rollback and selective sync: its hello names no
    // capability. A subset sync sent to it would sync everything, so the hub refuses up front.
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&dir.path().join("hub"), |_| {}).await;
    let id = registered(&hub, &dir.path().join("id.json")).await;
    let (_tx, _stream) = welcomed(&hub, &id).await;
    let app = format!("/api/v1/gateways/{}/applications/argocd/shop", id.gateway_id);
    for (method, tail, body, what) in [
        (reqwest::Method::DELETE, "operation", None, "terminate an operation"),
        (reqwest::Method::POST, "rollback", Some(json!({"id": 1})), "roll back"),
        (
            reqwest::Method::POST,
            "sync",
            Some(json!({"resources": [{"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "shop"}]})),
            "sync a subset of resources",
        ),
        (reqwest::Method::POST, "sync", Some(json!({"force": true})), "force"),
        (
            reqwest::Method::POST,
            "sync",
            Some(json!({"syncOptions": ["Validate=false"]})),
            "sync options",
        ),
    ] {
        let (status, v) = api(&hub, method, &format!("{app}/{tail}"), body).await;
        assert_eq!(status, 501, "{tail}: {v}");
        assert_eq!(v["code"], "unsupported", "{v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(what), "{msg}");
        assert!(msg.contains("runs version test"), "{msg}");
        assert!(
            msg.contains("hub desired-version set") && msg.contains("image.tag"),
            "{msg}"
        );
    }
    hub.shutdown().await;
}
