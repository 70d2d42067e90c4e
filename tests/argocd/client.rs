//! The client against the simulator: TLS modes and mismatches, tokens, errors, every call.

use std::time::Duration;

use argocd_gateway::argocd::model::{HealthStatusCode, OperationPhase, WatchEventType};
use argocd_gateway::argocd::{AppQuery, AppRef, ArgoCdError, LogsRequest, Refresh, ResourceRef, SyncRequest};
use argocd_gateway::simulator::{SimOptions, SimTls, TokenSpec};
use futures_util::StreamExt;

use crate::common::{Mode, eventually, start, start_with, within};

/// Starts opening a watch from `rv` and returns once the simulator has it: argocd-server sends a
/// watch's headers only with its first event, so the open completes after the next change.
async fn open_watch(
    env: &crate::common::Env,
    c: &argocd_gateway::argocd::Client,
    rv: &str,
) -> tokio::task::JoinHandle<Result<argocd_gateway::argocd::AppWatch, ArgoCdError>> {
    let watches = || {
        env.sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/stream/applications"))
            .count()
    };
    let before = watches();
    let (c, rv) = (c.clone(), rv.to_owned());
    let task = tokio::spawn(async move { c.watch_applications(&AppQuery::default(), Some(&rv)).await });
    eventually("watch request reached the simulator", || watches() > before).await;
    task
}

#[tokio::test]
async fn each_tls_mode_works() {
    let tls = start(SimTls::SelfSigned, "v3.5.1").await;
    let plain = start(SimTls::Plaintext, "v3.5.1").await;
    for (env, mode) in [
        (&tls, Mode::VerifyWithCa),
        (&tls, Mode::Insecure),
        (&plain, Mode::Plaintext),
    ] {
        env.sim.add_synthetic_apps(2);
        let c = env.client(mode, &[]);
        let v = within(c.version()).await.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(v.version, "v3.5.1");
        assert_eq!(v.major(), Some(3));
        let list = within(c.list_applications(&AppQuery::default())).await.expect("list");
        assert!(!list.items.is_empty(), "{mode:?}");
    }
}

#[tokio::test]
async fn unknown_authority_names_the_fix() {
    let env = start(SimTls::SelfSigned, "v3.5.1").await;
    let err = within(env.client(Mode::VerifyNoCa, &[]).version())
        .await
        .expect_err("must fail");
    assert!(matches!(err, ArgoCdError::UnknownAuthority { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("--trust-ca") && msg.contains("gateway.argocd.insecure=true"),
        "{msg}"
    );
}

#[tokio::test]
async fn tls_against_plaintext_names_the_fix() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    // Point a TLS client at the plaintext server (https:// URL, default verify mode).
    let url = env.sim.url().replacen("http://", "https://", 1);
    let args = crate::common::parse_args(&[
        "--argocd-server".into(),
        url,
        "--argocd-token-file".into(),
        env.token_path.display().to_string(),
    ]);
    let cfg = argocd_gateway::argocd::ArgoCdConfig::from_args(&args, vec![]).expect("config");
    let c = argocd_gateway::argocd::Client::with_retry(cfg, crate::common::fast_retry()).expect("client");
    let err = within(c.version()).await.expect_err("must fail");
    assert!(matches!(err, ArgoCdError::TlsAgainstPlaintext { .. }), "{err:?}");
    assert!(err.to_string().contains("set gateway.argocd.plaintext=true"), "{err}");
}

#[tokio::test]
async fn plaintext_against_tls_sees_the_redirect() {
    let env = start(SimTls::SelfSigned, "v3.5.1").await;
    let err = within(env.client(Mode::Plaintext, &[]).version())
        .await
        .expect_err("must fail");
    assert!(matches!(err, ArgoCdError::PlaintextAgainstTls { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("unset gateway.argocd.plaintext") && msg.contains("307"),
        "{msg}"
    );
}

#[tokio::test]
async fn config_errors_name_flags_and_helm_values() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    let args = crate::common::parse_args(&[
        "--argocd-server".into(),
        env.sim.url(),
        "--argocd-token-file".into(),
        "/x".into(),
    ]);
    let err = argocd_gateway::argocd::ArgoCdConfig::from_args(&args, vec![]).expect_err("http without plaintext");
    assert!(
        err.to_string().contains("--argocd-plaintext") && err.to_string().contains("gateway.argocd.plaintext=true")
    );
    let args = crate::common::parse_args(&[
        "--argocd-insecure".into(),
        "--argocd-plaintext".into(),
        "--argocd-token-file".into(),
        "/x".into(),
    ]);
    let err = argocd_gateway::argocd::ArgoCdConfig::from_args(&args, vec![]).expect_err("both");
    assert!(err.to_string().contains("gateway.argocd.insecure") && err.to_string().contains("--argocd-plaintext"));
}

#[tokio::test]
async fn root_path_user_agent_and_http11() {
    let env = start_with(SimOptions {
        tls: SimTls::SelfSigned,
        root_path: "/argo-cd".into(),
        ..SimOptions::default()
    })
    .await;
    assert!(env.sim.url().ends_with("/argo-cd"));
    env.sim.add_synthetic_apps(1);
    let c = env.client(Mode::VerifyWithCa, &[]);
    within(c.list_applications(&AppQuery::default()))
        .await
        .expect("list under root path");
    let reqs = env.sim.requests();
    let r = reqs.last().expect("a request");
    assert_eq!(r.path, "/argo-cd/api/v1/applications");
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(
        r.headers.get("user-agent").map(String::as_str),
        Some(format!("argocd-gateway/{}", argocd_gateway::VERSION).as_str())
    );
    assert_eq!(r.bearer(), Some(env.token.as_str()));
}

#[tokio::test]
async fn app_calls_carry_app_namespace_and_json_content_type() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    let mut app = argocd_gateway::simulator::objects::synthetic_app(1, "team-ns");
    app["metadata"]["name"] = "guestbook".into();
    env.sim.upsert_app(app);
    let c = env.client(Mode::Plaintext, &[]);
    let r = AppRef::new("team-ns", "guestbook").with_project("team-a");
    let got = within(c.get_application(&r, None)).await.expect("get");
    assert_eq!(got.app.name, "guestbook");
    assert_eq!(got.app.namespace, "team-ns");
    let synced = within(c.sync_application(
        &r,
        &SyncRequest {
            revision: Some("abc123".into()),
            prune: true,
            ..Default::default()
        },
    ))
    .await
    .expect("sync");
    assert_eq!(
        synced.app.operation.as_ref().map(|o| o.phase.clone()),
        Some(OperationPhase::Running)
    );
    assert_eq!(
        synced.app.operation.as_ref().map(|o| o.revision.as_str()),
        Some("abc123")
    );
    within(c.resource_tree(&r)).await.expect("tree");
    within(c.managed_resources(&r)).await.expect("managed");
    within(c.events(&r, None)).await.expect("events");
    within(c.logs(
        &r,
        &LogsRequest {
            pod_name: "p".into(),
            ..Default::default()
        },
    ))
    .await
    .expect("logs");
    let reqs = env.sim.requests();
    assert_eq!(reqs.len(), 6);
    for q in &reqs {
        if q.method == "POST" {
            assert_eq!(
                q.headers.get("content-type").map(String::as_str),
                Some("application/json")
            );
            let body: serde_json::Value = serde_json::from_str(&q.body).expect("json body");
            assert_eq!(body["appNamespace"], "team-ns");
            assert_eq!(body["revision"], "abc123");
            assert_eq!(body["prune"], true);
        } else {
            assert_eq!(q.query_values("appNamespace"), vec!["team-ns"], "{}", q.path);
            assert_eq!(q.query_values("project"), vec!["team-a"], "{}", q.path);
        }
    }
}

#[tokio::test]
async fn every_call_returns_what_argocd_serves() {
    let env = start(SimTls::SelfSigned, "v3.5.1").await;
    env.sim.add_synthetic_apps(4);
    let c = env.client(Mode::VerifyWithCa, &[]);
    let user = within(c.userinfo()).await.expect("userinfo");
    assert!(user.logged_in);
    assert_eq!(user.username, "gateway");
    assert!(
        within(c.can_i(None, "applications", "get", &["*", "*"]))
            .await
            .expect("can-i")
    );
    let bad = within(c.can_i(None, "nonsense", "get", &["*"])).await.expect_err("400");
    assert!(matches!(bad, ArgoCdError::Rejected { status: 400, .. }), "{bad:?}");
    let clusters = within(c.list_clusters()).await.expect("clusters");
    assert_eq!(clusters.items[0].server, "https://kubernetes.default.svc");
    assert_eq!(clusters.items[0].connection_state.status, "Successful");
    let r = AppRef::new("argocd", "app-00001");
    // 3.x: the list omits per-resource health, get carries it.
    let list = within(c.list_applications(&AppQuery::default())).await.expect("list");
    let listed = list.items.iter().find(|d| d.app.name == "app-00001").expect("listed");
    assert!(listed.resource_health_in_tree);
    assert!(listed.app.resources.iter().all(|r| r.health.is_none()));
    let got = within(c.get_application(&r, Some(Refresh::Hard))).await.expect("get");
    assert!(got.app.resources.iter().all(|r| r.health.is_some()));
    assert_eq!(
        env.sim.requests().last().map(|q| q.query_values("refresh")),
        Some(vec!["hard".to_owned()])
    );
    let tree = within(c.resource_tree(&r)).await.expect("tree");
    assert_eq!(tree["nodes"].as_array().map(Vec::len), Some(2));
    let managed = within(c.managed_resources(&r)).await.expect("managed");
    assert_eq!(managed["items"].as_array().map(Vec::len), Some(2));
    let ev = within(c.events(
        &r,
        Some(&ResourceRef {
            namespace: "ns".into(),
            name: "pod-1".into(),
            uid: None,
        }),
    ))
    .await
    .expect("events");
    assert_eq!(ev["items"][0]["involvedObject"]["name"], "pod-1");
    let logs = within(c.logs(
        &r,
        &LogsRequest {
            pod_name: "web-0".into(),
            tail_lines: 5,
            ..Default::default()
        },
    ))
    .await
    .expect("logs");
    let entries = logs.as_array().expect("array");
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[4]["content"], "web-0 log line 19");
    let small = within(c.logs(
        &r,
        &LogsRequest {
            pod_name: "web-0".into(),
            tail_lines: 20,
            max_bytes: 40,
            ..Default::default()
        },
    ))
    .await
    .expect("logs");
    assert_eq!(small.as_array().map(Vec::len), Some(2), "bounded by bytes: {small}");
}

#[tokio::test]
async fn two_x_lists_carry_resource_health() {
    let env = start(SimTls::Plaintext, "v2.14.7").await;
    env.sim.add_synthetic_apps(2);
    let c = env.client(Mode::Plaintext, &[]);
    let list = within(c.list_applications(&AppQuery::default())).await.expect("list");
    assert!(list.items.iter().all(|d| !d.resource_health_in_tree));
    assert!(
        list.items
            .iter()
            .all(|d| d.app.resources.iter().all(|r| r.health.is_some()))
    );
}

#[tokio::test]
async fn token_file_is_reread_when_rewritten() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    let c = env.client(Mode::Plaintext, &[]);
    within(c.list_applications(&AppQuery::default()))
        .await
        .expect("first token");
    let new_token = env.sim.add_token(TokenSpec::account("gateway"));
    env.sim.revoke_token(&env.token);
    // Rotate like a mounted Secret: write a new file and rename it over the old one.
    let tmp = env.dir.path().join("token.new");
    std::fs::write(&tmp, &new_token).expect("write");
    std::fs::rename(&tmp, &env.token_path).expect("rename");
    within(c.list_applications(&AppQuery::default()))
        .await
        .expect("new token used without restart");
    assert_eq!(
        env.sim.requests().last().and_then(|r| r.bearer().map(str::to_owned)),
        Some(new_token.clone())
    );
    // In-place rewrite (same inode) is noticed too.
    let third = env.sim.add_token(TokenSpec::account("gateway"));
    std::fs::write(&env.token_path, &third).expect("rewrite");
    within(c.version()).await.expect("version");
    assert_eq!(
        env.sim.requests().last().and_then(|r| r.bearer().map(str::to_owned)),
        Some(third)
    );
}

#[tokio::test]
async fn project_tokens_scope_calls() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(6);
    let dir = env.dir.path().join("projects");
    std::fs::create_dir(&dir).expect("mkdir");
    let team_a = env.sim.add_token(TokenSpec::project("team-a", "gateway"));
    let unscoped = env.sim.add_token(TokenSpec::account("gateway"));
    std::fs::write(dir.join("team-a"), &team_a).expect("write");
    std::fs::write(dir.join("_unscoped"), &unscoped).expect("write");
    std::fs::create_dir(dir.join("..data")).expect("k8s bookkeeping dir is ignored");
    let url = env.sim.url();
    let args = crate::common::parse_args(&[
        "--argocd-server".into(),
        url,
        "--argocd-plaintext".into(),
        "--argocd-project-tokens-dir".into(),
        dir.display().to_string(),
    ]);
    let cfg = argocd_gateway::argocd::ArgoCdConfig::from_args(&args, vec![]).expect("config");
    let c = argocd_gateway::argocd::Client::with_retry(cfg, crate::common::fast_retry()).expect("client");
    assert_eq!(c.scopes(&[]).expect("scopes"), vec![Some("team-a".to_owned())]);
    let q = AppQuery {
        scope: Some("team-a".into()),
        ..Default::default()
    };
    let list = within(c.list_applications(&q)).await.expect("list");
    assert!(!list.items.is_empty());
    assert!(list.items.iter().all(|d| d.app.project == "team-a"));
    let last = env.sim.requests().pop().expect("request");
    assert_eq!(last.bearer(), Some(team_a.as_str()));
    assert_eq!(last.query_values("projects"), vec!["team-a"]);
    within(c.list_clusters()).await.expect("clusters");
    assert_eq!(
        env.sim.requests().pop().and_then(|r| r.bearer().map(str::to_owned)),
        Some(unscoped.clone())
    );
    // A project without its own file falls back to _unscoped.
    let r = AppRef::new("argocd", "app-00002").with_project("team-b");
    within(c.get_application(&r, None)).await.expect("get via _unscoped");
    assert_eq!(
        env.sim.requests().pop().and_then(|r| r.bearer().map(str::to_owned)),
        Some(unscoped)
    );
    let claims = c.token_claims(Some("team-a")).expect("claims");
    assert_eq!(claims.subject.as_deref(), Some("proj:team-a:gateway"));
}

#[tokio::test]
async fn status_401_403_404_415_are_classified() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(2);
    let c = env.client(Mode::Plaintext, &[]);
    // 403 with the policy line.
    env.sim.update_token(
        &env.token,
        TokenSpec::account("gateway").without("applications", "sync"),
    );
    let r = AppRef::new("argocd", "app-00000");
    let err = within(c.sync_application(&r, &SyncRequest::default()))
        .await
        .expect_err("403");
    match &err {
        ArgoCdError::PermissionDenied { policy_line, .. } => {
            assert_eq!(policy_line, "p, gateway, applications, sync, */*, allow")
        }
        other => panic!("{other:?}"),
    }
    // 404 when the project is given, 403 without it.
    let missing = AppRef::new("argocd", "nope").with_project("default");
    let err = within(c.get_application(&missing, None)).await.expect_err("404");
    assert!(matches!(err, ArgoCdError::NotFound { .. }), "{err:?}");
    let err = within(c.get_application(&AppRef::new("argocd", "nope"), None))
        .await
        .expect_err("403");
    assert!(matches!(err, ArgoCdError::PermissionDenied { .. }), "{err:?}");
    // 415: the simulator enforces the rule on anything but exactly application/json ...
    let raw = reqwest::Client::new()
        .post(format!("{}/api/v1/applications/app-00000/sync", env.sim.url()))
        .header("content-type", "application/json; charset=utf-8")
        .bearer_auth(&env.token)
        .body("{}")
        .send();
    let resp = within(raw).await.expect("raw request");
    assert_eq!(resp.status().as_u16(), 415);
    assert_eq!(within(resp.text()).await.expect("body"), "Invalid content type");
    // ... and the client classifies a 415.
    env.sim.fail_requests("/sync", 1, 415);
    let err = within(c.sync_application(&r, &SyncRequest::default()))
        .await
        .expect_err("415");
    assert!(matches!(err, ArgoCdError::UnsupportedMediaType { .. }), "{err:?}");
    // 401 with subject and expiry of the token sent.
    env.sim.revoke_token(&env.token);
    let err = within(c.list_applications(&AppQuery::default()))
        .await
        .expect_err("401");
    let claims = c.token_claims(None).expect("claims");
    match &err {
        ArgoCdError::Unauthorized {
            subject, expires_at, ..
        } => {
            assert_eq!(subject.as_deref(), Some("gateway:apiKey"));
            assert_eq!(*expires_at, claims.expires_at);
            assert!(expires_at.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("gateway:apiKey"));
    assert!(
        !err.to_string().contains(&env.token),
        "the token never appears in errors"
    );
    assert!(!format!("{c:?}").contains(&env.token), "nor in Debug");
}

#[tokio::test]
async fn transient_failures_are_retried_then_reported() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(1);
    let c = env.client(Mode::Plaintext, &["--argocd-request-timeout", "300ms"]);
    env.sim.fail_requests("/api/v1/applications", 2, 503);
    let list = within(c.list_applications(&AppQuery::default()))
        .await
        .expect("third attempt succeeds");
    assert_eq!(list.items.len(), 1);
    env.sim.fail_requests("/api/v1/applications", 3, 502);
    let err = within(c.list_applications(&AppQuery::default()))
        .await
        .expect_err("all attempts fail");
    assert!(
        matches!(err, ArgoCdError::Unavailable { status: Some(502), .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    env.sim.set_latency(Duration::from_millis(1000));
    let err = within(c.version()).await.expect_err("timeout");
    assert!(matches!(err, ArgoCdError::Timeout { .. }), "{err:?}");
    env.sim.set_latency(Duration::ZERO);
    // A sync is not retried after a 5xx.
    env.sim.fail_requests("/sync", 1, 503);
    let before = env.sim.requests().len();
    let err = within(c.sync_application(&AppRef::new("argocd", "app-00000"), &SyncRequest::default()))
        .await
        .expect_err("503");
    assert!(matches!(err, ArgoCdError::Unavailable { .. }));
    assert_eq!(env.sim.requests().len(), before + 1);
}

#[tokio::test]
async fn bodies_and_lines_are_capped() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(1);
    let c = env.client(
        Mode::Plaintext,
        &["--argocd-max-body-bytes", "100000", "--argocd-max-line-bytes", "50000"],
    );
    env.sim.oversized_body("/api/v1/applications", 200_000);
    let err = within(c.list_applications(&AppQuery::default()))
        .await
        .expect_err("too large");
    assert!(matches!(err, ArgoCdError::BodyTooLarge { limit: 100_000 }), "{err:?}");
    let opening = open_watch(&env, &c, "1").await;
    env.sim.oversized_watch_line(80_000);
    env.sim.set_health("argocd", "app-00000", "Degraded", "");
    let mut w = within(opening).await.expect("joined").expect("watch");
    let item = within(w.next()).await.expect("an item");
    assert!(
        matches!(item, Err(ArgoCdError::LineTooLong { limit: 50_000 })),
        "{item:?}"
    );
    assert!(within(w.next()).await.is_none(), "the stream stops after a broken line");
}

#[tokio::test]
async fn watch_reports_events_and_error_chunks() {
    let env = start(SimTls::SelfSigned, "v3.5.1").await;
    env.sim.add_synthetic_apps(3);
    let c = env.client(Mode::VerifyWithCa, &[]);
    let list = within(c.list_applications(&AppQuery::default())).await.expect("list");
    // Without a resourceVersion every app is first reported as ADDED.
    let mut all = within(c.watch_applications(&AppQuery::default(), None))
        .await
        .expect("watch");
    for _ in 0..3 {
        let ev = within(all.next()).await.expect("event").expect("ok");
        assert_eq!(ev.kind, WatchEventType::Added);
    }
    let opening = open_watch(&env, &c, &list.resource_version).await;
    env.sim.set_health("argocd", "app-00002", "Degraded", "pod crashloop");
    let mut w = within(opening).await.expect("joined").expect("watch");
    let ev = within(w.next()).await.expect("event").expect("ok");
    assert_eq!(ev.kind, WatchEventType::Modified);
    assert_eq!(ev.app.app.name, "app-00002");
    assert_eq!(ev.app.app.health.status, HealthStatusCode::Degraded);
    assert!(
        ev.app.app.resources.iter().all(|r| r.health.is_some()),
        "watch carries resource health in 3.x"
    );
    env.sim.delete_app("argocd", "app-00001");
    let ev = within(w.next()).await.expect("event").expect("ok");
    assert_eq!(ev.kind, WatchEventType::Deleted);
    env.sim.fail_watches(403, "permission denied");
    let ev = within(w.next()).await.expect("error chunk");
    assert!(matches!(ev, Err(ArgoCdError::Stream { http_code: 403, .. })), "{ev:?}");
    let stream_req = env
        .sim
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/api/v1/stream/applications")
        .expect("watch");
    assert_eq!(stream_req.query_values("resourceVersion"), vec![list.resource_version]);
    // 2 watches; the second one was cut
    eventually("watch requests recorded", || {
        env.sim
            .requests()
            .iter()
            .filter(|r| r.path.contains("/stream/"))
            .count()
            == 2
    })
    .await;
}

#[tokio::test]
async fn simulator_sse_framing_matches_argocd() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(1);
    let resp = within(
        reqwest::Client::new()
            .get(format!("{}/api/v1/stream/applications", env.sim.url()))
            .header("accept", "text/event-stream")
            .bearer_auth(&env.token)
            .send(),
    )
    .await
    .expect("sse");
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut body = resp.bytes_stream();
    let first = within(body.next()).await.expect("chunk").expect("bytes");
    let text = String::from_utf8_lossy(&first);
    assert!(text.starts_with("data: {\"result\":{"), "{text}");
    assert!(text.contains("\"type\":\"ADDED\""), "{text}");
    assert!(text.ends_with("} \n\n\n"), "{text:?}");
}
