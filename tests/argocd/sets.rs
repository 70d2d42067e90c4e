//! ApplicationSets and AppProjects (decoding Argo CD's own test objects, the view's list and
//! watch against the simulator), username/password sessions, and project token files that come
//! and go.

use std::path::Path;
use std::time::Duration;

use argocd_gateway::argocd::model::{decode_appset, decode_project_list};
use argocd_gateway::argocd::{AppKey, View, ViewEvent, ViewOptions};
use argocd_gateway::simulator::{SimOptions, SimTls, TokenSpec, objects};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{Mode, eventually, start, start_with, within};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/argocd")
            .join(name),
    )
    .unwrap()
}

#[test]
fn argo_cd_applicationsets_decode_with_generators_conditions_and_progressive_sync() {
    let healthy = decode_appset(&fixture(
        "resource_customizations__argoproj.io__ApplicationSet__testdata__healthyApplicationSet.json",
    ))
    .unwrap()
    .appset;
    assert_eq!(
        (healthy.namespace.as_str(), healthy.name.as_str()),
        ("argocd", "cluster-git")
    );
    assert_eq!(healthy.generators.len(), 1);
    assert_eq!(healthy.generators[0].kind, "merge");
    assert_eq!(healthy.generators[0].generators, vec!["clusters", "clusters", "list"]);
    assert_eq!(healthy.template.project, "default");
    assert_eq!(healthy.template.sources[0].path, "helm-guestbook");
    assert_eq!(healthy.template.destination.server, "{{server}}");
    let kinds: Vec<(&str, &str)> = healthy
        .conditions
        .iter()
        .map(|c| (c.kind.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("ErrorOccurred", "False"),
            ("ParametersGenerated", "True"),
            ("ResourcesUpToDate", "True")
        ]
    );

    let error = decode_appset(&fixture(
        "resource_customizations__argoproj.io__ApplicationSet__testdata__errorApplicationSetWithStatusMessage.json",
    ))
    .unwrap()
    .appset;
    let occurred = error.conditions.iter().find(|c| c.kind == "ErrorOccurred").unwrap();
    assert_eq!(occurred.status, "True");
    assert_eq!(occurred.reason, "ApplicationGenerationFromParamsError");
    assert!(occurred.message.contains("Merge requires two or more"));

    let progressive = decode_appset(&fixture(
        "resource_customizations__argoproj.io__ApplicationSet__testdata__progressiveSyncApplicationSet.json",
    ))
    .unwrap()
    .appset;
    assert_eq!(progressive.strategy.as_ref().map(|s| s.steps), Some(2));
    assert!(
        progressive
            .conditions
            .iter()
            .any(|c| c.kind == "RolloutProgressing" && c.status == "True")
    );

    // The metrics test's list: child applications with their health, and one without status.
    let list: Vec<Value> = serde_json::from_str(&fixture(
        "applicationset__metrics__metrics_test.go__fakeAppsetList.json",
    ))
    .unwrap();
    let first = decode_appset(&list[0].to_string()).unwrap().appset;
    assert_eq!(first.generators[0].kind, "git");
    let owned: Vec<(&str, &str)> = first
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.health.as_ref().map_or("", |h| h.status.as_str())))
        .collect();
    assert_eq!(owned, vec![("test-app1", "Missing"), ("test-app2", "Missing")]);
    let bare = decode_appset(&list[1].to_string()).unwrap().appset;
    assert!(bare.conditions.is_empty() && bare.resources.is_empty());
}

#[test]
fn the_reference_appproject_decodes_compactly() {
    let body = format!(
        r#"{{"metadata":{{}},"items":[{}]}}"#,
        fixture("docs__operator-manual__project.json")
    );
    let list = decode_project_list(body.as_bytes()).unwrap();
    let p = &list.items[0];
    assert_eq!(p.name, "my-project");
    assert_eq!(p.description, "Example Project");
    assert_eq!(p.source_repos, vec!["*"]);
    assert_eq!(p.source_namespaces, vec!["argocd-apps-*"]);
    assert_eq!(p.destinations.len(), 2);
    assert_eq!(p.destinations[1].namespace, "guestbook-*");
    assert_eq!(p.cluster_resource_whitelist[0].kind, "Namespace");
    assert_eq!(p.cluster_resource_blacklist[0].name, "kube-*");
    assert_eq!(p.namespace_resource_blacklist.len(), 3);
    assert_eq!(p.namespace_resource_whitelist[1].kind, "StatefulSet");
    assert_eq!(p.roles, vec!["read-only", "ci-role"]);
    assert_eq!(p.sync_windows.len(), 4);
    assert_eq!(p.sync_windows[0].schedule, "10 1 * * *");
    assert!(p.sync_windows[0].manual_sync);
    assert_eq!(p.sync_windows[3].clusters, vec!["in-cluster", "cluster1"]);
    let json = serde_json::to_string(p).unwrap();
    assert!(!json.contains("jwtTokens") && !json.contains("policies") && !json.contains("groups"));
}

#[tokio::test]
async fn the_view_lists_and_watches_applicationsets_and_lists_projects() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.upsert_appset(objects::appset("a", "argocd", &["x"], 0));
    let client = env.client(Mode::Plaintext, &[]);
    let cancel = CancellationToken::new();
    let view = View::spawn(client, ViewOptions::default(), cancel.clone());
    let key = AppKey::new("argocd", "a");
    eventually("the ApplicationSet listed", || view.appsets().contains_key(&key)).await;
    eventually("the default project listed", || view.projects().contains_key("default")).await;
    let mut events = view.subscribe();
    // Watched: a change arrives as one event, without a list.
    let lists = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/applicationsets")
        .count();
    env.sim.modify_appset("argocd", "a", |a| {
        a["status"]["conditions"][0]["status"] = json!("True");
    });
    let ev = within(async {
        loop {
            if let Ok(ViewEvent::AppSetUpsert(a)) = events.recv().await {
                return a;
            }
        }
    })
    .await;
    assert_eq!(ev.conditions[0].status, "True");
    env.sim.delete_appset("argocd", "a");
    eventually("the ApplicationSet gone", || view.appsets().is_empty()).await;
    assert_eq!(
        env.sim
            .requests()
            .iter()
            .filter(|r| r.path == "/api/v1/applicationsets")
            .count(),
        lists,
        "changes came from the watch"
    );
    assert!(view.status().appsets_synced && view.status().projects_synced);
    cancel.cancel();
}

#[tokio::test]
async fn sessions_are_renewed_before_they_expire_and_after_a_refusal() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_account("bot", "pw", TokenSpec::account("bot"));
    env.sim.set_session_ttl(Duration::from_secs(2));
    let file = env.dir.path().join("password");
    std::fs::write(&file, "pw\n").unwrap();
    let url = env.sim.url();
    let flags = [
        "--argocd-server",
        url.as_str(),
        "--argocd-plaintext",
        "--argocd-username",
        "bot",
        "--argocd-password-file",
        file.to_str().unwrap(),
    ];
    let args = crate::common::parse_args(&flags.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let client = argocd_gateway::argocd::Client::with_retry(
        argocd_gateway::argocd::ArgoCdConfig::from_args(&args, vec![]).unwrap(),
        crate::common::fast_retry(),
    )
    .unwrap();
    for _ in 0..12 {
        assert!(within(client.userinfo()).await.unwrap().logged_in);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Renewed before expiry: every call was accepted (userinfo says loggedIn false otherwise),
    // and more than one login happened over 3.6 s of 2 s sessions.
    assert!(env.sim.logins() >= 2, "logins {}", env.sim.logins());
    let before = env.sim.logins();
    env.sim.revoke_sessions("bot");
    within(client.list_applications(&Default::default())).await.unwrap();
    assert_eq!(env.sim.logins(), before + 1, "a 401 makes one new login");
    // The password travels only in the login body, never as a bearer or in a URL.
    for r in env.sim.requests() {
        assert!(!r.query.contains("pw") && !r.path.contains("pw"));
        if r.path.ends_with("/api/v1/session") {
            assert_eq!(r.method, "POST");
        }
    }
    let debug = format!("{client:?}");
    assert!(
        !debug.contains("\"pw\"")
            && !debug.contains(&env.sim.requests().last().unwrap().bearer().unwrap_or("x").to_owned())
    );
}

#[tokio::test]
async fn project_token_files_are_followed_as_they_come_and_go() {
    let env = start_with(SimOptions {
        tls: SimTls::Plaintext,
        ..SimOptions::default()
    })
    .await;
    for (i, project) in ["team-a", "team-b"].iter().enumerate() {
        let mut app = objects::synthetic_app(i, "argocd");
        app["spec"]["project"] = json!(project);
        env.sim.upsert_app(app);
    }
    let dir = env.dir.path().join("tokens");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("team-a"),
        env.sim.add_token(TokenSpec::project("team-a", "ci")),
    )
    .unwrap();
    let url = env.sim.url();
    let flags = [
        "--argocd-server",
        url.as_str(),
        "--argocd-plaintext",
        "--argocd-project-tokens-dir",
        dir.to_str().unwrap(),
    ];
    let args = crate::common::parse_args(&flags.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let client = argocd_gateway::argocd::Client::with_retry(
        argocd_gateway::argocd::ArgoCdConfig::from_args(&args, vec![]).unwrap(),
        crate::common::fast_retry(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let view = View::spawn(client, ViewOptions::default(), cancel.clone());
    let a = AppKey::new("argocd", "app-00000");
    let b = AppKey::new("argocd", "app-00001");
    eventually("team-a's application", || view.application(&a).is_some()).await;
    assert!(view.application(&b).is_none());
    std::fs::write(
        dir.join("team-b"),
        env.sim.add_token(TokenSpec::project("team-b", "ci")),
    )
    .unwrap();
    eventually("team-b's application once its token file appears", || {
        view.application(&b).is_some()
    })
    .await;
    std::fs::remove_file(dir.join("team-a")).unwrap();
    eventually("team-a's application gone with its token file", || {
        view.application(&a).is_none()
    })
    .await;
    assert!(view.application(&b).is_some());
    cancel.cancel();
}
