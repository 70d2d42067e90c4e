"""Tests for charts/argocd-gateway, rendered by the real Helm engine (helm-python-sdk) and
checked against the Kubernetes schemas (kubernetes-validate).

Each case in CASES is a set of values a user would pass (built with Helm's own --set /
--set-string parser where the issue speaks of --set), plus the assertions on the container
env and volumes that carry those values. Settings reach the containers as ARGOCD_GATEWAY_*
variables (the flag each one sets is in FLAG_ENV, and test_env_names_are_the_binarys checks
them against the binary's --help); the container arguments are only the subcommand. Every case
also goes through the invariants: schema validation of every manifest, the restricted Pod
Security Standard on every pod, no secret in args/env/ConfigMaps/NOTES, nothing but the
subcommand on the command line, every file path in the env mounted, every referenced object
rendered or named by the user.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "argocd-gateway"
GOLDEN = Path(__file__).parent / "golden" / "default.yaml"
KUBE_VERSION = "1.35.0"
RELEASE = "gw"
NAMESPACE = "argocd"
FULLNAME = "gw-argocd-gateway"
HUB = "hub.example.com:8443"
# The hub URL and an Argo CD token source are required; most cases name an existing Secret.
ACCOUNT_SECRET = "argocd-gateway-account"
REQUIRED = {"gateway": {"hub": {"serverGrpcUrl": HUB},
                        "argocd": {"authenticationTokenSecretName": ACCOUNT_SECRET}}}
# REQUIRED without the token Secret, for cases that give the token another way.
NO_ACCOUNT_SECRET = {"gateway": {"argocd": {"authenticationTokenSecretName": ""}}}

# Distinctive secret values: if any appears outside a Secret, a test fails.
ARGOCD_TOKEN = "eyJhbGciOi.argocd-account-token-SECRET"
PROJECT_A_TOKEN = "eyJhbGciOi.team-a-token-SECRET"
UNSCOPED_TOKEN = "eyJhbGciOi.unscoped-token-SECRET"
REGISTRATION_TOKEN = "agw_reg_one-hour-token-SECRET"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfakeCAforTests\n-----END CERTIFICATE-----\n"

PATHS = {
    "trust_cm": "/etc/argocd-gateway/trust/certificates",
    "trust_secret": "/etc/argocd-gateway/trust/secret",
    "argocd_token": "/var/run/secrets/argocd-gateway/argocd-token",
    "project_tokens": "/var/run/secrets/argocd-gateway/argocd-project-tokens",
    "registration_token": "/var/run/secrets/argocd-gateway/registration-token",
    "argocd_password": "/var/run/secrets/argocd-gateway/argocd-password",
}


# ---------------------------------------------------------------------------------------------
# Rendering helpers


def deep_merge(base: dict[str, Any], *overlays: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for overlay in overlays:
        for key, value in overlay.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def with_set(*exprs: str) -> dict[str, Any]:
    """Values as `helm ... --set a=b --set c=d` would give them (Helm's strvals parser)."""
    return deep_merge(REQUIRED, *(helm.parse_set_string(e) for e in exprs))


def with_set_string(*exprs: str) -> dict[str, Any]:
    """Values as `--set-string` gives them: every value a string."""
    return deep_merge(REQUIRED, *(helm.parse_set_string_values(e) for e in exprs))


@pytest.fixture(scope="session")
def chart():
    loaded = helm.Chart.load(CHART_DIR)
    yield loaded
    loaded.close()


@dataclass
class Render:
    files: dict[str, str]
    docs: list[dict[str, Any]]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["kind"] == kind and d["metadata"]["name"] == name for d in self.docs)

    def pod_specs(self) -> dict[str, dict[str, Any]]:
        """Every pod template, keyed by workload kind/name."""
        out = {}
        for d in self.docs:
            key = f"{d['kind']}/{d['metadata']['name']}"
            if d["kind"] in ("Deployment", "Job"):
                out[key] = d["spec"]["template"]["spec"]
            elif d["kind"] == "CronJob":
                out[key] = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return out

    def deployment(self) -> dict[str, Any]:
        return self.get("Deployment", FULLNAME)

    def container(self, kind: str, name: str) -> dict[str, Any]:
        spec = self.pod_specs()[f"{kind}/{name}"]
        assert len(spec["containers"]) == 1
        return spec["containers"][0]

    def gateway(self) -> dict[str, Any]:
        return self.container("Deployment", FULLNAME)

    def register(self) -> dict[str, Any]:
        return self.container("Job", f"{FULLNAME}-register")

    def self_update(self) -> dict[str, Any]:
        return self.container("CronJob", f"{FULLNAME}-self-update")

    def deregister(self) -> dict[str, Any]:
        return self.container("Job", f"{FULLNAME}-deregister")


def render(chart, values: dict[str, Any]) -> Render:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    notes = ""
    for path in sorted(files):
        if path.endswith("NOTES.txt"):
            notes = files[path]
            continue
        docs.extend(d for d in yaml.safe_load_all(files[path]) if d)
    return Render(files=files, docs=docs, notes=notes)


def render_text(files: dict[str, str]) -> str:
    """A stable, human-readable rendering for the golden file (like `helm template`)."""
    parts = []
    for path in sorted(files):
        body = files[path].strip("\n")
        if body.strip():
            parts.append(f"---\n# Source: {path}\n{body}\n")
    return "".join(parts)


def args_of(container: dict[str, Any]) -> list[str]:
    return list(container.get("args", []))


# The variable that carries each flag (the binary reads `ARGOCD_GATEWAY_<FLAG>`).
FLAG_ENV = {
    "--hub-url": "ARGOCD_GATEWAY_HUB_URL",
    "--hub-plaintext": "ARGOCD_GATEWAY_HUB_PLAINTEXT",
    "--hub-transport": "ARGOCD_GATEWAY_HUB_TRANSPORT",
    "--hub-fingerprint": "ARGOCD_GATEWAY_HUB_FINGERPRINT",
    "--hub-ca-fingerprint": "ARGOCD_GATEWAY_HUB_CA_FINGERPRINT",
    "--trust-ca": "ARGOCD_GATEWAY_TRUST_CA",
    "--identity": "ARGOCD_GATEWAY_IDENTITY",
    "--log-format": "ARGOCD_GATEWAY_LOG_FORMAT",
    "--debug": "ARGOCD_GATEWAY_DEBUG",
    "--registration-token-file": "ARGOCD_GATEWAY_REGISTRATION_TOKEN_FILE",
    "--name": "ARGOCD_GATEWAY_NAME",
    "--environment": "ARGOCD_GATEWAY_ENVIRONMENT",
    "--argocd-web-url": "ARGOCD_GATEWAY_ARGOCD_WEB_URL",
    "--argocd-server": "ARGOCD_GATEWAY_ARGOCD_SERVER",
    "--argocd-insecure": "ARGOCD_GATEWAY_ARGOCD_INSECURE",
    "--argocd-plaintext": "ARGOCD_GATEWAY_ARGOCD_PLAINTEXT",
    "--argocd-token-file": "ARGOCD_GATEWAY_ARGOCD_TOKEN_FILE",
    "--argocd-project-tokens-dir": "ARGOCD_GATEWAY_ARGOCD_PROJECT_TOKENS_DIR",
    "--argocd-username": "ARGOCD_GATEWAY_ARGOCD_USERNAME",
    "--argocd-password-file": "ARGOCD_GATEWAY_ARGOCD_PASSWORD_FILE",
    "--watch": "ARGOCD_GATEWAY_WATCH",
    "--poll-interval": "ARGOCD_GATEWAY_POLL_INTERVAL",
    "--resync-interval": "ARGOCD_GATEWAY_RESYNC_INTERVAL",
    "--cluster-interval": "ARGOCD_GATEWAY_CLUSTER_INTERVAL",
    "--selector": "ARGOCD_GATEWAY_SELECTOR",
    "--project": "ARGOCD_GATEWAY_PROJECT",
    "--app-namespace": "ARGOCD_GATEWAY_APP_NAMESPACE",
    "--argocd-request-timeout": "ARGOCD_GATEWAY_ARGOCD_REQUEST_TIMEOUT",
    "--argocd-max-body-bytes": "ARGOCD_GATEWAY_ARGOCD_MAX_BODY_BYTES",
    "--argocd-max-line-bytes": "ARGOCD_GATEWAY_ARGOCD_MAX_LINE_BYTES",
    "--keepalive-interval": "ARGOCD_GATEWAY_KEEPALIVE_INTERVAL",
    "--keepalive-max-failures": "ARGOCD_GATEWAY_KEEPALIVE_MAX_FAILURES",
    "--admin-addr": "ARGOCD_GATEWAY_ADMIN_ADDR",
    "--leader-elect": "ARGOCD_GATEWAY_LEADER_ELECT",
    "--lease-name": "ARGOCD_GATEWAY_LEASE_NAME",
    "--deployment": "ARGOCD_GATEWAY_SELF_UPDATE_DEPLOYMENT",
    "--cronjob": "ARGOCD_GATEWAY_SELF_UPDATE_CRONJOB",
    "--reason": "ARGOCD_GATEWAY_DEREGISTER_REASON",
}
# Flags that take a comma-separated list in their variable.
LIST_FLAGS = {"--trust-ca", "--environment", "--project", "--app-namespace"}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The plain (not valueFrom) environment of a container."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def flag_values(container: dict[str, Any], flag: str) -> list[str]:
    """What the container sets a flag to, through its variable ([] when unset)."""
    value = env_of(container).get(FLAG_ENV[flag])
    if value is None:
        return []
    return value.split(",") if flag in LIST_FLAGS else [value]


def one_flag(container: dict[str, Any], flag: str) -> str:
    values = flag_values(container, flag)
    assert len(values) == 1, f"{flag} ({FLAG_ENV[flag]}) expected once in {container.get('env')}"
    return values[0]


def flag_on(container: dict[str, Any], flag: str) -> bool:
    """A boolean flag's variable is always set: "true" or "false"."""
    value = one_flag(container, flag)
    assert value in ("true", "false"), (flag, value)
    return value == "true"


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [v for v in spec["volumes"] if v["name"] == name]
    assert len(found) == 1, f"volume {name} not in {[v['name'] for v in spec['volumes']]}"
    return found[0]


def mount(container: dict[str, Any], name: str) -> dict[str, Any]:
    found = [m for m in container.get("volumeMounts", []) if m["name"] == name]
    assert len(found) == 1, f"mount {name} not in {container.get('volumeMounts')}"
    return found[0]


def has_mount(container: dict[str, Any], name: str) -> bool:
    return any(m["name"] == name for m in container.get("volumeMounts", []))


def deployment_spec(r: Render) -> dict[str, Any]:
    return r.pod_specs()[f"Deployment/{FULLNAME}"]


def job_spec(r: Render) -> dict[str, Any]:
    return r.pod_specs()[f"Job/{FULLNAME}-register"]


def cron_spec(r: Render) -> dict[str, Any]:
    return r.pod_specs()[f"CronJob/{FULLNAME}-self-update"]


# ---------------------------------------------------------------------------------------------
# Case-specific checks


def check_defaults(r: Render) -> None:
    gw = r.gateway()
    assert args_of(gw) == ["run"]
    assert one_flag(gw, "--hub-url") == HUB
    assert one_flag(gw, "--argocd-server") == "https://argocd-server.argocd.svc.cluster.local"
    assert one_flag(gw, "--identity") == f"secret:{NAMESPACE}/{FULLNAME}-identity"
    assert one_flag(gw, "--admin-addr") == "0.0.0.0:9090"
    assert one_flag(gw, "--keepalive-interval") == "30"
    assert one_flag(gw, "--keepalive-max-failures") == "10"
    assert one_flag(gw, "--log-format") == "json"
    assert one_flag(gw, "--hub-transport") == "auto"
    for off in ("--argocd-insecure", "--argocd-plaintext", "--hub-plaintext", "--debug"):
        assert not flag_on(gw, off)
    assert flag_on(gw, "--watch")
    assert one_flag(gw, "--poll-interval") == "30s"
    assert one_flag(gw, "--resync-interval") == "5m"
    assert one_flag(gw, "--cluster-interval") == "60s"
    assert one_flag(gw, "--argocd-request-timeout") == "30s"
    # Large integers stay integers (Helm reads YAML numbers as floats: 5.36870912e+08).
    assert one_flag(gw, "--argocd-max-body-bytes") == "536870912"
    assert one_flag(gw, "--argocd-max-line-bytes") == "16777216"
    # The required token source: an existing Secret, mounted as a file.
    assert one_flag(gw, "--argocd-token-file") == f"{PATHS['argocd_token']}/token"
    assert volume(deployment_spec(r), "argocd-token")["secret"]["secretName"] == ACCOUNT_SECRET
    for absent in ("--argocd-project-tokens-dir", "--trust-ca", "--leader-elect",
                   "--registration-token-file", "--hub-fingerprint", "--hub-ca-fingerprint",
                   "--lease-name", "--name", "--environment", "--argocd-web-url", "--selector",
                   "--project", "--app-namespace", "--argocd-username", "--argocd-password-file"):
        assert flag_values(gw, absent) == []
    # Probes on the admin server, which always runs, even without metrics.enabled.
    port = gw["ports"][0]
    assert port == {"name": "admin", "containerPort": 9090, "protocol": "TCP"}
    assert gw["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert gw["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    env = {e["name"]: e for e in gw["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    spec = deployment_spec(r)
    assert spec["terminationGracePeriodSeconds"] > 5
    assert spec["serviceAccountName"] == FULLNAME
    assert r.get("ServiceAccount", FULLNAME)
    assert gw["image"] == "ghcr.io/argocd-gateway/argocd-gateway:0.1.0"
    dep = r.deployment()
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    # Default features: registration and deregistration hooks and self-update on; metrics
    # Service, PDB off.
    assert r.has("Job", f"{FULLNAME}-register")
    assert r.has("Job", f"{FULLNAME}-deregister")
    assert r.has("CronJob", f"{FULLNAME}-self-update")
    assert not r.all("Service") and not r.all("ServiceMonitor")
    assert not r.all("PodDisruptionBudget")
    # No Secret is made without inline tokens, and the identity Secret is never templated.
    assert not r.all("Secret")
    assert not r.all("ConfigMap")
    # Minimal gateway RBAC: its identity Secret by name, create unnamed, no Lease without HA.
    role = r.get("Role", FULLNAME)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"],
         "resourceNames": [f"{FULLNAME}-identity"], "verbs": ["get", "update", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    binding = r.get("RoleBinding", FULLNAME)
    assert binding["roleRef"]["name"] == FULLNAME
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME,
                                    "namespace": NAMESPACE}]
    assert "kubectl -n argocd exec deploy/gw-argocd-gateway -- /argocd-gateway check" in r.notes
    assert f"kubectl -n argocd logs deploy/{FULLNAME}" in r.notes
    # NOTES says only what is true: a token source is required, so no "no applications" hint;
    # the install can be followed from the hub; uninstall deregisters.
    assert "no Argo CD token" not in r.notes and "no applications" not in r.notes
    assert "argocd-gateway hub token status" in r.notes and "--wait" in r.notes
    assert "`helm uninstall` deregisters the gateway" in r.notes


def check_insecure(r: Render) -> None:
    # The registration preflight reads Argo CD the way the gateway will.
    for c in (r.gateway(), r.register()):
        assert flag_on(c, "--argocd-insecure")
        assert not flag_on(c, "--argocd-plaintext")


def check_plaintext(r: Render) -> None:
    for c in (r.gateway(), r.register()):
        assert flag_on(c, "--argocd-plaintext")
        assert not flag_on(c, "--argocd-insecure")


def check_neither_tls_flag(r: Render) -> None:
    assert not flag_on(r.gateway(), "--argocd-insecure")
    assert not flag_on(r.gateway(), "--argocd-plaintext")


def check_ha(r: Render) -> None:
    gw = r.gateway()
    assert flag_on(gw, "--leader-elect")
    assert one_flag(gw, "--lease-name") == FULLNAME
    dep = r.deployment()
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pdb = r.get("PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    rules = r.get("Role", FULLNAME)["rules"]
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "resourceNames": [FULLNAME], "verbs": ["get", "update"]} in rules
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "verbs": ["create"]} in rules
    assert f"kubectl -n argocd get lease {FULLNAME}" in r.notes


def check_project_tokens_inline(r: Render) -> None:
    gw = r.gateway()
    assert one_flag(gw, "--argocd-project-tokens-dir") == PATHS["project_tokens"]
    assert flag_values(gw, "--argocd-token-file") == []
    name = f"{FULLNAME}-argocd-project-tokens"
    secret = r.get("Secret", name)
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"team-a": PROJECT_A_TOKEN, "_unscoped": UNSCOPED_TOKEN}
    vol = volume(deployment_spec(r), "argocd-project-tokens")
    # Mounted whole (no items, no subPath) so each project is a file and rotation is seen.
    assert vol["secret"] == {"secretName": name, "defaultMode": 0o440}
    m = mount(gw, "argocd-project-tokens")
    assert m["mountPath"] == PATHS["project_tokens"] and "subPath" not in m
    # The preflight's hook copy.
    hook = r.get("Secret", f"{FULLNAME}-hook-projects")
    assert hook["data"] == secret["data"]
    assert volume(job_spec(r), "argocd-project-tokens")["secret"] == {
        "secretName": f"{FULLNAME}-hook-projects", "defaultMode": 0o440}
    assert one_flag(r.register(), "--argocd-project-tokens-dir") == PATHS["project_tokens"]


def check_project_tokens_existing(r: Render) -> None:
    gw = r.gateway()
    assert one_flag(gw, "--argocd-project-tokens-dir") == PATHS["project_tokens"]
    assert volume(deployment_spec(r), "argocd-project-tokens")["secret"] == {
        "secretName": "team-tokens", "defaultMode": 0o440}
    assert volume(job_spec(r), "argocd-project-tokens")["secret"]["secretName"] == "team-tokens"
    assert not r.all("Secret")


def check_argocd_token_inline(r: Render) -> None:
    gw = r.gateway()
    assert one_flag(gw, "--argocd-token-file") == f"{PATHS['argocd_token']}/token"
    secret = r.get("Secret", f"{FULLNAME}-argocd-token")
    assert base64.b64decode(secret["data"]["token"]).decode() == ARGOCD_TOKEN
    vol = volume(deployment_spec(r), "argocd-token")["secret"]
    assert vol["secretName"] == f"{FULLNAME}-argocd-token"
    assert vol["items"] == [{"key": "token", "path": "token"}]
    assert mount(gw, "argocd-token")["mountPath"] == PATHS["argocd_token"]
    # The registration preflight reads Argo CD with the same token, from a hook copy: the
    # regular Secret does not exist yet when a pre-install hook runs.
    hook = r.get("Secret", f"{FULLNAME}-hook-argocd")
    assert base64.b64decode(hook["data"]["token"]).decode() == ARGOCD_TOKEN
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    job = r.register()
    assert one_flag(job, "--argocd-token-file") == f"{PATHS['argocd_token']}/token"
    assert volume(job_spec(r), "argocd-token")["secret"]["secretName"] == f"{FULLNAME}-hook-argocd"
    assert mount(job, "argocd-token")["mountPath"] == PATHS["argocd_token"]


def check_existing_secrets(r: Render) -> None:
    gw, job = r.gateway(), r.register()
    # Argo CD token from an existing Secret under a custom key, mapped to the fixed file name.
    assert one_flag(gw, "--argocd-token-file") == f"{PATHS['argocd_token']}/token"
    vol = volume(deployment_spec(r), "argocd-token")["secret"]
    assert vol["secretName"] == "argocd-gateway-account"
    assert vol["items"] == [{"key": "jwt", "path": "token"}]
    # Registration token from an existing Secret, in both the Job and the Deployment.
    for c, spec in ((gw, deployment_spec(r)), (job, job_spec(r))):
        assert one_flag(c, "--registration-token-file") == f"{PATHS['registration_token']}/token"
        reg = volume(spec, "registration-token")["secret"]
        assert reg["secretName"] == "hub-registration"
        assert reg["items"] == [{"key": "reg-token", "path": "token"}]
        assert reg["optional"] is True
        assert mount(c, "registration-token")["mountPath"] == PATHS["registration_token"]
    # Server certificates from an existing Secret, trusted by every hub client.
    for c, spec in ((gw, deployment_spec(r)), (job, job_spec(r)), (r.self_update(), cron_spec(r))):
        assert flag_values(c, "--trust-ca") == [PATHS["trust_secret"]]
        assert volume(spec, "trust-secret")["secret"]["secretName"] == "corp-ca"
        assert mount(c, "trust-secret")["mountPath"] == PATHS["trust_secret"]
    # The chart makes no Secret or ConfigMap of its own here.
    assert not r.all("Secret") and not r.all("ConfigMap")


def check_username_password(r: Render) -> None:
    """A local account and its password Secret instead of a token; the WebSocket transport."""
    gw, job = r.gateway(), r.register()
    for c, spec in ((gw, deployment_spec(r)), (job, job_spec(r))):
        assert one_flag(c, "--argocd-username") == "deploy-bot"
        assert one_flag(c, "--argocd-password-file") == f"{PATHS['argocd_password']}/password"
        assert flag_values(c, "--argocd-token-file") == []
        vol = volume(spec, "argocd-password")["secret"]
        assert vol["secretName"] == "argocd-login"
        assert vol["items"] == [{"key": "pw", "path": "password"}]
        assert mount(c, "argocd-password")["mountPath"] == PATHS["argocd_password"]
        assert not has_mount(c, "argocd-token")
    for c in (gw, job, r.self_update()):
        assert one_flag(c, "--hub-transport") == "websocket"


def check_registration_inline(r: Render) -> None:
    gw, job = r.gateway(), r.register()
    regular = r.get("Secret", f"{FULLNAME}-registration-token")
    hook = r.get("Secret", f"{FULLNAME}-register-token")
    for s in (regular, hook):
        assert base64.b64decode(s["data"]["token"]).decode() == REGISTRATION_TOKEN
    assert "helm.sh/hook" not in regular["metadata"].get("annotations", {})
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    # The pre-install Job uses the hook copy (the regular one does not exist yet).
    assert volume(job_spec(r), "registration-token")["secret"]["secretName"] == hook["metadata"]["name"]
    # The Deployment's copy is optional: a pod with an identity must start without it.
    dep_vol = volume(deployment_spec(r), "registration-token")["secret"]
    assert dep_vol["secretName"] == regular["metadata"]["name"] and dep_vol["optional"] is True
    for c in (gw, job):
        assert one_flag(c, "--registration-token-file") == f"{PATHS['registration_token']}/token"
        assert one_flag(c, "--name") == "prod eu #1: main"
        assert flag_values(c, "--environment") == ["production", "eu-west"]
        assert one_flag(c, "--argocd-web-url") == "https://argocd.example.com"
        assert one_flag(c, "--hub-ca-fingerprint") == "AB:CD:EF"
    # Self-update never registers: no token, no registration metadata.
    su = r.self_update()
    assert flag_values(su, "--registration-token-file") == [] and not has_mount(su, "registration-token")
    assert one_flag(su, "--hub-ca-fingerprint") == "AB:CD:EF"


def check_server_certificates(r: Render) -> None:
    cm = r.get("ConfigMap", f"{FULLNAME}-trust")
    assert cm["data"] == {"ca-0.pem": PEM, "ca-1.pem": PEM.replace("fakeCA", "secondCA")}
    hook_cm = r.get("ConfigMap", f"{FULLNAME}-register-trust")
    assert hook_cm["data"] == cm["data"]
    # Both hooks trust the hub through the hook copy: registration and deregistration.
    assert hook_cm["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade,pre-delete"
    expected = [PATHS["trust_cm"], PATHS["trust_secret"]]
    for kind, name, cm_name in (("Deployment", FULLNAME, cm), ("Job", f"{FULLNAME}-register", hook_cm),
                                ("Job", f"{FULLNAME}-deregister", hook_cm),
                                ("CronJob", f"{FULLNAME}-self-update", cm)):
        c = r.container(kind, name)
        spec = r.pod_specs()[f"{kind}/{name}"]
        assert flag_values(c, "--trust-ca") == expected
        assert volume(spec, "trust-certificates")["configMap"]["name"] == cm_name["metadata"]["name"]
        assert mount(c, "trust-certificates")["mountPath"] == PATHS["trust_cm"]
    # A changed CA list changes the pod template, so the pods restart and reload trust.
    annotations = r.deployment()["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/trust"]) == 64


def check_metrics(r: Render) -> None:
    svc = r.get("Service", f"{FULLNAME}-metrics")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9102, "targetPort": "admin",
                                     "protocol": "TCP"}]
    pod_labels = r.deployment()["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    gw = r.gateway()
    assert one_flag(gw, "--admin-addr") == "0.0.0.0:9102"
    assert gw["ports"][0]["containerPort"] == 9102
    # ServiceMonitor is a CRD: its shape is checked here by hand instead of by schema.
    sm = r.get("ServiceMonitor", FULLNAME)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == NAMESPACE
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                        "scrapeTimeout": "5s"}]
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) == {"selector", "namespaceSelector", "endpoints"}


def check_metrics_without_monitor(r: Render) -> None:
    assert r.has("Service", f"{FULLNAME}-metrics")
    assert not r.all("ServiceMonitor")


def check_monitor_needs_metrics(r: Render) -> None:
    # serviceMonitor.enabled alone would scrape a Service that does not exist.
    assert not r.all("ServiceMonitor") and not r.all("Service")
    assert r.gateway()["readinessProbe"]["httpGet"]["port"] == "admin"


def check_auto_update_off(r: Render) -> None:
    assert not r.all("CronJob")
    name = f"{FULLNAME}-self-update"
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert not r.has(kind, name)
    assert "self-update" not in r.notes


def hook_events(r: Render) -> dict[tuple[str, str], set[str]]:
    return {(d["kind"], d["metadata"]["name"]): set(d["metadata"]["annotations"]["helm.sh/hook"].split(","))
            for d in r.docs if "helm.sh/hook" in d["metadata"].get("annotations", {})}


def check_register_off(r: Render) -> None:
    # No registration hook; only the uninstall's deregistration hook and its prerequisites.
    assert not r.has("Job", f"{FULLNAME}-register")
    assert r.has("Job", f"{FULLNAME}-deregister")
    events = hook_events(r)
    assert events and all(e == {"pre-delete"} for e in events.values()), events
    rules = r.get("Role", f"{FULLNAME}-register")["rules"]
    assert all("create" not in rule["verbs"] for rule in rules), rules
    # The Deployment registers itself from the same token.
    gw = r.gateway()
    assert one_flag(gw, "--registration-token-file") == f"{PATHS['registration_token']}/token"
    assert volume(deployment_spec(r), "registration-token")["secret"]["secretName"] == \
        f"{FULLNAME}-registration-token"
    assert not r.has("Secret", f"{FULLNAME}-register-token")


def check_self_update(r: Render) -> None:
    cron = r.get("CronJob", f"{FULLNAME}-self-update")
    spec = cron["spec"]
    assert spec["schedule"] == "30 3 * * 1"
    assert spec["successfulJobsHistoryLimit"] == 2 and spec["failedJobsHistoryLimit"] == 4
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    su = r.self_update()
    assert args_of(su) == ["self-update"]
    # The names it patches are exactly the objects the chart rendered.
    assert r.has("Deployment", one_flag(su, "--deployment"))
    assert r.has("CronJob", one_flag(su, "--cronjob"))
    assert one_flag(su, "--identity") == f"secret:{NAMESPACE}/{FULLNAME}-identity"
    assert one_flag(su, "--hub-url") == HUB
    env = {e["name"] for e in su["env"]}
    assert "POD_NAMESPACE" in env
    role = r.get("Role", f"{FULLNAME}-self-update")
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": [FULLNAME],
         "verbs": ["get", "patch"]},
        {"apiGroups": ["batch"], "resources": ["cronjobs"],
         "resourceNames": [f"{FULLNAME}-self-update"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [f"{FULLNAME}-identity"],
         "verbs": ["get"]},
    ]
    assert cron_spec(r)["serviceAccountName"] == f"{FULLNAME}-self-update"
    binding = r.get("RoleBinding", f"{FULLNAME}-self-update")
    assert binding["subjects"][0]["name"] == f"{FULLNAME}-self-update"


def check_hub_options(r: Render) -> None:
    for c in (r.gateway(), r.register(), r.self_update(), r.deregister()):
        assert one_flag(c, "--hub-url") == "http://hub.internal:8080"
        assert flag_on(c, "--hub-plaintext")
        assert one_flag(c, "--hub-fingerprint") == "sha256:0123abcd"
        assert one_flag(c, "--log-format") == "text"
        assert flag_on(c, "--debug")
    gw = r.gateway()
    assert one_flag(gw, "--keepalive-interval") == "0"
    assert one_flag(gw, "--keepalive-max-failures") == "3"
    assert one_flag(gw, "--argocd-server") == "http://argocd-server.argocd:80/argocd"
    assert flag_on(gw, "--argocd-plaintext")


def check_string_false_is_false(r: Render) -> None:
    # "false" strings from --set-string must not switch anything on (a string is truthy in
    # Go templates).
    for flag in ("--argocd-insecure", "--argocd-plaintext", "--hub-plaintext", "--debug",
                 "--watch"):
        assert not flag_on(r.gateway(), flag)
    assert not r.has("Job", f"{FULLNAME}-register")
    # keepOnUninstall="false" is false: the deregistration hook stays.
    assert r.has("Job", f"{FULLNAME}-deregister")
    assert not r.all("CronJob") and not r.all("Service")


def check_usual(r: Render) -> None:
    for key, spec in r.pod_specs().items():
        assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}, key
        assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gitops",
                                        "effect": "NoSchedule"}], key
        assert spec["affinity"]["nodeAffinity"], key
        assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}], key
        c = spec["containers"][0]
        assert c["image"] == "registry.example.com/mirror/argocd-gateway:0.1.1", key
        assert c["imagePullPolicy"] == "Always", key
        # Helm merges maps: the override replaces the limit and keeps the default requests.
        assert c["resources"] == {"limits": {"memory": "64Mi"},
                                  "requests": {"cpu": "10m", "memory": "32Mi"}}, key
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["HTTPS_PROXY"] == "http://proxy.corp:3128", key
        assert env["NO_PROXY"] == "argocd-server.argocd", key
    pod_meta = r.deployment()["spec"]["template"]["metadata"]
    assert pod_meta["annotations"]["example.com/team"] == "platform"
    assert pod_meta["labels"]["example.com/tier"] == "gitops"
    assert "checksum/trust" in pod_meta["annotations"]
    # An existing ServiceAccount: none is made, the RoleBinding names it.
    assert not r.has("ServiceAccount", FULLNAME) and not r.has("ServiceAccount", "gateway-sa")
    assert deployment_spec(r)["serviceAccountName"] == "gateway-sa"
    assert r.get("RoleBinding", FULLNAME)["subjects"][0]["name"] == "gateway-sa"


def check_service_account_annotations(r: Render) -> None:
    sa = r.get("ServiceAccount", "custom-sa")
    assert sa["metadata"]["annotations"] == {"example.com/owner": "platform"}
    assert deployment_spec(r)["serviceAccountName"] == "custom-sa"


def check_argocd_view(r: Render) -> None:
    # Poll mode, intervals, filters and limits reach both the gateway and the preflight.
    for c in (r.gateway(), r.register()):
        assert not flag_on(c, "--watch")
        assert one_flag(c, "--poll-interval") == "2m"
        assert one_flag(c, "--resync-interval") == "10m"
        assert one_flag(c, "--cluster-interval") == "5m"
        assert one_flag(c, "--argocd-request-timeout") == "45s"
        assert one_flag(c, "--argocd-max-body-bytes") == "1073741824"
        assert one_flag(c, "--argocd-max-line-bytes") == "33554432"
        assert one_flag(c, "--selector") == "team=payments,tier!=test"
        assert flag_values(c, "--project") == ["team-a", "team-b"]
        assert flag_values(c, "--app-namespace") == ["argocd", "apps"]


def check_keep_on_uninstall(r: Render) -> None:
    assert not r.has("Job", f"{FULLNAME}-deregister")
    assert all("pre-delete" not in e for e in hook_events(r).values())
    assert "keeps the gateway registered" in r.notes


def check_fullname_override(r: Render) -> None:
    dep = r.get("Deployment", "edge")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert one_flag(c, "--identity") == f"secret:{NAMESPACE}/edge-identity"
    assert r.has("CronJob", "edge-self-update") and r.has("Job", "edge-register")
    assert r.has("Job", "edge-deregister")
    assert r.get("Job", "edge-deregister")["spec"]["template"]["spec"]["serviceAccountName"] == "edge-register"


def check_name_override(r: Render) -> None:
    assert r.has("Deployment", "gw-relay")
    assert r.get("Deployment", "gw-relay")["metadata"]["labels"]["app.kubernetes.io/name"] == "relay"


@dataclass
class Case:
    id: str
    values: dict[str, Any]
    check: Callable[[Render], None]
    secrets: list[str] = field(default_factory=list)
    # Secrets the user references by name (not rendered by the chart).
    external: set[str] = field(default_factory=set)


CASES = [
    Case("defaults", REQUIRED, check_defaults),
    # The two commands from the issue, through Helm's own --set parser.
    Case("set-insecure", with_set('gateway.argocd.insecure=true', 'gateway.argocd.plaintext=false'),
         check_insecure),
    Case("set-plaintext", with_set('gateway.argocd.insecure=false', 'gateway.argocd.plaintext=true'),
         check_plaintext),
    Case("set-string-insecure", with_set_string('gateway.argocd.insecure=true',
                                                'gateway.argocd.plaintext=false'), check_insecure),
    Case("set-string-plaintext", with_set_string('gateway.argocd.insecure=false',
                                                 'gateway.argocd.plaintext=true'), check_plaintext),
    Case("set-both-false", with_set('gateway.argocd.insecure=false', 'gateway.argocd.plaintext=false'),
         check_neither_tls_flag),
    Case("set-string-all-false", with_set_string(
        "gateway.argocd.insecure=false,gateway.argocd.plaintext=false,gateway.hub.plaintext=false",
        "gateway.debug=false,registration.register=false,autoUpdate.enabled=false",
        "metrics.enabled=false,gateway.argocd.watch=false,registration.keepOnUninstall=false",
        "autoUpdate.enabled=false"), check_string_false_is_false),
    Case("ha", with_set("replicaCount=2"), check_ha),
    Case("project-tokens-inline", deep_merge(REQUIRED, NO_ACCOUNT_SECRET, {"gateway": {"argocd": {
        "projectAuthentication": [{"project": "team-a", "token": PROJECT_A_TOKEN},
                                  {"project": "_unscoped", "token": UNSCOPED_TOKEN}]}}}),
         check_project_tokens_inline, secrets=[PROJECT_A_TOKEN, UNSCOPED_TOKEN]),
    Case("project-tokens-existing", with_set("gateway.argocd.authenticationTokenSecretName=",
                                             "gateway.argocd.projectAuthenticationSecretName=team-tokens"),
         check_project_tokens_existing, external={"team-tokens"}),
    Case("argocd-token-inline", deep_merge(REQUIRED, NO_ACCOUNT_SECRET, {"gateway": {"argocd": {
        "authenticationToken": ARGOCD_TOKEN}}}), check_argocd_token_inline, secrets=[ARGOCD_TOKEN]),
    Case("existing-secrets", with_set(
        "gateway.argocd.authenticationTokenSecretName=argocd-gateway-account",
        "gateway.argocd.authenticationTokenSecretKey=jwt",
        "registration.tokenSecretName=hub-registration,registration.tokenSecretKey=reg-token",
        "gateway.serverCertificateSecretName=corp-ca"), check_existing_secrets,
         external={"argocd-gateway-account", "hub-registration", "corp-ca"}),
    Case("username-password", with_set(
        "gateway.argocd.authenticationTokenSecretName=", "gateway.argocd.username=deploy-bot",
        "gateway.argocd.passwordSecretName=argocd-login", "gateway.argocd.passwordSecretKey=pw",
        "gateway.hub.transport=websocket"), check_username_password, external={"argocd-login"}),
    Case("registration-inline", deep_merge(REQUIRED, {"registration": {
        "token": REGISTRATION_TOKEN, "name": "prod eu #1: main", "environments": ["production", "eu-west"],
        "argocd": {"webUiUrl": "https://argocd.example.com"}, "caFingerprint": "AB:CD:EF"}}),
         check_registration_inline, secrets=[REGISTRATION_TOKEN]),
    Case("server-certificates", deep_merge(REQUIRED, {"gateway": {
        "serverCertificates": [PEM, PEM.replace("fakeCA", "secondCA")],
        "serverCertificateSecretName": "corp-ca"}}), check_server_certificates, external={"corp-ca"}),
    Case("metrics-servicemonitor", with_set(
        "metrics.enabled=true,metrics.port=9102,metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.interval=15s,metrics.serviceMonitor.scrapeTimeout=5s",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack"), check_metrics),
    Case("metrics-no-servicemonitor", with_set("metrics.enabled=true"), check_metrics_without_monitor),
    Case("servicemonitor-without-metrics", with_set("metrics.serviceMonitor.enabled=true"),
         check_monitor_needs_metrics),
    Case("auto-update-off", with_set("autoUpdate.enabled=false"), check_auto_update_off),
    Case("self-update-settings", with_set(
        "autoUpdate.schedule=30 3 * * 1,autoUpdate.successfulJobsHistoryLimit=2",
        "autoUpdate.failedJobsHistoryLimit=4,autoUpdate.job.backoffLimit=5"), check_self_update),
    Case("register-off", deep_merge(REQUIRED, {"registration": {"register": False,
                                                                "token": REGISTRATION_TOKEN}}),
         check_register_off, secrets=[REGISTRATION_TOKEN]),
    Case("hub-and-logging", deep_merge(with_set(
        "gateway.hub.serverGrpcUrl=http://hub.internal:8080,gateway.hub.plaintext=true",
        "gateway.hub.serverThumbprint=sha256:0123abcd",
        "gateway.hub.keepAlive.intervalSeconds=0,gateway.hub.keepAlive.maxConsecutiveFailures=3",
        "gateway.debug=true,gateway.logFormat=text,gateway.argocd.plaintext=true",
        "gateway.argocd.serverUrl=http://argocd-server.argocd:80/argocd")), check_hub_options),
    Case("usual-values", deep_merge(REQUIRED, {
        "image": {"registry": "registry.example.com", "repository": "mirror/argocd-gateway",
                  "tag": "0.1.1", "pullPolicy": "Always",
                  "imagePullSecrets": ["regcred", {"name": "mirror"}]},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gitops",
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}},
        "podAnnotations": {"example.com/team": "platform"},
        "podLabels": {"example.com/tier": "gitops"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"},
                     {"name": "NO_PROXY", "value": "argocd-server.argocd"}],
        "resources": {"limits": {"memory": "64Mi"}},
        "serviceAccount": {"create": False, "name": "gateway-sa"},
    }), check_usual),
    Case("service-account-annotations", with_set(
        "serviceAccount.name=custom-sa,serviceAccount.annotations.example\\.com/owner=platform"),
        check_service_account_annotations),
    Case("fullname-override", with_set("fullnameOverride=edge"), check_fullname_override),
    Case("argocd-view", with_set(
        "gateway.argocd.watch=false,gateway.argocd.pollInterval=2m,gateway.argocd.resyncInterval=10m",
        "gateway.argocd.clusterInterval=5m,gateway.argocd.requestTimeout=45s",
        "gateway.argocd.maxBodyBytes=1073741824,gateway.argocd.maxLineBytes=33554432",
        "gateway.argocd.selector=team=payments\\,tier!=test",
        "gateway.argocd.projects={team-a,team-b},gateway.argocd.applicationNamespaces={argocd,apps}"),
         check_argocd_view),
    Case("keep-on-uninstall", with_set("registration.keepOnUninstall=true"), check_keep_on_uninstall),
    Case("name-override", with_set("nameOverride=relay"), check_name_override),
]


@pytest.fixture(scope="session")
def rendered(chart):
    return {case.id: render(chart, case.values) for case in CASES}


def case_ids():
    return [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_case_values_reach_the_pods(case, rendered):
    case.check(rendered[case.id])


# ---------------------------------------------------------------------------------------------
# Invariants every case must keep


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_every_manifest_validates_against_kubernetes(case, rendered):
    r = rendered[case.id]
    assert r.docs
    for doc in r.docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            # A CRD kubernetes-validate has no schema for; check_metrics checks it by hand.
            assert doc["kind"] == "ServiceMonitor"
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    # Namespaced only: a gateway must never need cluster-wide rights.
    assert not [d for d in r.docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


ALLOWED_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                              "persistentVolumeClaim", "projected", "secret"}


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_every_pod_passes_restricted_pod_security(case, rendered):
    specs = rendered[case.id].pod_specs()
    assert specs
    for key, spec in specs.items():
        pod_sc = spec.get("securityContext", {})
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), key
        for vol in spec.get("volumes", []):
            kinds = set(vol) - {"name"}
            assert kinds <= ALLOWED_RESTRICTED_VOLUMES, (key, vol)
        containers = spec.get("containers", []) + spec.get("initContainers", [])
        for c in containers:
            sc = c.get("securityContext", {})
            where = f"{key} container {c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(user, int) and user != 0, where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
            assert not any(p.get("hostPort") for p in c.get("ports", [])), where
            # Beyond "restricted": the hardening the chart promises.
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert mount(c, "tmp")["mountPath"] == "/tmp", where
        assert volume(spec, "tmp")["emptyDir"] is not None, key
        assert pod_sc.get("runAsUser") == 65532 and pod_sc.get("fsGroup") == 65532, key


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_secrets_only_live_in_secrets(case, rendered):
    r = rendered[case.id]
    exposed = [r.notes]
    for spec in r.pod_specs().values():
        for c in spec["containers"]:
            exposed.extend(args_of(c))
            for e in c.get("env", []):
                exposed.append(str(e.get("value", "")))
    for cm in r.all("ConfigMap"):
        exposed.extend(cm.get("data", {}).values())
    for doc in r.docs:
        exposed.extend(str(v) for v in doc["metadata"].get("annotations", {}).values())
    exposed_text = "\n".join(exposed)
    in_secrets = {base64.b64decode(v).decode()
                  for s in r.all("Secret") for v in s.get("data", {}).values()}
    for secret in case.secrets:
        assert secret not in exposed_text
        assert secret in in_secrets, "the secret must reach the pods through a Secret"
    # Values are never passed as env on top of the files.
    for spec in r.pod_specs().values():
        for c in spec["containers"]:
            for e in c.get("env", []):
                assert "secretKeyRef" not in e.get("valueFrom", {}), e


SUBCOMMANDS = {"Deployment": "run", "CronJob": "self-update"}


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_nothing_but_the_subcommand_on_the_command_line(case, rendered):
    """Settings (and any secret) never show in the process list: only the subcommand is an
    argument, everything else is environment or a mounted file."""
    for key, spec in rendered[case.id].pod_specs().items():
        c = spec["containers"][0]
        kind, name = key.split("/", 1)
        want = SUBCOMMANDS.get(kind) or ("deregister" if name.endswith("-deregister") else "register")
        assert args_of(c) == [want], (key, c.get("args"))
        assert "command" not in c, key


def test_flag_variables_are_the_binarys(cli):
    """FLAG_ENV, which these tests read the pods through, pairs each flag with the variable the
    binary really reads for it."""
    pairs: dict[str, str] = {}
    for sub in ("run", "register", "deregister", "self-update", "check"):
        pairs |= cli.flag_env(sub)
    for flag, env in FLAG_ENV.items():
        assert pairs.get(flag) == env, (flag, env, pairs.get(flag))


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_env_names_are_read_by_the_subcommand(case, rendered, cli):
    """Every ARGOCD_GATEWAY_* variable a pod gets is one its subcommand reads: a misspelt
    name would be ignored silently and the pod would run with a default."""
    for key, spec in rendered[case.id].pod_specs().items():
        c = spec["containers"][0]
        sub = args_of(c)[0]
        known = cli.env_vars(sub)
        for e in c.get("env", []):
            if e["name"].startswith("ARGOCD_GATEWAY_"):
                assert e["name"] in known, (key, sub, e["name"])


def test_check_in_the_pod_reads_the_pods_configuration(rendered, cli):
    """`kubectl exec deploy/… -- /argocd-gateway check` runs with the container's environment:
    every Argo CD and hub setting the gateway gets is one `check` reads too."""
    for case in ("defaults", "argocd-view", "server-certificates", "hub-and-logging"):
        gw = rendered[case].gateway()
        check_vars = cli.env_vars("check")
        run_only = {"ARGOCD_GATEWAY_KEEPALIVE_INTERVAL", "ARGOCD_GATEWAY_KEEPALIVE_MAX_FAILURES",
                    "ARGOCD_GATEWAY_LEADER_ELECT", "ARGOCD_GATEWAY_LEASE_NAME",
                    "ARGOCD_GATEWAY_REGISTRATION_TOKEN_FILE", "ARGOCD_GATEWAY_NAME",
                    "ARGOCD_GATEWAY_ENVIRONMENT", "ARGOCD_GATEWAY_ARGOCD_WEB_URL",
                    # What the relay sends the hub; `check` sends nothing.
                    "ARGOCD_GATEWAY_MAX_ANSWER_BYTES", "ARGOCD_GATEWAY_MAX_ENTITY_BYTES"}
        for name in env_of(gw):
            if name.startswith("ARGOCD_GATEWAY_") and name not in run_only:
                assert name in check_vars, (case, name)


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_file_flags_point_at_mounts_and_references_resolve(case, rendered):
    r = rendered[case.id]
    made = {(d["kind"], d["metadata"]["name"]) for d in r.docs}
    for key, spec in r.pod_specs().items():
        c = spec["containers"][0]
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert {m["name"] for m in mounts.values()} == set(volumes), key
        for flag in ("--trust-ca", "--argocd-token-file", "--argocd-project-tokens-dir",
                     "--registration-token-file"):
            if FLAG_ENV[flag] not in env_of(c):
                continue
            for path in flag_values(c, flag):
                owner = [p for p in mounts if path == p or path.startswith(p + "/")]
                assert owner, f"{key}: {flag}={path} is not under a mount"
                assert mounts[owner[0]]["readOnly"] is True
        for vol in volumes.values():
            if "secret" in vol:
                name = vol["secret"]["secretName"]
                assert ("Secret", name) in made or name in case.external | {ACCOUNT_SECRET}, (key, name)
            if "configMap" in vol:
                assert ("ConfigMap", vol["configMap"]["name"]) in made, (key, vol)
        sa = spec["serviceAccountName"]
        assert ("ServiceAccount", sa) in made or sa == "gateway-sa", (key, sa)
    for binding in r.all("RoleBinding"):
        assert ("Role", binding["roleRef"]["name"]) in made


# ---------------------------------------------------------------------------------------------
# Hooks, lint, golden file, versions


def test_registration_hooks_run_after_their_prerequisites(rendered):
    r = rendered["registration-inline"]
    hooks = {(d["kind"], d["metadata"]["name"]): d["metadata"]["annotations"]
             for d in r.docs if "helm.sh/hook" in d["metadata"].get("annotations", {})}
    events = lambda a: set(a["helm.sh/hook"].split(","))  # noqa: E731
    job = hooks.pop(("Job", f"{FULLNAME}-register"))
    assert job["helm.sh/hook"] == "pre-install,pre-upgrade"
    dereg = hooks.pop(("Job", f"{FULLNAME}-deregister"))
    assert dereg["helm.sh/hook"] == "pre-delete"
    # What both Jobs need exists before either runs: a pre-install hook runs before the
    # release's resources exist, and the pre-delete hook must also work when `--atomic`
    # cleans up an install whose resources were never made.
    shared = {("ServiceAccount", f"{FULLNAME}-register"), ("Role", f"{FULLNAME}-register"),
              ("RoleBinding", f"{FULLNAME}-register")}
    register_only = {("Secret", f"{FULLNAME}-register-token")}
    assert set(hooks) == shared | register_only
    for key, annotations in hooks.items():
        wanted = events(job) | (events(dereg) if key in shared else set())
        assert events(annotations) == wanted, key
        assert int(annotations["helm.sh/hook-weight"]) < int(job["helm.sh/hook-weight"]), key
        assert int(annotations["helm.sh/hook-weight"]) < int(dereg["helm.sh/hook-weight"]), key
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"], key
    assert job_spec(r)["serviceAccountName"] == f"{FULLNAME}-register"
    assert r.pod_specs()[f"Job/{FULLNAME}-deregister"]["serviceAccountName"] == f"{FULLNAME}-register"
    # The Jobs may write only the identity Secret (plus unnamed create, to make it).
    rules = r.get("Role", f"{FULLNAME}-register")["rules"]
    assert rules[0]["resourceNames"] == [f"{FULLNAME}-identity"]
    assert rules[1] == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}
    assert args_of(r.register()) == ["register"]
    assert args_of(r.deregister()) == ["deregister"]
    for c in (r.register(), r.deregister()):
        assert one_flag(c, "--identity") == f"secret:{NAMESPACE}/{FULLNAME}-identity"
    assert "helm uninstall" in one_flag(r.deregister(), "--reason")
    # The deregistration Job never sees the registration token.
    assert flag_values(r.deregister(), "--registration-token-file") == []
    # Regular resources carry no hook annotation (Helm would not manage them otherwise).
    for kind in ("Deployment", "ServiceAccount", "Role", "RoleBinding"):
        assert "helm.sh/hook" not in r.get(kind, FULLNAME)["metadata"].get("annotations", {})


def test_lint_passes_strict():
    report = helm.lint(CHART_DIR, REQUIRED, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == []


def test_lint_reports_missing_hub_url():
    report = helm.lint(CHART_DIR, None, kube_version=f"v{KUBE_VERSION}")
    assert any("/gateway/hub/serverGrpcUrl" in e for e in report["errors"]), report


def test_default_render_matches_golden(chart):
    text = render_text(chart.render(REQUIRED, name=RELEASE, namespace=NAMESPACE, is_install=True))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), "run with UPDATE_GOLDEN=1 to create the golden file"
    assert text == GOLDEN.read_text(), "default render changed; review and rerun with UPDATE_GOLDEN=1"


def test_app_version_is_the_crate_version(chart):
    crate = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    assert chart.metadata["appVersion"] == crate
    assert chart.metadata["apiVersion"] == "v2"


def test_values_yaml_and_schema_agree(chart):
    # The defaults (plus the one required value) must satisfy the schema, and every key in
    # values.yaml must be described by it.
    chart.validate_schema(REQUIRED)
    schema = chart.schema
    assert schema is not None

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        props = node.get("properties", {})
        for key, value in values.items():
            assert key in props, f"{path}{key} is not in values.schema.json"
            if isinstance(value, dict) and props[key].get("properties"):
                walk(value, props[key], f"{path}{key}.")

    walk(chart.values, schema, "")


# ---------------------------------------------------------------------------------------------
# Rejections: each must fail and name the value


CONFLICTS = [
    ("insecure-and-plaintext", with_set("gateway.argocd.insecure=true", "gateway.argocd.plaintext=true"),
     "gateway.argocd.insecure and gateway.argocd.plaintext cannot both be true"),
    ("insecure-and-plaintext-strings", with_set_string("gateway.argocd.insecure=true",
                                                       "gateway.argocd.plaintext=true"),
     "gateway.argocd.insecure and gateway.argocd.plaintext cannot both be true"),
    ("argocd-token-and-secret", with_set(f"gateway.argocd.authenticationToken={ARGOCD_TOKEN}",
                                         "gateway.argocd.authenticationTokenSecretName=argocd-token"),
     "gateway.argocd.authenticationToken and gateway.argocd.authenticationTokenSecretName cannot both be set"),
    ("registration-token-and-secret", with_set(f"registration.token={REGISTRATION_TOKEN}",
                                               "registration.tokenSecretName=reg"),
     "registration.token and registration.tokenSecretName cannot both be set"),
    ("project-tokens-and-secret", deep_merge(REQUIRED, NO_ACCOUNT_SECRET, {"gateway": {"argocd": {
        "projectAuthentication": [{"project": "a", "token": "t"}],
        "projectAuthenticationSecretName": "tokens"}}}),
     "gateway.argocd.projectAuthentication and gateway.argocd.projectAuthenticationSecretName cannot both be set"),
    ("account-and-project-tokens", deep_merge(REQUIRED, NO_ACCOUNT_SECRET, {"gateway": {"argocd": {
        "projectAuthentication": [{"project": "a", "token": "t"}], "authenticationToken": "x"}}}),
     "cannot both be set; with per-project tokens, the _unscoped project token replaces the account token"),
    ("username-and-token", with_set("gateway.argocd.username=bot", "gateway.argocd.passwordSecretName=pw"),
     "the gateway uses exactly one kind of Argo CD credential"),
    ("username-without-password", with_set("gateway.argocd.authenticationTokenSecretName=",
                                           "gateway.argocd.username=bot"),
     "gateway.argocd.username needs gateway.argocd.passwordSecretName"),
    ("password-without-username", with_set("gateway.argocd.authenticationTokenSecretName=",
                                           "gateway.argocd.passwordSecretName=pw"),
     "gateway.argocd.passwordSecretName needs gateway.argocd.username"),
    ("account-secret-and-project-secret", with_set(
        "gateway.argocd.authenticationTokenSecretName=a,gateway.argocd.projectAuthenticationSecretName=b"),
     "cannot both be set; with per-project tokens, the _unscoped project token replaces the account token"),
]

# (id, values, the value named in the message as Helm prints it)
SCHEMA_REJECTIONS = [
    ("hub-url-missing", {}, "/gateway/hub/serverGrpcUrl"),
    # Without an Argo CD token the gateway cannot read Argo CD: refused before anything runs.
    ("argocd-token-missing", deep_merge(REQUIRED, NO_ACCOUNT_SECRET),
     "an Argo CD credential is required: set gateway.argocd.authenticationToken"),
    ("environment-with-comma", with_set("registration.environments[0]=a\\,b"),
     "/registration/environments/0"),
    ("hub-url-empty", with_set("gateway.hub.serverGrpcUrl="), "/gateway/hub/serverGrpcUrl"),
    ("insecure-not-a-bool", with_set("gateway.argocd.insecure=yes"), "/gateway/argocd/insecure"),
    ("replicas-not-a-number", with_set("replicaCount=two"), "/replicaCount"),
    ("environments-not-a-list", with_set("registration.environments=prod"), "/registration/environments"),
    ("keepalive-not-a-number", with_set_string("gateway.hub.keepAlive.intervalSeconds=30"),
     "/gateway/hub/keepAlive/intervalSeconds"),
    ("port-out-of-range", with_set("metrics.port=70000"), "/metrics/port"),
    ("log-format-unknown", with_set("gateway.logFormat=xml"), "/gateway/logFormat"),
    ("transport-unknown", with_set("gateway.hub.transport=http3"), "/gateway/hub/transport"),
    ("misspelt-value", with_set("gateway.argocd.insecrue=true"), "insecrue"),
    ("project-without-token", deep_merge(REQUIRED, {"gateway": {"argocd": {
        "projectAuthentication": [{"project": "a"}]}}}), "/gateway/argocd/projectAuthentication/0"),
    ("certificate-not-pem", deep_merge(REQUIRED, {"gateway": {"serverCertificates": ["hello"]}}),
     "/gateway/serverCertificates/0"),
]


@pytest.mark.parametrize("values,message", [(v, m) for _, v, m in CONFLICTS],
                         ids=[i for i, _, _ in CONFLICTS])
def test_schema_rejects_conflicts_with_the_reason(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)
    # The refusal must not echo the token it refuses.
    for secret in (ARGOCD_TOKEN, REGISTRATION_TOKEN):
        assert secret not in str(err.value)


@pytest.mark.parametrize("values,name", [(v, n) for _, v, n in SCHEMA_REJECTIONS],
                         ids=[i for i, _, _ in SCHEMA_REJECTIONS])
def test_schema_rejects_bad_values_naming_them(chart, values, name):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert name in str(err.value)


@pytest.fixture(scope="session")
def chart_without_schema(tmp_path_factory):
    """The chart as `helm install --skip-schema-validation` sees it."""
    copy_dir = tmp_path_factory.mktemp("noschema") / "argocd-gateway"
    shutil.copytree(CHART_DIR, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    loaded = helm.Chart.load(copy_dir)
    yield loaded
    loaded.close()


@pytest.mark.parametrize("values,message", [(v, m) for _, v, m in CONFLICTS] + [
    ({}, "gateway.hub.serverGrpcUrl is required"),
    (deep_merge(REQUIRED, NO_ACCOUNT_SECRET), "an Argo CD credential is required: set gateway.argocd.authenticationToken")],
    ids=[i for i, _, _ in CONFLICTS] + ["hub-url-missing", "argocd-token-missing"])
def test_templates_refuse_the_same_conflicts_without_schema(chart_without_schema, values, message):
    with pytest.raises(helm.HelmRenderError) as err:
        chart_without_schema.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)
    for secret in (ARGOCD_TOKEN, REGISTRATION_TOKEN):
        assert secret not in str(err.value)
