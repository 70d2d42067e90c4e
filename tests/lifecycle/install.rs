//! The printed command installs a gateway that connects and relays; `hub token status --wait`
//! follows it; `check` with only the pod's environment reports the pod's configuration (and
//! writes a bundle without secrets); the pre-delete hook deregisters it and its session closes.
//! The same command without an Argo CD token is refused by the chart, and values with `,`,
//! `\`, quotes and braces stay one value through the shell and Helm's --set parser.

use argocd_gateway::simulator::SimTls;
use serde_json::{Value, json};

use crate::fake_api::SECRETS;
use crate::harness::{Env, output};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_command_installs_a_gateway_that_relays_and_uninstall_deregisters_it() {
    let env = Env::start(SimTls::Plaintext).await;
    std::fs::write(env.work().join("argocd-token"), format!("{}\n", env.argocd_token)).unwrap();
    let sim_url = env.sim.url();
    let printed = env
        .token_create(&[
            "--name",
            "edge eu",
            "--environment",
            "production",
            "--environment",
            "eu-west",
            "--argocd-url",
            &sim_url,
            "--argocd-web-url",
            "https://argocd.example.com",
            "--argocd-token-file",
            "argocd-token",
        ])
        .await;
    // The hub's public URL is loopback here, and the CLI says so.
    assert!(printed.stderr.contains("loopback"), "{}", printed.stderr);
    for part in [
        "helm upgrade --install argocd-gateway-edge-eu ./charts/argocd-gateway",
        "--namespace argocd-gateway-edge-eu --create-namespace",
        "--set-file gateway.argocd.authenticationToken=argocd-token",
        "--set gateway.argocd.plaintext=true",
    ] {
        assert!(printed.command.contains(part), "{part} in\n{}", printed.command);
    }

    let r = env.install(&printed).await;
    assert_eq!(
        (r.release.as_str(), r.namespace.as_str()),
        ("argocd-gateway-edge-eu", "argocd-gateway-edge-eu")
    );
    assert!(r.create_namespace);
    assert!(
        r.notes
            .contains(&format!("argocd-gateway hub token status {} --wait", printed.id)),
        "{}",
        r.notes
    );

    // Follow the install as NOTES says, from the start.
    let mut status = env.hub_cli(&["token", "status", &printed.id, "--wait", "--timeout", "60s"]);
    status.kill_on_drop(true);
    let status = tokio::spawn(output(status));

    // helm install: the pre-install hook Job, then the Deployment.
    let register = env.pod(&r, "Job", "-register");
    assert_eq!(register.args, ["register"]);
    let out = env.run_to_end(&register).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stdout.contains("registration preflight") && out.stdout.contains("check passed"),
        "{}",
        out.text()
    );
    assert!(out.stdout.contains("registered as gw-"), "{}", out.text());
    for secret in [&env.argocd_token, &printed.token] {
        assert!(
            !out.text().contains(secret.as_str()),
            "a token leaked into the Job's log"
        );
    }

    let gateway = env.pod(&r, "Deployment", "");
    assert_eq!(gateway.args, ["run"]);
    let run = env.spawn(&gateway);
    env.until("the gateway connects and relays every application", || async {
        let v = env.token_status(&printed.id).await;
        let Some(id) = v["gatewayId"].as_str() else {
            return false;
        };
        let (code, apps) = env
            .api(reqwest::Method::GET, &format!("/api/v1/gateways/{id}/applications"))
            .await;
        code == 200 && apps["items"].as_array().map(Vec::len) == Some(env.sim.apps().len())
    })
    .await;
    let gateway_id = env.token_status(&printed.id).await["gatewayId"]
        .as_str()
        .unwrap()
        .to_owned();
    let g = env
        .gateways()
        .await
        .into_iter()
        .find(|g| g["id"] == json!(gateway_id))
        .unwrap();
    assert_eq!(g["name"], "edge eu");
    assert_eq!(g["environments"], json!(["production", "eu-west"]));
    assert_eq!(g["argocdWebUrl"], "https://argocd.example.com");
    assert_eq!(
        (g["connected"].clone(), g["state"].clone()),
        (json!(true), json!("connected"))
    );

    // `hub token status --wait` printed each step and ended with success.
    let out = status.await.unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    for step in [
        "registration token created",
        "token used",
        "gateway connected",
        "Argo CD reachable",
        "first Argo CD state received",
        "first health check passed",
    ] {
        assert!(out.stdout.contains(step), "{step} in\n{}", out.stdout);
    }

    // `kubectl exec deploy/… -- /argocd-gateway check`: only the pod's environment.
    let out = output(gateway.exec(&env.kubeconfig, &["check"])).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let token_file = gateway.var("ARGOCD_GATEWAY_ARGOCD_TOKEN_FILE").unwrap();
    for needle in [
        format!("server {sim_url}/"),
        format!("token file {token_file}"),
        "subject gateway:apiKey".to_owned(),
        format!(
            "registered as {gateway_id} (edge eu) in secret:argocd-gateway-edge-eu/argocd-gateway-edge-eu-identity"
        ),
        "with the gateway certificate".to_owned(),
        "check passed".to_owned(),
    ] {
        assert!(out.stdout.contains(&needle), "{needle:?} in\n{}", out.stdout);
    }
    // As NOTES says: `kubectl exec … -- /argocd-gateway check --bundle - > bundle.json`.
    let out = output(gateway.exec(&env.kubeconfig, &["check", "--bundle", "-"])).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stderr.contains("check passed"),
        "the table goes to stderr: {}",
        out.stderr
    );
    let bundle_text = out.stdout.clone();
    let bundle: Value = serde_json::from_str(&bundle_text).unwrap();
    assert_eq!(bundle["check"]["passed"], json!(true));
    assert_eq!(bundle["configuration"]["argocd"]["server"], json!(sim_url));
    assert!(
        bundle["metrics"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("argocd_gateway_hub_connected 1"),
        "{}",
        bundle["metrics"]
    );
    let roles: Vec<&str> = bundle["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["role"].as_str())
        .collect();
    assert!(roles.iter().any(|r| r.starts_with("hub chain")), "{roles:?}");
    assert!(roles.contains(&"gateway client certificate"), "{roles:?}");
    let identity = env
        .kube
        .get(SECRETS, &r.namespace, &format!("{}-identity", r.fullname()))
        .unwrap();
    let key = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            identity["data"]["tls.key"].as_str().expect("the stored key"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(key.contains("PRIVATE KEY"));
    for secret in [
        env.argocd_token.as_str(),
        printed.token.as_str(),
        "PRIVATE KEY",
        key.trim(),
    ] {
        assert!(!bundle_text.contains(secret), "the support bundle holds a secret");
    }

    // helm uninstall: the pre-delete hook deregisters with the gateway's own identity.
    let deregister = env.pod(&r, "Job", "-deregister");
    let out = env.run_to_end(&deregister).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stdout.contains(&format!("deregistered gateway {gateway_id}")),
        "{}",
        out.text()
    );
    let (code, v) = env
        .api(reqwest::Method::GET, &format!("/api/v1/gateways/{gateway_id}"))
        .await;
    assert_eq!(code, 404, "{v}");
    assert!(
        v["removedReason"]
            .as_str()
            .unwrap()
            .contains("helm uninstall of release argocd-gateway-edge-eu"),
        "{v}"
    );
    let listed = env
        .gateways()
        .await
        .into_iter()
        .find(|g| g["id"] == json!(gateway_id))
        .unwrap();
    assert_eq!(
        (listed["state"].clone(), listed["connected"].clone()),
        (json!("removed"), json!(false)),
        "{listed}"
    );
    assert!(listed["removedAt"].is_string());
    // Its live session was closed: the hub holds no session, and the gateway was told.
    assert_eq!(env.hub.connected_gateways(), 0);
    let secret = env
        .kube
        .get(SECRETS, &r.namespace, &format!("{}-identity", r.fullname()))
        .unwrap();
    assert!(
        secret["data"].get("gateway-id").is_none(),
        "the identity was removed: {secret}"
    );
    env.until("the gateway hears that its session was closed for good", || async {
        run.log().contains("was revoked at the hub")
    })
    .await;
    assert!(
        run.log().contains("helm uninstall of release argocd-gateway-edge-eu"),
        "{}",
        run.log()
    );
    drop(run);

    // Running the hook again (helm uninstall retried) finds nothing to do.
    let out = env.run_to_end(&deregister).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(out.stdout.contains("nothing to deregister"), "{}", out.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_command_without_an_argocd_token_is_refused_naming_the_value() {
    let env = Env::start(SimTls::Plaintext).await;
    let printed = env.token_create(&["--name", "no-token"]).await;
    assert!(printed.stderr.contains("--argocd-token-file"), "{}", printed.stderr);
    let mut argv = env.shell_helm_argv(&printed.command).await;
    let at = argv
        .iter()
        .position(|a| a == "--set-file")
        .expect("the Argo CD token is never silently left out");
    assert!(argv[at + 1].starts_with("gateway.argocd.authenticationToken="));
    argv.drain(at..at + 2);
    let r = env.render(&argv).await;
    assert!(!r.ok);
    let error = r.error.unwrap();
    assert!(
        error.contains("an Argo CD credential is required: set gateway.argocd.authenticationToken"),
        "{error}"
    );
    assert!(!error.contains(&printed.token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_values_stay_one_value_through_the_shell_and_helm() {
    let env = Env::start(SimTls::Plaintext).await;
    let name = r#"x,gateway.hub.plaintext=true it's "q" \ $HOME {a,b} `id`"#;
    let secret_name = "argocd,gateway.debug=true";
    let web = "https://argocd.example.com/?a=1,b={2}";
    let printed = env
        .token_create(&[
            "--name",
            name,
            "--environment",
            "prod}{",
            "--environment",
            r"eu\west",
            "--argocd-web-url",
            web,
            "--argocd-token-secret",
            secret_name,
        ])
        .await;
    let r = env.install(&printed).await;
    let gateway = r.container_env("Deployment", &r.fullname());
    let var = |k: &str| gateway.get(k).map(String::as_str);
    assert_eq!(var("ARGOCD_GATEWAY_NAME"), Some(name));
    assert_eq!(var("ARGOCD_GATEWAY_ENVIRONMENT"), Some(r"prod}{,eu\west"));
    assert_eq!(var("ARGOCD_GATEWAY_ARGOCD_WEB_URL"), Some(web));
    // Nothing was injected: the hub stays TLS, logging stays quiet.
    assert_eq!(var("ARGOCD_GATEWAY_HUB_PLAINTEXT"), Some("false"));
    assert_eq!(var("ARGOCD_GATEWAY_DEBUG"), Some("false"));
    assert_eq!(
        r.values["gateway"]["argocd"]["authenticationTokenSecretName"],
        json!(secret_name)
    );
    assert_eq!(r.values["registration"]["token"], json!(printed.token));
    assert_eq!(r.values["gateway"]["hub"].as_object().unwrap().len(), 1, "{}", r.values);
}
