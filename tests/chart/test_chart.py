"""Tests for charts/argocd-gateway, rendered by the real Helm engine (helm-python-sdk) and
checked against the Kubernetes schemas (kubernetes-validate).

Each case in CASES is a set of values a user would pass (built with Helm's own --set /
--set-string parser where the issue speaks of --set), plus the assertions on the container
args, env and volumes that carry those values. Every case also goes through the invariants:
schema validation of every manifest, the restricted Pod Security Standard on every pod, no
secret in args/env/ConfigMaps/NOTES, every file path in args mounted, every referenced object
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
REQUIRED = {"gateway": {"hub": {"serverGrpcUrl": HUB}}}

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


def flag_values(container: dict[str, Any], flag: str) -> list[str]:
    prefix = f"{flag}="
    return [a[len(prefix):] for a in args_of(container) if a.startswith(prefix)]


def one_flag(container: dict[str, Any], flag: str) -> str:
    values = flag_values(container, flag)
    assert len(values) == 1, f"{flag} expected once in {args_of(container)}"
    return values[0]


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
    args = args_of(gw)
    assert args[0] == "run"
    assert one_flag(gw, "--hub-url") == HUB
    assert one_flag(gw, "--argocd-server") == "https://argocd-server.argocd.svc.cluster.local"
    assert one_flag(gw, "--identity") == f"secret:{NAMESPACE}/{FULLNAME}-identity"
    assert one_flag(gw, "--admin-addr") == "0.0.0.0:9090"
    assert one_flag(gw, "--keepalive-interval") == "30"
    assert one_flag(gw, "--keepalive-max-failures") == "10"
    assert one_flag(gw, "--log-format") == "json"
    for absent in ("--argocd-insecure", "--argocd-plaintext", "--hub-plaintext", "--debug",
                   "--leader-elect"):
        assert absent not in args
    for absent in ("--argocd-token-file", "--argocd-project-tokens-dir", "--trust-ca",
                   "--registration-token-file", "--hub-fingerprint", "--hub-ca-fingerprint",
                   "--lease-name", "--name", "--environment", "--argocd-web-url"):
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
    # Default features: registration hook and self-update on; metrics Service, PDB off.
    assert r.has("Job", f"{FULLNAME}-register")
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
    assert "no Argo CD token is configured" in r.notes


def check_insecure(r: Render) -> None:
    for c in (r.gateway(),):
        assert "--argocd-insecure" in args_of(c)
        assert "--argocd-plaintext" not in args_of(c)


def check_plaintext(r: Render) -> None:
    assert "--argocd-plaintext" in args_of(r.gateway())
    assert "--argocd-insecure" not in args_of(r.gateway())


def check_neither_tls_flag(r: Render) -> None:
    assert "--argocd-insecure" not in args_of(r.gateway())
    assert "--argocd-plaintext" not in args_of(r.gateway())


def check_ha(r: Render) -> None:
    gw = r.gateway()
    assert "--leader-elect" in args_of(gw)
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


def check_project_tokens_existing(r: Render) -> None:
    gw = r.gateway()
    assert one_flag(gw, "--argocd-project-tokens-dir") == PATHS["project_tokens"]
    assert volume(deployment_spec(r), "argocd-project-tokens")["secret"] == {
        "secretName": "team-tokens", "defaultMode": 0o440}
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
    assert "no Argo CD token is configured" not in r.notes


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
    assert hook_cm["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    expected = [PATHS["trust_cm"], PATHS["trust_secret"]]
    for kind, name, cm_name in (("Deployment", FULLNAME, cm), ("Job", f"{FULLNAME}-register", hook_cm),
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


def check_register_off(r: Render) -> None:
    assert not r.all("Job")
    hooks = [d for d in r.docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]
    assert hooks == []
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
    args = args_of(su)
    assert args[0] == "self-update"
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
    for c in (r.gateway(), r.register(), r.self_update()):
        assert one_flag(c, "--hub-url") == "http://hub.internal:8080"
        assert "--hub-plaintext" in args_of(c)
        assert one_flag(c, "--hub-fingerprint") == "sha256:0123abcd"
        assert one_flag(c, "--log-format") == "text"
        assert "--debug" in args_of(c)
    gw = r.gateway()
    assert one_flag(gw, "--keepalive-interval") == "0"
    assert one_flag(gw, "--keepalive-max-failures") == "3"
    assert one_flag(gw, "--argocd-server") == "http://argocd-server.argocd:80/argocd"
    assert "--argocd-plaintext" in args_of(gw)


def check_string_false_is_false(r: Render) -> None:
    # "false" strings from --set-string must not switch anything on (a string is truthy in
    # Go templates).
    args = args_of(r.gateway())
    for flag in ("--argocd-insecure", "--argocd-plaintext", "--hub-plaintext", "--debug"):
        assert flag not in args
    assert not r.all("Job") and not r.all("CronJob") and not r.all("Service")


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


def check_fullname_override(r: Render) -> None:
    dep = r.get("Deployment", "edge")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert one_flag(c, "--identity") == f"secret:{NAMESPACE}/edge-identity"
    assert r.has("CronJob", "edge-self-update") and r.has("Job", "edge-register")


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
        "metrics.enabled=false"), check_string_false_is_false),
    Case("ha", with_set("replicaCount=2"), check_ha),
    Case("project-tokens-inline", deep_merge(REQUIRED, {"gateway": {"argocd": {
        "projectAuthentication": [{"project": "team-a", "token": PROJECT_A_TOKEN},
                                  {"project": "_unscoped", "token": UNSCOPED_TOKEN}]}}}),
         check_project_tokens_inline, secrets=[PROJECT_A_TOKEN, UNSCOPED_TOKEN]),
    Case("project-tokens-existing", with_set("gateway.argocd.projectAuthenticationSecretName=team-tokens"),
         check_project_tokens_existing, external={"team-tokens"}),
    Case("argocd-token-inline", deep_merge(REQUIRED, {"gateway": {"argocd": {
        "authenticationToken": ARGOCD_TOKEN}}}), check_argocd_token_inline, secrets=[ARGOCD_TOKEN]),
    Case("existing-secrets", with_set(
        "gateway.argocd.authenticationTokenSecretName=argocd-gateway-account",
        "gateway.argocd.authenticationTokenSecretKey=jwt",
        "registration.tokenSecretName=hub-registration,registration.tokenSecretKey=reg-token",
        "gateway.serverCertificateSecretName=corp-ca"), check_existing_secrets,
         external={"argocd-gateway-account", "hub-registration", "corp-ca"}),
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
            for path in flag_values(c, flag):
                owner = [p for p in mounts if path == p or path.startswith(p + "/")]
                assert owner, f"{key}: {flag}={path} is not under a mount"
                assert mounts[owner[0]]["readOnly"] is True
        for vol in volumes.values():
            if "secret" in vol:
                name = vol["secret"]["secretName"]
                assert ("Secret", name) in made or name in case.external, (key, name)
            if "configMap" in vol:
                assert ("ConfigMap", vol["configMap"]["name"]) in made, (key, vol)
        sa = spec["serviceAccountName"]
        assert ("ServiceAccount", sa) in made or sa == "gateway-sa", (key, sa)
    for binding in r.all("RoleBinding"):
        assert ("Role", binding["roleRef"]["name"]) in made


# ---------------------------------------------------------------------------------------------
# Hooks, lint, golden file, versions


def test_registration_hook_runs_after_its_prerequisites(rendered):
    r = rendered["registration-inline"]
    hooks = {(d["kind"], d["metadata"]["name"]): d["metadata"]["annotations"]
             for d in r.docs if "helm.sh/hook" in d["metadata"].get("annotations", {})}
    job_key = ("Job", f"{FULLNAME}-register")
    job = hooks.pop(job_key)
    assert job["helm.sh/hook"] == "pre-install,pre-upgrade"
    expected_prereqs = {("ServiceAccount", f"{FULLNAME}-register"), ("Role", f"{FULLNAME}-register"),
                        ("RoleBinding", f"{FULLNAME}-register"),
                        ("Secret", f"{FULLNAME}-register-token")}
    assert set(hooks) == expected_prereqs
    for key, annotations in hooks.items():
        assert annotations["helm.sh/hook"] == job["helm.sh/hook"], key
        assert int(annotations["helm.sh/hook-weight"]) < int(job["helm.sh/hook-weight"]), key
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"], key
    assert job_spec(r)["serviceAccountName"] == f"{FULLNAME}-register"
    # The Job may write only the identity Secret (plus unnamed create).
    rules = r.get("Role", f"{FULLNAME}-register")["rules"]
    assert rules[0]["resourceNames"] == [f"{FULLNAME}-identity"]
    assert rules[1] == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}
    args = args_of(r.register())
    assert args[0] == "register"
    assert one_flag(r.register(), "--identity") == f"secret:{NAMESPACE}/{FULLNAME}-identity"
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
    ("project-tokens-and-secret", deep_merge(REQUIRED, {"gateway": {"argocd": {
        "projectAuthentication": [{"project": "a", "token": "t"}],
        "projectAuthenticationSecretName": "tokens"}}}),
     "gateway.argocd.projectAuthentication and gateway.argocd.projectAuthenticationSecretName cannot both be set"),
    ("account-and-project-tokens", deep_merge(REQUIRED, {"gateway": {"argocd": {
        "projectAuthentication": [{"project": "a", "token": "t"}], "authenticationToken": "x"}}}),
     "cannot both be set; with per-project tokens, the _unscoped project token replaces the account token"),
    ("account-secret-and-project-secret", with_set(
        "gateway.argocd.authenticationTokenSecretName=a,gateway.argocd.projectAuthenticationSecretName=b"),
     "cannot both be set; with per-project tokens, the _unscoped project token replaces the account token"),
]

# (id, values, the value named in the message as Helm prints it)
SCHEMA_REJECTIONS = [
    ("hub-url-missing", {}, "/gateway/hub/serverGrpcUrl"),
    ("hub-url-empty", with_set("gateway.hub.serverGrpcUrl="), "/gateway/hub/serverGrpcUrl"),
    ("insecure-not-a-bool", with_set("gateway.argocd.insecure=yes"), "/gateway/argocd/insecure"),
    ("replicas-not-a-number", with_set("replicaCount=two"), "/replicaCount"),
    ("environments-not-a-list", with_set("registration.environments=prod"), "/registration/environments"),
    ("keepalive-not-a-number", with_set_string("gateway.hub.keepAlive.intervalSeconds=30"),
     "/gateway/hub/keepAlive/intervalSeconds"),
    ("port-out-of-range", with_set("metrics.port=70000"), "/metrics/port"),
    ("log-format-unknown", with_set("gateway.logFormat=xml"), "/gateway/logFormat"),
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
    ({}, "gateway.hub.serverGrpcUrl is required")],
    ids=[i for i, _, _ in CONFLICTS] + ["hub-url-missing"])
def test_templates_refuse_the_same_conflicts_without_schema(chart_without_schema, values, message):
    with pytest.raises(helm.HelmRenderError) as err:
        chart_without_schema.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)
    for secret in (ARGOCD_TOKEN, REGISTRATION_TOKEN):
        assert secret not in str(err.value)
