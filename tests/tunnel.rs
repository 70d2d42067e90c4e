//! Tunnel integration tests: a real hub (TLS or plaintext, SQLite, HTTP API) and real gateways
//! in-process on 127.0.0.1:0, plus the binary run as processes where signals and restarts matter.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use argocd_gateway::hub::{self, Hub, ServeArgs};
use argocd_gateway::identity::store::{FileStore, IdentityStore};
use argocd_gateway::secret::Secret;
use argocd_gateway::tls::Fingerprint;
use argocd_gateway::tunnel::{RunConfig, RunError, TunnelStatus, run};
use argocd_gateway::uplink::config::{HubConfig, HubEndpoint};
use argocd_gateway::uplink::dial::{DialError, Dialer};
use argocd_gateway::uplink::register::{RegisterError, RegistrationArgs, register};
use argocd_gateway::uplink::trust::TrustFailure;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct TestHub {
    hub: Option<Hub>,
    dir: PathBuf,
    http: reqwest::Client,
    admin: String,
    plaintext: bool,
    ttl: Duration,
}

fn serve_args(dir: &Path, plaintext: bool, ttl: Duration, grpc_port: u16) -> ServeArgs {
    ServeArgs {
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        grpc_addr: format!("127.0.0.1:{grpc_port}").parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        plaintext,
        client_cert_ttl: ttl,
        health_check_interval: Duration::from_secs(60),
        ..ServeArgs::new(dir)
    }
}

impl TestHub {
    async fn start(dir: &Path, plaintext: bool, ttl: Duration) -> Self {
        argocd_gateway::tls::install_crypto_provider();
        let hub = hub::start(serve_args(dir, plaintext, ttl, 0))
            .await
            .expect("hub starts");
        let admin = std::fs::read_to_string(&hub.admin_token_path)
            .unwrap()
            .trim()
            .to_owned();
        Self {
            hub: Some(hub),
            dir: dir.to_owned(),
            http: reqwest::Client::new(),
            admin,
            plaintext,
            ttl,
        }
    }

    fn hub(&self) -> &Hub {
        self.hub.as_ref().expect("hub running")
    }

    /// Stops the hub (with drain) and starts it again on the same ports and data directory.
    async fn restart(&mut self) {
        let port = self.hub().grpc_addr.port();
        self.hub.take().unwrap().shutdown().await;
        self.hub = Some(
            hub::start(serve_args(&self.dir, self.plaintext, self.ttl, port))
                .await
                .expect("hub restarts"),
        );
    }

    fn grpc_url(&self) -> String {
        let scheme = if self.plaintext { "http" } else { "https" };
        format!("{scheme}://localhost:{}", self.hub().grpc_addr.port())
    }

    fn fingerprint(&self) -> Fingerprint {
        self.hub().ca_fingerprint.clone()
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.hub().http_addr))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }

    async fn token(&self, body: Value) -> Value {
        let (status, v) = self
            .api(reqwest::Method::POST, "/api/v1/registration-tokens", Some(body))
            .await;
        assert_eq!(status, 201, "{v}");
        v
    }

    async fn gateway(&self, id: &str) -> (u16, Value) {
        self.api(reqwest::Method::GET, &format!("/api/v1/gateways/{id}"), None)
            .await
    }

    async fn connected(&self, id: &str) -> bool {
        self.gateway(id).await.1["connected"] == json!(true)
    }
}

fn hub_config(url: &str, plaintext: bool, ca: Option<Fingerprint>, pin: Option<Fingerprint>) -> HubConfig {
    HubConfig {
        endpoint: HubEndpoint::parse(url, plaintext).unwrap(),
        pin,
        ca_fingerprint: ca,
        connect_timeout: Duration::from_secs(3),
        transport: argocd_gateway::uplink::Transport::Auto,
        memory: Default::default(),
    }
}

fn reg_args(token: Option<&str>) -> RegistrationArgs {
    RegistrationArgs {
        registration_token: token.map(Secret::new),
        name: Some("edge-1".into()),
        environments: vec!["prod".into(), "eu".into()],
        argocd_web_url: Some("https://argocd.example.com".into()),
        ..Default::default()
    }
}

fn run_config(hub: HubConfig, identity: &Path, token: Option<&str>) -> RunConfig {
    RunConfig {
        hub,
        extra_roots: vec![],
        store: Arc::new(FileStore::new(identity.to_owned())),
        registration: reg_args(token),
        keepalive_interval: Duration::from_millis(200),
        keepalive_max_failures: 10,
        max_answer_bytes: 64 * 1024 * 1024,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        healthy_after: Duration::from_secs(60),
        drain_grace: Duration::from_secs(2),
        renew_retry: Duration::from_millis(500),
        protocol_version: argocd_gateway::wire::PROTOCOL_VERSION,
    }
}

struct Gw {
    task: tokio::task::JoinHandle<Result<(), RunError>>,
    status: watch::Receiver<TunnelStatus>,
    stop: CancellationToken,
}

fn spawn_gateway(cfg: RunConfig) -> Gw {
    let (tx, status) = watch::channel(TunnelStatus::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(cfg, stop.clone(), tx, Default::default()));
    Gw { task, status, stop }
}

impl Gw {
    async fn wait_connected(&mut self) -> String {
        let st = tokio::time::timeout(WAIT, self.status.wait_for(|s| s.connected))
            .await
            .expect("connects in time")
            .unwrap();
        st.gateway_id.clone().unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .unwrap()
            .expect("clean stop");
    }
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn registers_then_restarts_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(&dir.path().join("hub"), false, Duration::from_secs(3600)).await;
    let tok = hub
        .token(json!({"name": "from-token", "environments": ["staging"]}))
        .await;
    assert_eq!(tok["caFingerprint"], json!(hub.fingerprint().to_string()));
    let helm = tok["helmCommand"].as_str().unwrap();
    for part in [
        "helm upgrade --install",
        "gateway.hub.serverGrpcUrl=https://localhost:",
        "registration.caFingerprint=sha256:",
    ] {
        assert!(helm.contains(part), "{helm}");
    }
    assert!(helm.contains(tok["token"].as_str().unwrap()) && helm.contains("registration.name=from-token"));
    assert!(helm.contains("registration.environments={staging}"), "{helm}");
    let id_path = dir.path().join("identity.json");
    let cfg = run_config(
        hub_config(&hub.grpc_url(), false, Some(hub.fingerprint()), None),
        &id_path,
        tok["token"].as_str(),
    );

    let mut gw = spawn_gateway(cfg.clone());
    let id = gw.wait_connected().await;
    let (_, g) = hub.gateway(&id).await;
    assert_eq!(g["name"], "edge-1");
    assert_eq!(g["environments"], json!(["prod", "eu"]));
    assert_eq!(g["connected"], json!(true));
    assert_eq!(g["protocolVersion"], json!(argocd_gateway::wire::PROTOCOL_VERSION));
    assert_eq!(g["version"], json!(argocd_gateway::VERSION));
    assert!(g["certificateExpiresAt"].as_str().unwrap().ends_with('Z'));
    gw.stop().await;
    eventually("hub sees the goodbye", || async { !hub.connected(&id).await }).await;

    // The key never left the gateway and the file is private.
    let stored: Value = serde_json::from_slice(&std::fs::read(&id_path).unwrap()).unwrap();
    assert!(stored["keyPem"].as_str().unwrap().contains("PRIVATE KEY"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&id_path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // A restart reuses the identity: no token needed, same gateway id, no new gateway.
    let mut cfg2 = run_config(hub_config(&hub.grpc_url(), false, None, None), &id_path, None);
    cfg2.hub.ca_fingerprint = None;
    let mut gw2 = spawn_gateway(cfg2);
    assert_eq!(gw2.wait_connected().await, id);
    let (_, list) = hub.api(reqwest::Method::GET, "/api/v1/gateways", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, tokens) = hub.api(reqwest::Method::GET, "/api/v1/registration-tokens", None).await;
    let t = &tokens["items"][0];
    assert_eq!(t["state"], "used");
    assert_eq!(t["gatewayId"], json!(id));
    assert!(t.get("token").is_none() && !tokens.to_string().contains(tok["token"].as_str().unwrap()));
    gw2.stop().await;
}

#[tokio::test]
async fn token_errors_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(&dir.path().join("hub"), false, Duration::from_secs(3600)).await;
    let cfg = hub_config(&hub.grpc_url(), false, Some(hub.fingerprint()), None);
    let reg = |path: PathBuf, token: String| {
        let cfg = cfg.clone();
        async move { register(&cfg, &[], &FileStore::new(path), &reg_args(Some(&token))).await }
    };

    let tok = hub.token(json!({})).await["token"].as_str().unwrap().to_owned();
    let (id, secret) = tok.split_once('.').unwrap();
    let err = reg(dir.path().join("a"), format!("{id}.{}x", secret))
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::TokenUnknown), "{err}");
    let err = reg(dir.path().join("a"), "garbage".into()).await.unwrap_err();
    assert!(matches!(err, RegisterError::TokenUnknown), "{err}");
    assert!(err.to_string().contains("registration.token") && err.to_string().contains("--registration-token-file"));

    reg(dir.path().join("b"), tok.clone()).await.expect("first use works");
    let err = reg(dir.path().join("c"), tok.clone()).await.unwrap_err();
    assert!(matches!(err, RegisterError::TokenUsed), "{err}");
    assert!(err.to_string().contains("single-use") && err.to_string().contains("registration.token"));

    let short = hub.token(json!({"ttlSeconds": 1})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = reg(dir.path().join("d"), short).await.unwrap_err();
    assert!(matches!(err, RegisterError::TokenExpired), "{err}");
    assert!(err.to_string().contains("expired") && err.to_string().contains("registration.token"));

    let revoked = hub.token(json!({})).await;
    let (status, _) = hub
        .api(
            reqwest::Method::DELETE,
            &format!("/api/v1/registration-tokens/{}", revoked["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let err = reg(dir.path().join("e"), revoked["token"].as_str().unwrap().into())
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::TokenUnknown), "{err}");

    let err = register(&cfg, &[], &FileStore::new(dir.path().join("f")), &reg_args(None))
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::NoToken { .. }), "{err}");

    // TTL limits and auth on the API.
    let (status, v) = hub
        .api(
            reqwest::Method::POST,
            "/api/v1/registration-tokens",
            Some(json!({"ttlSeconds": 90000})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let resp = hub
        .http
        .get(format!("http://{}/api/v1/gateways", hub.hub().http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn trust_failures_show_both_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(&dir.path().join("hub"), false, Duration::from_secs(3600)).await;
    let wrong = Fingerprint::parse(&"ab".repeat(32), "test").unwrap();

    let err = Dialer::new(
        &hub_config(&hub.grpc_url(), false, Some(wrong.clone()), None),
        &[],
        None,
    )
    .unwrap()
    .connect()
    .await
    .unwrap_err();
    match &err {
        DialError::Trust(TrustFailure::CaFingerprintMismatch { expected, presented }) => {
            assert_eq!(expected, &wrong);
            assert!(presented.contains(&hub.fingerprint()));
        }
        other => panic!("expected a CA fingerprint mismatch, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&wrong.to_string())
            && text.contains(&hub.fingerprint().to_string())
            && text.contains("registration.caFingerprint")
    );

    let err = Dialer::new(
        &hub_config(&hub.grpc_url(), false, None, Some(wrong.clone())),
        &[],
        None,
    )
    .unwrap()
    .connect()
    .await
    .unwrap_err();
    let DialError::Trust(TrustFailure::PinMismatch { expected, actual }) = &err else {
        panic!("expected a pin mismatch, got {err}")
    };
    assert_eq!(expected, &wrong);
    assert!(err.to_string().contains(&actual.to_string()) && err.to_string().contains("gateway.hub.serverThumbprint"));

    // The right pin alone is enough, without any chain.
    let chain = std::fs::read_to_string(dir.path().join("hub/server.pem")).unwrap();
    let leaf = argocd_gateway::certs::first_cert_der(&chain).unwrap();
    Dialer::new(
        &hub_config(&hub.grpc_url(), false, None, Some(Fingerprint::of(&leaf))),
        &[],
        None,
    )
    .unwrap()
    .connect()
    .await
    .expect("pinned leaf is trusted");

    // Nothing vouches for the hub: say what to configure.
    let err = Dialer::new(&hub_config(&hub.grpc_url(), false, None, None), &[], None)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::Trust(TrustFailure::Untrusted { .. })), "{err}");
    assert!(err.to_string().contains("--hub-ca-fingerprint") && err.to_string().contains("--trust-ca"));

    // --trust-ca with the hub CA also works.
    let ca = argocd_gateway::certs::first_cert_der(&hub.hub().ca_pem).unwrap();
    Dialer::new(&hub_config(&hub.grpc_url(), false, None, None), &[ca], None)
        .unwrap()
        .connect()
        .await
        .expect("trusted CA");
}

#[tokio::test]
async fn plaintext_and_tls_mismatches_and_dns_are_diagnosed() {
    let dir = tempfile::tempdir().unwrap();
    let tls_hub = TestHub::start(&dir.path().join("tls"), false, Duration::from_secs(3600)).await;
    let plain_hub = TestHub::start(&dir.path().join("plain"), true, Duration::from_secs(3600)).await;

    let url = format!("http://127.0.0.1:{}", tls_hub.hub().grpc_addr.port());
    let err = Dialer::new(&hub_config(&url, true, None, None), &[], None)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::UnexpectedTls { .. }), "{err}");
    assert!(err.to_string().contains("gateway.hub.plaintext=false"));

    let url = format!("https://127.0.0.1:{}", plain_hub.hub().grpc_addr.port());
    let err = Dialer::new(&hub_config(&url, false, None, None), &[], None)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::NotTls { .. }), "{err}");
    assert!(err.to_string().contains("gateway.hub.plaintext=true"));

    let err = Dialer::new(
        &hub_config("https://no-such-host.invalid:8443", false, None, None),
        &[],
        None,
    )
    .unwrap()
    .connect()
    .await
    .unwrap_err();
    assert!(matches!(err, DialError::Dns { .. }), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Dialer::new(
        &hub_config(&format!("127.0.0.1:{closed}"), false, None, None),
        &[],
        None,
    )
    .unwrap()
    .connect()
    .await
    .unwrap_err();
    assert!(matches!(err, DialError::Tcp { .. }), "{err}");
}

#[tokio::test]
async fn revocation_closes_the_live_session_and_does_not_hot_loop() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(&dir.path().join("hub"), false, Duration::from_secs(3600)).await;
    let tok = hub.token(json!({})).await;
    let id_path = dir.path().join("identity.json");
    let mut gw = spawn_gateway(run_config(
        hub_config(&hub.grpc_url(), false, Some(hub.fingerprint()), None),
        &id_path,
        tok["token"].as_str(),
    ));
    let id = gw.wait_connected().await;
    let reconnects_before = gw.status.borrow().reconnects;

    let (status, _) = hub
        .api(reqwest::Method::DELETE, &format!("/api/v1/gateways/{id}"), None)
        .await;
    assert_eq!(status, 204);
    tokio::time::timeout(Duration::from_secs(1), gw.status.wait_for(|s| !s.connected))
        .await
        .expect("the live session closes within a second")
        .unwrap();
    eventually("the revoked identity is forgotten", || async { !id_path.exists() }).await;
    assert!(
        gw.status
            .borrow()
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("revoked")
    );
    assert_eq!(hub.gateway(&id).await.0, 404);

    // The gateway now waits the full backoff before trying again instead of hammering the hub.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.status.borrow().reconnects, reconnects_before + 1);
    assert!(!gw.status.borrow().connected);
    gw.stop().await;
}

#[tokio::test]
async fn certificate_renews_before_two_thirds_of_its_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(&dir.path().join("hub"), false, Duration::from_secs(8)).await;
    let tok = hub.token(json!({})).await;
    let id_path = dir.path().join("identity.json");
    let mut gw = spawn_gateway(run_config(
        hub_config(&hub.grpc_url(), false, Some(hub.fingerprint()), None),
        &id_path,
        tok["token"].as_str(),
    ));
    let id = gw.wait_connected().await;
    let store = FileStore::new(id_path.clone());
    let first = store.load().await.unwrap().unwrap();
    let first_info = first.cert_info().unwrap();
    let session = gw.status.borrow().session_id.clone();

    eventually("the certificate is renewed", || {
        let store = store.clone();
        let old = first.cert_pem.clone();
        async move { store.load().await.unwrap().is_some_and(|i| i.cert_pem != old) }
    })
    .await;
    let renewed = store.load().await.unwrap().unwrap();
    let info = renewed.cert_info().unwrap();
    assert!(
        jiff::Timestamp::now() < first_info.renew_deadline(),
        "renewed before two thirds of the lifetime"
    );
    assert!(info.not_after > first_info.not_after);
    assert_ne!(
        renewed.key_pem.expose(),
        first.key_pem.expose(),
        "renewal rotates the key"
    );
    assert_eq!(gw.status.borrow().session_id, session, "the session survives renewal");
    assert!(hub.connected(&id).await);
    let (_, g) = hub.gateway(&id).await;
    assert_eq!(g["certificateExpiresAt"], json!(info.not_after.to_string()));

    // The renewed certificate authenticates a fresh session.
    gw.stop().await;
    let mut gw2 = spawn_gateway(run_config(
        hub_config(&hub.grpc_url(), false, None, None),
        &id_path,
        None,
    ));
    assert_eq!(gw2.wait_connected().await, id);
    gw2.stop().await;
}

#[tokio::test]
async fn hub_restart_drains_and_gateway_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = TestHub::start(&dir.path().join("hub"), false, Duration::from_secs(3600)).await;
    let tok = hub.token(json!({})).await;
    let mut gw = spawn_gateway(run_config(
        hub_config(&hub.grpc_url(), false, Some(hub.fingerprint()), None),
        &dir.path().join("identity.json"),
        tok["token"].as_str(),
    ));
    let id = gw.wait_connected().await;
    let first_session = gw.status.borrow().session_id.clone();
    hub.restart().await;
    tokio::time::timeout(
        WAIT,
        gw.status.wait_for(|s| s.connected && s.session_id != first_session),
    )
    .await
    .expect("reconnects after the hub restart")
    .unwrap();
    eventually("the restarted hub shows the gateway connected", || async {
        hub.connected(&id).await
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn proxy_terminated_plaintext_hub_authenticates_by_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(&dir.path().join("hub"), true, Duration::from_secs(3600)).await;
    let tok = hub.token(json!({"name": "behind-proxy"})).await;
    let helm = tok["helmCommand"].as_str().unwrap();
    assert!(
        helm.contains("gateway.hub.plaintext=true") && !helm.contains("caFingerprint"),
        "{helm}"
    );
    let id_path = dir.path().join("identity.json");
    let mut gw = spawn_gateway(run_config(
        hub_config(&hub.grpc_url(), true, None, None),
        &id_path,
        tok["token"].as_str(),
    ));
    let id = gw.wait_connected().await;
    assert!(hub.connected(&id).await);

    // Without TLS the assertion is all there is: a stream without one is refused...
    let channel = Dialer::new(&hub_config(&hub.grpc_url(), true, None, None), &[], None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(tx);
    let err = argocd_gateway::wire::proto::tunnel_client::TunnelClient::new(channel.clone())
        .open(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // ...and one signed by another key for this gateway's certificate is refused too.
    let identity = FileStore::new(id_path).load().await.unwrap().unwrap();
    let other_key = argocd_gateway::certs::generate_key().unwrap();
    let forged = argocd_gateway::wire::assertion::sign(
        &other_key,
        &id,
        &identity.cert_info().unwrap(),
        argocd_gateway::wire::assertion::Purpose::Renew,
        jiff::Timestamp::now().as_second(),
    )
    .unwrap();
    let mut req = tonic::Request::new(argocd_gateway::wire::proto::RenewRequest {
        csr_pem: argocd_gateway::certs::csr_pem(&other_key, "x").unwrap(),
    });
    req.metadata_mut()
        .insert(argocd_gateway::wire::assertion::METADATA_KEY, forged.parse().unwrap());
    let err = argocd_gateway::wire::proto::registration_client::RegistrationClient::new(channel)
        .renew(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    gw.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_gets_an_upgrade_message() {
    use argocd_gateway::wire::assertion::{self, Purpose};
    use argocd_gateway::wire::proto::{GatewayMessage, Hello, gateway_message, hub_message, rejected};
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(&dir.path().join("hub"), false, Duration::from_secs(3600)).await;
    let tok = hub.token(json!({})).await;
    let cfg = hub_config(&hub.grpc_url(), false, Some(hub.fingerprint()), None);
    let store = FileStore::new(dir.path().join("identity.json"));
    let identity = register(&cfg, &[], &store, &reg_args(tok["token"].as_str()))
        .await
        .unwrap();
    for (version, hint) in [(99, "upgrade the hub"), (0, "upgrade the gateway")] {
        let channel = Dialer::new(&cfg, &[], Some(&identity))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(GatewayMessage {
            body: Some(gateway_message::Body::Hello(Hello {
                gateway_id: identity.gateway_id.clone(),
                gateway_version: "9.9.9".into(),
                protocol_version: version,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let token = assertion::sign(
            &identity.key().unwrap(),
            &identity.gateway_id,
            &identity.cert_info().unwrap(),
            Purpose::Tunnel,
            jiff::Timestamp::now().as_second(),
        )
        .unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut()
            .insert(assertion::METADATA_KEY, token.parse().unwrap());
        let mut stream = argocd_gateway::wire::proto::tunnel_client::TunnelClient::new(channel)
            .open(req)
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let Some(hub_message::Body::Rejected(r)) = first.body else {
            panic!("expected a rejection, got {first:?}")
        };
        assert_eq!(r.reason, rejected::Reason::UnsupportedProtocol as i32);
        assert!(r.message.contains(hint), "{}", r.message);
    }
}

/// A stand-in hub that welcomes and then never answers keepalives, like a load balancer that
/// black-holes a connection it still holds open. Built on the wire contract only.
mod silent_hub {
    use argocd_gateway::wire::proto::tunnel_server::{Tunnel, TunnelServer};
    use argocd_gateway::wire::proto::{GatewayMessage, HubMessage, Welcome, hub_message};
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};

    pub struct Silent;

    #[tonic::async_trait]
    impl Tunnel for Silent {
        type OpenStream = ReceiverStream<Result<HubMessage, Status>>;
        async fn open(
            &self,
            request: Request<Streaming<GatewayMessage>>,
        ) -> Result<Response<Self::OpenStream>, Status> {
            let mut inbound = request.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(Ok(HubMessage {
                body: Some(hub_message::Body::Welcome(Welcome {
                    session_id: "silent".into(),
                    protocol_version: 1,
                    hub_version: "test".into(),
                    ..Default::default()
                })),
            }))
            .await
            .unwrap();
            tokio::spawn(async move {
                // Read and drop everything; keep the sender alive so the stream stays open.
                while let Ok(Some(_)) = inbound.message().await {}
                drop(tx);
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    pub async fn start() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(TunnelServer::new(Silent))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }
}

#[tokio::test]
async fn keepalive_failures_end_the_run_with_an_error() {
    argocd_gateway::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = argocd_gateway::certs::CertAuthority::generate("test").unwrap();
    let key = argocd_gateway::certs::generate_key().unwrap();
    let cert = ca
        .sign_client_csr(
            &argocd_gateway::certs::csr_pem(&key, "x").unwrap(),
            "gw-silent",
            Duration::from_secs(3600),
        )
        .unwrap();
    let id_path = dir.path().join("identity.json");
    FileStore::new(id_path.clone())
        .create(&argocd_gateway::identity::Identity {
            gateway_id: "gw-silent".into(),
            name: "silent".into(),
            environments: vec![],
            hub_url: String::new(),
            key_pem: Secret::new(key.serialize_pem()),
            cert_pem: cert.pem,
            ca_pem: ca.cert_pem().to_owned(),
        })
        .await
        .unwrap();
    let addr = silent_hub::start().await;
    let mut cfg = run_config(hub_config(&format!("http://{addr}"), true, None, None), &id_path, None);
    cfg.keepalive_interval = Duration::from_millis(100);
    cfg.keepalive_max_failures = 3;
    let gw = spawn_gateway(cfg);
    let result = tokio::time::timeout(WAIT, gw.task)
        .await
        .expect("gives up in time")
        .unwrap();
    let err = result.expect_err("keepalive exhaustion is an error");
    assert!(matches!(err, RunError::KeepaliveFailed { failures: 3, .. }), "{err}");
    assert!(err.to_string().contains("gateway.hub.keepAlive"));
}

/// The binary, run as separate processes: signals, a killed hub, and what reaches the logs.
mod processes {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::Value;

    const BIN: &str = env!("CARGO_BIN_EXE_argocd-gateway");

    struct Proc {
        child: Child,
        log: std::path::PathBuf,
    }

    impl Proc {
        fn spawn(args: &[&str], log: std::path::PathBuf, cwd: &std::path::Path) -> Self {
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let child = Command::new(BIN)
                .args(args)
                .current_dir(cwd)
                .env_remove("HTTPS_PROXY")
                .env_remove("https_proxy")
                .env("RUST_LOG", "debug")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("binary starts");
            Self { child, log }
        }

        fn signal(&self, sig: &str) {
            let status = Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }

        fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
            let deadline = Instant::now() + within;
            loop {
                if let Some(s) = self.child.try_wait().unwrap() {
                    return s;
                }
                assert!(Instant::now() < deadline, "process did not exit; log:\n{}", self.text());
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn text(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        /// Waits for a log line containing `needle` and returns the text after it.
        fn wait_for(&self, needle: &str) -> String {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let text = self.text();
                if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                    return line[line.find(needle).unwrap() + needle.len()..].to_owned();
                }
                assert!(Instant::now() < deadline, "no {needle:?} in log:\n{text}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_hub(dir: &std::path::Path, grpc_port: u16, n: usize) -> (Proc, u16, String) {
        let grpc = format!("127.0.0.1:{grpc_port}");
        let hub = Proc::spawn(
            &[
                "--debug",
                "hub",
                "serve",
                "--data-dir",
                "hub-data",
                "--grpc-addr",
                &grpc,
                "--http-addr",
                "127.0.0.1:0",
            ],
            dir.join(format!("hub-{n}.log")),
            dir,
        );
        let port: u16 = hub
            .wait_for("hub gRPC listening on 127.0.0.1:")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let api = hub.wait_for("hub API listening on ").trim().to_owned();
        (hub, port, api)
    }

    /// `hub gateways -o json`, through the CLI as a user would call it.
    fn gateways(api: &str, token: &str) -> Option<Value> {
        let out = Command::new(BIN)
            .args([
                "hub",
                "gateways",
                "--hub-api",
                api,
                "--admin-token",
                token,
                "-o",
                "json",
            ])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn connected(api: &str, token: &str) -> bool {
        gateways(api, token).is_some_and(|v| {
            v["items"]
                .as_array()
                .is_some_and(|a| a.iter().any(|g| g["connected"] == Value::Bool(true)))
        })
    }

    fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < within {
            if f() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("not within {within:?}: {what}");
    }

    /// Makes the listening socket on `port` of process `pid` fail as a dying network stack
    /// would: a duplicate of its descriptor is taken with `pidfd_getfd` and shut down, so the
    /// process's next `accept` fails with EINVAL.
    fn break_listener(pid: u32, port: u16) {
        let inode = ["tcp", "tcp6"]
            .iter()
            .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
            .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .find_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let local_port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
                (local_port == port && cols.get(3) == Some(&"0A")).then(|| cols.get(9).map(|s| s.to_string()))?
            })
            .expect("the listening socket is in /proc/PID/net/tcp");
        let target = format!("socket:[{inode}]");
        let fd: i32 = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == target))
            .and_then(|e| e.file_name().to_string_lossy().parse().ok())
            .expect("the listener's descriptor is in /proc/PID/fd");
        // SAFETY: plain syscalls on descriptors this test owns; every result is checked.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as libc::c_int;
            assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
            let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as libc::c_int;
            assert!(dup >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
            assert_eq!(libc::shutdown(dup, libc::SHUT_RDWR), 0);
            libc::close(dup);
            libc::close(pidfd);
        }
    }

    /// A gateway process registered with the hub at `port`, in front of a simulated Argo CD
    /// that lives in this process (the returned runtime keeps it running). Also returns the
    /// registration token's JSON.
    fn start_gateway(d: &std::path::Path, port: u16, api: &str) -> (Proc, Value, tokio::runtime::Runtime) {
        let created = Command::new(BIN)
            .args([
                "hub",
                "token",
                "create",
                "--hub-api",
                api,
                "--admin-token-file",
                "hub-data/admin-token",
                "-o",
                "json",
            ])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
        let tok: Value = serde_json::from_slice(&created.stdout).unwrap();
        let token = tok["token"].as_str().unwrap().to_owned();
        std::fs::write(d.join("token"), &token).unwrap();

        // The gateway needs an Argo CD: a simulator served by a runtime that lives as long as
        // this test, in this process.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let sim = rt
            .block_on(argocd_gateway::simulator::Simulator::start(
                argocd_gateway::simulator::SimOptions {
                    tls: argocd_gateway::simulator::SimTls::Plaintext,
                    ..Default::default()
                },
            ))
            .unwrap();
        sim.add_synthetic_apps(3);
        std::fs::write(
            d.join("argocd-token"),
            sim.add_token(argocd_gateway::simulator::TokenSpec::account("gateway")),
        )
        .unwrap();
        let sim_url = sim.url();

        let hub_url = format!("https://localhost:{port}");
        let gw_args = [
            "--debug",
            "run",
            "--argocd-server",
            &sim_url,
            "--argocd-plaintext",
            "--argocd-token-file",
            "argocd-token",
            "--admin-addr",
            "127.0.0.1:0",
            "--hub-url",
            &hub_url,
            "--hub-ca-fingerprint",
            tok["caFingerprint"].as_str().unwrap(),
            "--registration-token-file",
            "token",
            "--identity",
            "file:identity.json",
            "--keepalive-interval",
            "1",
        ];
        let gw = Proc::spawn(&gw_args, d.join("gateway.log"), d);
        (gw, tok, rt)
    }

    #[test]
    fn a_server_whose_listener_fails_ends_the_process_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (mut hub, _, api) = start_hub(d, 0, 1);
        let http_port: u16 = api.rsplit(':').next().unwrap().parse().unwrap();
        break_listener(hub.child.id(), http_port);
        let status = hub.wait_exit(Duration::from_secs(30));
        assert!(!status.success(), "the hub exits non-zero: {status:?}");
        let log = hub.text();
        assert!(
            log.contains("hub HTTP listener stopped unexpectedly"),
            "the message names the failed part:\n{log}"
        );

        // The gateway's admin server, likewise.
        let (mut hub, port, api) = start_hub(d, 0, 2);
        let (mut gw, _, _rt) = start_gateway(d, port, &api);
        let line = gw.wait_for("admin server listening");
        let admin: std::net::SocketAddr = line
            .rfind("127.0.0.1:")
            .and_then(|i| line[i..].split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("the admin address is logged: {line:?}"));
        break_listener(gw.child.id(), admin.port());
        let status = gw.wait_exit(Duration::from_secs(30));
        assert!(!status.success(), "the gateway exits non-zero: {status:?}");
        let log = gw.text();
        assert!(
            log.contains("admin listener stopped unexpectedly"),
            "the message names the failed part:\n{log}"
        );
        hub.signal("-TERM");
        hub.wait_exit(Duration::from_secs(10));
    }

    #[test]
    fn after_a_long_flapping_period_the_gateway_rejoins_a_restarted_hub_within_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (mut hub, port, api) = start_hub(d, 0, 0);
        let admin = std::fs::read_to_string(d.join("hub-data/admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        let (gw, _, _rt) = start_gateway(d, port, &api);
        gw.wait_for("connected to hub");
        // The hub flaps: killed and restarted over and over, so sessions are short and lost, which
        // grows the gateway's backoff towards its ceiling.
        for n in 1..=15 {
            hub.child.kill().unwrap();
            hub.wait_exit(Duration::from_secs(5));
            let (h, _, _) = start_hub(d, port, n);
            hub = h;
            std::thread::sleep(Duration::from_millis(300));
        }
        // Then it is down for a while, and comes back for good.
        hub.child.kill().unwrap();
        hub.wait_exit(Duration::from_secs(5));
        std::thread::sleep(Duration::from_secs(3));
        let (mut hub, _, api) = start_hub(d, port, 99);
        let took = wait_until("the gateway rejoins the restarted hub", Duration::from_secs(5), || {
            connected(&api, &admin)
        });
        eprintln!("rejoined {took:?} after the hub came back from a flapping period");
        hub.signal("-TERM");
        hub.wait_exit(Duration::from_secs(10));
    }

    #[test]
    fn killed_hub_restart_sigterm_goodbye_and_clean_logs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (mut hub, port, api) = start_hub(d, 0, 1);
        let admin = std::fs::read_to_string(d.join("hub-data/admin-token"))
            .unwrap()
            .trim()
            .to_owned();

        let (mut gw, tok, _rt) = start_gateway(d, port, &api);
        let token = tok["token"].as_str().unwrap().to_owned();
        gw.wait_for("connected to hub");
        wait_until("hub shows the gateway", Duration::from_secs(10), || {
            connected(&api, &admin)
        });

        // Kill the hub without a drain, restart it on the same port: back within 5 s.
        hub.child.kill().unwrap();
        hub.wait_exit(Duration::from_secs(5));
        let (mut hub2, port2, api2) = start_hub(d, port, 2);
        assert_eq!(port2, port);
        let took = wait_until(
            "gateway reconnects to the restarted hub",
            Duration::from_secs(5),
            || connected(&api2, &admin),
        );
        eprintln!("reconnected {took:?} after the hub restarted");

        // SIGTERM: goodbye, exit 0, and the hub shows it disconnected at once.
        gw.signal("-TERM");
        let status = gw.wait_exit(Duration::from_secs(7));
        assert!(status.success(), "gateway exit {status:?}\n{}", gw.text());
        wait_until("hub marks the gateway disconnected", Duration::from_secs(1), || {
            !connected(&api2, &admin)
        });
        assert!(hub2.text().contains("gateway said goodbye"));

        hub2.signal("-TERM");
        assert!(hub2.wait_exit(Duration::from_secs(10)).success());

        // Debug logs carry no token, key or certificate body.
        let identity: Value = serde_json::from_slice(&std::fs::read(d.join("identity.json")).unwrap()).unwrap();
        let mut secrets = vec![
            token.clone(),
            token.split_once('.').unwrap().1.to_owned(),
            admin.clone(),
            std::fs::read_to_string(d.join("argocd-token")).unwrap(),
        ];
        for pem in ["keyPem", "certPem"] {
            secrets.extend(
                identity[pem]
                    .as_str()
                    .unwrap()
                    .lines()
                    .filter(|l| !l.starts_with("-----") && l.len() > 20)
                    .map(str::to_owned),
            );
        }
        for f in ["hub-data/ca-key.pem", "hub-data/server-key.pem"] {
            secrets.extend(
                std::fs::read_to_string(d.join(f))
                    .unwrap()
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_owned),
            );
        }
        let logs = [gw.text(), hub.text(), hub2.text()];
        assert!(logs[0].contains("DEBUG"), "logs were captured at debug level");
        for log in &logs {
            assert!(!log.contains("PRIVATE KEY") && !log.contains("BEGIN CERTIFICATE"));
            for s in &secrets {
                assert!(!log.contains(s.as_str()), "a secret reached the logs");
            }
        }
    }
}
