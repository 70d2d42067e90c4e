//! Self-update refuses to fight Argo CD: when the gateway's Deployment carries Argo CD's
//! tracking metadata, `self-update` changes nothing, says why naming autoUpdate.enabled=false,
//! and the hub shows the gateway's "update held" state until the metadata is gone.

use std::time::Duration;

use argocd_gateway::kube::secret_store::SecretStore;
use argocd_gateway::secret::Secret;
use argocd_gateway::simulator::SimTls;
use argocd_gateway::uplink::config::{HubConfig, HubEndpoint};
use argocd_gateway::uplink::register::{RegistrationArgs, register};
use serde_json::json;

use crate::fake_api::{CRONJOBS, DEPLOYMENTS};
use crate::harness::{BIN, Env, output};

const NS: &str = "gitops";
const IMAGE: &str = "registry.example.com/argocd-gateway";

fn install(env: &Env, annotations: serde_json::Value) {
    env.kube.insert(
        DEPLOYMENTS,
        NS,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "gw", "annotations": annotations,
                         "labels": {"app.kubernetes.io/instance": "gw"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "gw"}},
                     "template": {"metadata": {"labels": {"app": "gw"}},
                                  "spec": {"containers": [{"name": "gateway", "image": format!("{IMAGE}:1.2.0")}]}}},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
        }),
    );
    env.kube.insert(
        CRONJOBS,
        NS,
        json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "gw-self-update"},
            "spec": {"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "self-update", "image": format!("{IMAGE}:1.2.0")}]}}}}}
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_update_holds_when_argocd_manages_the_deployment() {
    let env = Env::start(SimTls::Plaintext).await;
    let (status, token) = {
        let resp = env
            .http
            .post(format!("{}/api/v1/registration-tokens", env.hub_api()))
            .bearer_auth(&env.admin)
            .json(&json!({"name": "managed"}))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(status, 201);
    let hub_url = format!("https://localhost:{}", env.hub.grpc_addr.port());
    let hub_cfg = HubConfig {
        endpoint: HubEndpoint::parse(&hub_url, false).unwrap(),
        pin: None,
        ca_fingerprint: Some(env.hub.ca_fingerprint.clone()),
        connect_timeout: Duration::from_secs(5),
        transport: argocd_gateway::uplink::Transport::Auto,
        memory: Default::default(),
    };
    let store = SecretStore::new(env.kube.client(), NS, "gw-identity");
    let args = RegistrationArgs {
        registration_token: Some(Secret::new(token["token"].as_str().unwrap())),
        ..Default::default()
    };
    let identity = register(&hub_cfg, &[], &store, &args).await.unwrap();
    let (code, _) = env
        .http
        .put(format!("{}/api/v1/desired-version", env.hub_api()))
        .bearer_auth(&env.admin)
        .json(&json!({"version": "1.5.0"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(code, 200);
    // Argo CD's annotation tracking (the default since Argo CD 3.0), on a chart it renders.
    install(
        &env,
        json!({"argocd.argoproj.io/tracking-id": "gateway:apps/Deployment:gitops/gw"}),
    );

    // The CronJob's container: subcommand and the chart's variables.
    let self_update = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("self-update")
            .args(extra)
            .env_clear()
            .env("KUBECONFIG", &env.kubeconfig)
            .env("POD_NAMESPACE", NS)
            .env("ARGOCD_GATEWAY_HUB_URL", &hub_url)
            .env("ARGOCD_GATEWAY_IDENTITY", format!("secret:{NS}/gw-identity"))
            .env("ARGOCD_GATEWAY_LOG_FORMAT", "text")
            .env("ARGOCD_GATEWAY_SELF_UPDATE_DEPLOYMENT", "gw")
            .env("ARGOCD_GATEWAY_SELF_UPDATE_CRONJOB", "gw-self-update");
        cmd
    };
    let writes_before = env.kube.writes().len();
    let out = output(self_update(&[])).await;
    let text = out.text();
    assert_eq!(out.code, Some(0), "{text}");
    for needle in [
        "decision:         held: the Deployment is managed by Argo CD (annotation argocd.argoproj.io/tracking-id=gateway:apps/Deployment:gitops/gw)",
        "autoUpdate.enabled=false",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    assert!(!text.contains("patch:"), "{text}");
    assert_eq!(
        env.kube.writes().len(),
        writes_before,
        "held means no write: {:?}",
        env.kube.writes()
    );
    let image =
        env.kube.get(DEPLOYMENTS, NS, "gw").unwrap()["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(image, json!(format!("{IMAGE}:1.2.0")));

    // The hub shows it, in the API and in `hub gateways`.
    let g = env
        .gateways()
        .await
        .into_iter()
        .find(|g| g["id"] == json!(identity.gateway_id))
        .unwrap();
    let held = g["updateHeld"]["reason"].as_str().unwrap_or_default();
    assert!(
        held.contains("Argo CD") && held.contains("autoUpdate.enabled=false"),
        "{g}"
    );
    assert!(g["updateHeld"]["since"].is_string(), "{g}");
    let out = output(env.hub_cli(&["gateways"])).await;
    assert!(
        out.stdout
            .contains("update held: held: the Deployment is managed by Argo CD"),
        "{}",
        out.text()
    );

    // Once Argo CD no longer manages it (installed by helm itself), the hold is lifted.
    env.kube.edit(DEPLOYMENTS, NS, "gw", |d| {
        d["metadata"]["annotations"] = json!({"meta.helm.sh/release-name": "gw"});
    });
    let out = output(self_update(&["--dry-run"])).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stdout.contains("decision:         upgrade 1.2.0 -> 1.5.0"),
        "{}",
        out.text()
    );
    let g = env
        .gateways()
        .await
        .into_iter()
        .find(|g| g["id"] == json!(identity.gateway_id))
        .unwrap();
    assert!(g["updateHeld"].is_null(), "{g}");
}
