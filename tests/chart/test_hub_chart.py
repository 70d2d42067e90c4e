"""Tests for charts/argocd-gateway-hub (hub replicas on PostgreSQL), rendered by the real Helm
engine (helm-python-sdk) and checked against the Kubernetes schemas (kubernetes-validate), like
the gateway chart: each case is a set of values a user would pass plus assertions on what the
pods get; every case also goes through the invariants (schema validation, the restricted Pod
Security Standard, no secret outside a Secret, every ARGOCD_GATEWAY_* variable one the
subcommand reads, every file variable under a read-only mount, every referenced object
rendered or named by the user).
"""

from __future__ import annotations

import base64
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

from test_chart import ALLOWED_RESTRICTED_VOLUMES, deep_merge, render_text

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "argocd-gateway-hub"
GOLDEN = Path(__file__).parent / "golden" / "hub-default.yaml"
KUBE_VERSION = "1.35.0"
RELEASE = "hub"
NAMESPACE = "gitops"
FULLNAME = "hub-argocd-gateway-hub"
# Distinctive secret values: if any appears outside a Secret, a test fails.
DB_URL = "postgres://hub:db-password-SECRET@db.example.com:5432/hub?sslmode=require"
REQUIRED = {"hub": {"hostnames": ["hub.example.com"]}, "database": {"url": DB_URL}}
EXISTING_DB = {"hub": {"hostnames": ["hub.example.com"]},
               "database": {"urlSecretName": "hub-db", "urlSecretKey": "dsn"}}
PATHS = {
    "pki": "/var/run/secrets/argocd-gateway-hub/pki",
    "database": "/var/run/secrets/argocd-gateway-hub/database",
    "password": "/var/run/secrets/argocd-gateway-hub/database-password",
    "ca": "/var/run/secrets/argocd-gateway-hub/database-ca",
}
# Variables that name files the container must find under a read-only mount.
FILE_VARS = ("ARGOCD_GATEWAY_HUB_DATA_DIR", "ARGOCD_GATEWAY_HUB_STORE_FILE",
             "ARGOCD_GATEWAY_HUB_STORE_PASSWORD_FILE", "ARGOCD_GATEWAY_HUB_STORE_CA_FILE")


def with_set(base: dict[str, Any], *exprs: str) -> dict[str, Any]:
    """Values as `helm install --set a=b` would give them (Helm's strvals parser)."""
    return deep_merge(base, *(helm.parse_set_string(e) for e in exprs))


def with_set_string(base: dict[str, Any], *exprs: str) -> dict[str, Any]:
    return deep_merge(base, *(helm.parse_set_string_values(e) for e in exprs))


@pytest.fixture(scope="module")
def chart():
    loaded = helm.Chart.load(CHART_DIR)
    yield loaded
    loaded.close()


@dataclass
class Render:
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
        return {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
                for d in self.docs if d["kind"] in ("Deployment", "Job")}

    def hub_spec(self, name: str = FULLNAME) -> dict[str, Any]:
        return self.pod_specs()[f"Deployment/{name}"]

    def hub(self, name: str = FULLNAME) -> dict[str, Any]:
        return self.hub_spec(name)["containers"][0]

    def init(self, name: str = FULLNAME) -> dict[str, Any]:
        return self.pod_specs()[f"Job/{name}-init-pki"]["containers"][0]


def render(chart, values: dict[str, Any]) -> Render:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    notes = ""
    for path in sorted(files):
        if path.endswith("NOTES.txt"):
            notes = files[path]
            continue
        docs.extend(d for d in yaml.safe_load_all(files[path]) if d)
    return Render(docs=docs, notes=notes)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [v for v in spec["volumes"] if v["name"] == name]
    assert len(found) == 1, f"volume {name} not in {[v['name'] for v in spec['volumes']]}"
    return found[0]


def mount(container: dict[str, Any], name: str) -> dict[str, Any]:
    found = [m for m in container.get("volumeMounts", []) if m["name"] == name]
    assert len(found) == 1, f"mount {name} not in {container.get('volumeMounts')}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# Cases


def check_defaults(r: Render) -> None:
    dep = r.get("Deployment", FULLNAME)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    hub = r.hub()
    assert hub["args"] == ["hub", "serve"]
    assert hub["image"] == "ghcr.io/argocd-gateway/argocd-gateway:0.1.0"
    env = env_of(hub)
    assert env["ARGOCD_GATEWAY_HUB_HOSTNAME"] == "hub.example.com"
    assert env["ARGOCD_GATEWAY_HUB_DATA_DIR"] == PATHS["pki"]
    assert env["ARGOCD_GATEWAY_HUB_GRPC_ADDR"] == "0.0.0.0:8443"
    assert env["ARGOCD_GATEWAY_HUB_HTTP_ADDR"] == "0.0.0.0:8080"
    assert env["ARGOCD_GATEWAY_HUB_PEER_ADDR"] == "0.0.0.0:8444"
    assert env["ARGOCD_GATEWAY_HUB_STORE_FILE"] == f"{PATHS['database']}/url"
    assert env["ARGOCD_GATEWAY_HUB_STORE_POOL_SIZE"] == "16"
    assert env["ARGOCD_GATEWAY_HUB_PUBLIC_URL"] == "https://hub.example.com:443"
    assert env["ARGOCD_GATEWAY_LOG_FORMAT"] == "json"
    assert env["ARGOCD_GATEWAY_DEBUG"] == "false"
    assert "ARGOCD_GATEWAY_HUB_STORE" not in env
    assert "ARGOCD_GATEWAY_HUB_STORE_PASSWORD_FILE" not in env
    # Each replica tells the others its own pod IP; Kubernetes expands $(POD_IP) only from a
    # variable defined before it.
    names = [e["name"] for e in hub["env"]]
    assert env["ARGOCD_GATEWAY_HUB_PEER_URL"] == "https://$(POD_IP):8444"
    pod_ip = next(e for e in hub["env"] if e["name"] == "POD_IP")
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert names.index("POD_IP") < names.index("ARGOCD_GATEWAY_HUB_PEER_URL")
    # The database URL, with its password, only in a Secret, mounted as a file.
    secret = r.get("Secret", f"{FULLNAME}-database")
    assert base64.b64decode(secret["data"]["url"]).decode() == DB_URL
    spec = r.hub_spec()
    assert volume(spec, "database")["secret"] == {
        "secretName": f"{FULLNAME}-database", "defaultMode": 0o440,
        "items": [{"key": "url", "path": "url"}]}
    assert volume(spec, "pki")["secret"] == {"secretName": f"{FULLNAME}-pki", "defaultMode": 0o440}
    assert mount(hub, "pki") == {"name": "pki", "mountPath": PATHS["pki"], "readOnly": True}
    # Readiness follows the database (the replica's /readyz); liveness only the process.
    assert hub["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert hub["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in hub["ports"]} == {"grpc": 8443, "http": 8080,
                                                                     "peer": 8444}
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == FULLNAME
    # Services: gRPC as a LoadBalancer on 443, HTTP inside the cluster.
    grpc = r.get("Service", f"{FULLNAME}-grpc")
    assert grpc["spec"]["type"] == "LoadBalancer"
    assert grpc["spec"]["ports"] == [{"name": "grpc", "port": 443, "targetPort": "grpc", "protocol": "TCP"}]
    http = r.get("Service", f"{FULLNAME}-http")
    assert http["spec"]["type"] == "ClusterIP"
    assert http["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = r.get("Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    for svc in (grpc, http):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
    # The peer port is never behind a Service: replicas reach each other by pod IP.
    assert all(p["name"] != "peer" for s in r.all("Service") for p in s["spec"]["ports"])
    pdb = r.get("PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spread = spec["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    for c in spread:
        assert c["labelSelector"]["matchLabels"].items() <= pod_labels.items()
        assert c["whenUnsatisfiable"] == "ScheduleAnyway"
    assert not r.all("Ingress")
    check_init_job(r)
    assert "kubectl -n gitops get secret hub-argocd-gateway-hub-pki" in r.notes
    assert "https://hub.example.com:443" in r.notes
    assert "port-forward svc/hub-argocd-gateway-hub-http" in r.notes


def check_init_job(r: Render, secret: str = f"{FULLNAME}-pki") -> None:
    name = f"{FULLNAME}-init-pki"
    job = r.get("Job", name)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    init = r.init()
    assert init["args"] == ["hub", "init", "--create-secret", secret, "--namespace", NAMESPACE]
    assert env_of(init)["ARGOCD_GATEWAY_HUB_HOSTNAME"] == env_of(r.hub())["ARGOCD_GATEWAY_HUB_HOSTNAME"]
    # The Job's rights: read its Secret by name, create (unnamed: Kubernetes cannot limit
    # create by name); its RBAC is made first, as hooks, and goes when it succeeded.
    role = r.get("Role", name)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        a = r.get(kind, name)["metadata"]["annotations"]
        assert a["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert int(a["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
        assert "hook-succeeded" in a["helm.sh/hook-delete-policy"]
    assert r.pod_specs()[f"Job/{name}"]["serviceAccountName"] == name
    # The PKI Secret itself is never a release object: uninstalling keeps the CA.
    assert not r.has("Secret", secret)


def check_existing_database_secrets(r: Render) -> None:
    hub, spec = r.hub(), r.hub_spec()
    env = env_of(hub)
    assert env["ARGOCD_GATEWAY_HUB_STORE_FILE"] == f"{PATHS['database']}/url"
    assert env["ARGOCD_GATEWAY_HUB_STORE_PASSWORD_FILE"] == f"{PATHS['password']}/password"
    assert env["ARGOCD_GATEWAY_HUB_STORE_CA_FILE"] == f"{PATHS['ca']}/ca.crt"
    assert env["ARGOCD_GATEWAY_HUB_STORE_POOL_SIZE"] == "40"
    assert volume(spec, "database")["secret"]["items"] == [{"key": "dsn", "path": "url"}]
    assert volume(spec, "database")["secret"]["secretName"] == "hub-db"
    assert volume(spec, "database-password")["secret"]["items"] == [{"key": "pw", "path": "password"}]
    assert volume(spec, "database-ca")["secret"]["secretName"] == "pg-ca"
    assert not r.all("Secret")


def check_ingress_and_cluster_ip(r: Render) -> None:
    ing = r.get("Ingress", FULLNAME)
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["hub.example.com"], "secretName": "hub-tls"}]
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == "hub.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-http", "port": {"name": "http"}}
    grpc = r.get("Service", f"{FULLNAME}-grpc")
    assert grpc["spec"]["type"] == "ClusterIP"
    assert grpc["spec"]["ports"][0]["port"] == 8443
    assert env_of(r.hub())["ARGOCD_GATEWAY_HUB_PUBLIC_URL"] == "https://hub.internal:8443"
    assert env_of(r.hub())["ARGOCD_GATEWAY_HUB_HOSTNAME"] == "hub.internal,10.0.0.7"
    assert "https://hub.example.com/" in r.notes


def check_one_replica(r: Render) -> None:
    assert r.get("Deployment", FULLNAME)["spec"]["replicas"] == 1
    # A budget of one over one replica would block every node drain.
    assert not r.all("PodDisruptionBudget")


def check_no_pki_job(r: Render) -> None:
    assert not r.all("Job") and not r.all("Role") and not r.all("RoleBinding")
    assert volume(r.hub_spec(), "pki")["secret"]["secretName"] == "corp-hub-pki"


def check_strings(r: Render) -> None:
    assert not r.all("Job")
    assert env_of(r.hub())["ARGOCD_GATEWAY_DEBUG"] == "true"
    assert "topologySpreadConstraints" not in r.hub_spec()
    assert not r.all("PodDisruptionBudget")
    assert not r.all("Ingress")


def check_usual(r: Render) -> None:
    dep = r.get("Deployment", FULLNAME)
    assert dep["spec"]["replicas"] == 3
    hub, spec = r.hub(), r.hub_spec()
    assert hub["image"] == "registry.example.com/mirror/argocd-gateway:0.1.1"
    assert hub["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["serviceAccountName"] == "hub-sa"
    assert not r.has("ServiceAccount", FULLNAME)
    assert env_of(hub)["HTTPS_PROXY"] == "http://proxy.corp:3128"
    assert env_of(hub)["ARGOCD_GATEWAY_HUB_PUBLIC_URL"] == "https://grpc.hub.example.com"
    assert env_of(hub)["ARGOCD_GATEWAY_HUB_HELM_CHART"] == "oci://registry.example.com/charts/argocd-gateway"
    assert dep["spec"]["template"]["metadata"]["labels"]["example.com/tier"] == "gitops"
    assert r.get("PodDisruptionBudget", FULLNAME)["spec"]["minAvailable"] == 2
    assert {c["whenUnsatisfiable"] for c in spec["topologySpreadConstraints"]} == {"DoNotSchedule"}
    grpc = r.get("Service", f"{FULLNAME}-grpc")
    assert grpc["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert grpc["metadata"]["annotations"] == {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}


def check_fullname_override(r: Render) -> None:
    assert r.has("Deployment", "fleet-hub")
    assert r.get("Job", "fleet-hub-init-pki")
    assert volume(r.hub_spec("fleet-hub"), "pki")["secret"]["secretName"] == "fleet-hub-pki"


@dataclass
class Case:
    id: str
    values: dict[str, Any]
    check: Callable[[Render], None]
    secrets: list[str] = field(default_factory=list)
    external: set[str] = field(default_factory=set)


CASES = [
    Case("defaults", REQUIRED, check_defaults, secrets=[DB_URL]),
    Case("existing-database-secrets", with_set(
        EXISTING_DB, "database.passwordSecretName=hub-db-password,database.passwordSecretKey=pw",
        "database.caSecretName=pg-ca,database.poolSize=40"), check_existing_database_secrets,
         external={"hub-db", "hub-db-password", "pg-ca"}),
    Case("ingress-cluster-ip", with_set(
        REQUIRED, "hub.hostnames={hub.internal,10.0.0.7}", "service.grpc.type=ClusterIP",
        "service.grpc.port=8443", "ingress.enabled=true,ingress.host=hub.example.com",
        "ingress.className=nginx,ingress.tlsSecretName=hub-tls"), check_ingress_and_cluster_ip,
         secrets=[DB_URL], external={"hub-tls"}),
    Case("one-replica", with_set(REQUIRED, "replicaCount=1"), check_one_replica, secrets=[DB_URL]),
    Case("existing-pki", with_set(REQUIRED, "pki.create=false,pki.secretName=corp-hub-pki"),
         check_no_pki_job, secrets=[DB_URL], external={"corp-hub-pki"}),
    Case("set-string-flags", with_set_string(
        REQUIRED, "pki.create=false,hub.debug=true,topologySpread.enabled=false",
        "podDisruptionBudget.enabled=false,ingress.enabled=false"), check_strings,
         secrets=[DB_URL], external={f"{FULLNAME}-pki"}),
    Case("usual-values", deep_merge(REQUIRED, {
        "replicaCount": 3,
        "image": {"registry": "registry.example.com", "repository": "mirror/argocd-gateway",
                  "tag": "0.1.1", "pullPolicy": "Always", "imagePullSecrets": ["regcred"]},
        "hub": {"publicGrpcUrl": "https://grpc.hub.example.com",
                "gatewayChart": "oci://registry.example.com/charts/argocd-gateway"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "podLabels": {"example.com/tier": "gitops"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"}],
        "serviceAccount": {"create": False, "name": "hub-sa"},
        "podDisruptionBudget": {"minAvailable": 2},
        "topologySpread": {"whenUnsatisfiable": "DoNotSchedule"},
        "service": {"grpc": {"loadBalancerSourceRanges": ["203.0.113.0/24"],
                             "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}}},
    }), check_usual, secrets=[DB_URL]),
    Case("fullname-override", with_set(REQUIRED, "fullnameOverride=fleet-hub"),
         check_fullname_override, secrets=[DB_URL]),
]


@pytest.fixture(scope="module")
def rendered(chart):
    return {case.id: render(chart, case.values) for case in CASES}


IDS = [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_case_values_reach_the_pods(case, rendered):
    case.check(rendered[case.id])


# ---------------------------------------------------------------------------------------------
# Invariants


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_manifest_validates_against_kubernetes(case, rendered):
    r = rendered[case.id]
    assert r.docs
    for doc in r.docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert not [d for d in r.docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_pod_passes_restricted_pod_security(case, rendered):
    specs = rendered[case.id].pod_specs()
    assert specs
    for key, spec in specs.items():
        pod_sc = spec.get("securityContext", {})
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), key
        for vol in spec.get("volumes", []):
            assert set(vol) - {"name"} <= ALLOWED_RESTRICTED_VOLUMES, (key, vol)
        for c in spec["containers"] + spec.get("initContainers", []):
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
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert mount(c, "tmp")["mountPath"] == "/tmp", where


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_secrets_only_live_in_secrets(case, rendered):
    r = rendered[case.id]
    exposed = [r.notes]
    for spec in r.pod_specs().values():
        for c in spec["containers"]:
            exposed.extend(c.get("args", []))
            exposed.extend(str(e.get("value", "")) for e in c.get("env", []))
            for e in c.get("env", []):
                assert "secretKeyRef" not in e.get("valueFrom", {}), e
    for doc in r.docs:
        exposed.extend(str(v) for v in doc["metadata"].get("annotations", {}).values())
    text = "\n".join(exposed)
    in_secrets = {base64.b64decode(v).decode() for s in r.all("Secret") for v in s.get("data", {}).values()}
    for secret in case.secrets:
        assert secret not in text
        assert "db-password-SECRET" not in text
        assert secret in in_secrets


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_env_names_are_read_by_the_subcommand(case, rendered, cli):
    """Every ARGOCD_GATEWAY_* variable is one its subcommand reads (a misspelt one would be
    ignored silently), and every flag on a command line exists."""
    for key, spec in rendered[case.id].pod_specs().items():
        c = spec["containers"][0]
        command = tuple(a for a in c["args"] if not a.startswith("-"))[:2]
        known = cli.env_vars(*command)
        for e in c.get("env", []):
            if e["name"].startswith("ARGOCD_GATEWAY_"):
                assert e["name"] in known, (key, command, e["name"])
        flags = {a for a in c["args"] if a.startswith("--")}
        assert flags <= cli.flags(*command), (key, flags - cli.flags(*command))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_file_variables_point_at_mounts_and_references_resolve(case, rendered):
    r = rendered[case.id]
    made = {(d["kind"], d["metadata"]["name"]) for d in r.docs}
    for key, spec in r.pod_specs().items():
        c = spec["containers"][0]
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert {m["name"] for m in mounts.values()} == set(volumes), key
        env = env_of(c)
        for var in FILE_VARS:
            if var not in env:
                continue
            path = env[var]
            owner = [p for p in mounts if path == p or path.startswith(p + "/")]
            assert owner, f"{key}: {var}={path} is not under a mount"
            assert mounts[owner[0]]["readOnly"] is True
            vol = volumes[mounts[owner[0]]["name"]]
            items = vol["secret"].get("items")
            if items and path != owner[0]:
                assert path[len(owner[0]) + 1:] in [i["path"] for i in items], (key, var)
        for vol in volumes.values():
            if "secret" in vol:
                name = vol["secret"]["secretName"]
                pki_made_by_job = r.has("Job", f"{name.removesuffix('-pki')}-init-pki")
                assert ("Secret", name) in made or name in case.external or pki_made_by_job, (key, name)
        sa = spec.get("serviceAccountName")
        assert ("ServiceAccount", sa) in made or sa == "hub-sa", (key, sa)
    for binding in r.all("RoleBinding"):
        assert ("Role", binding["roleRef"]["name"]) in made
    ing_backends = [p["backend"]["service"]["name"] for i in r.all("Ingress")
                    for rule in i["spec"]["rules"] for p in rule["http"]["paths"]]
    for name in ing_backends:
        assert ("Service", name) in made


def test_lint_passes_strict():
    report = helm.lint(CHART_DIR, REQUIRED, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_render_matches_golden(chart):
    text = render_text(chart.render(REQUIRED, name=RELEASE, namespace=NAMESPACE, is_install=True))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), "run with UPDATE_GOLDEN=1 to create the golden file"
    assert text == GOLDEN.read_text(), "default render changed; review and rerun with UPDATE_GOLDEN=1"


def test_app_version_is_the_crate_version(chart):
    crate = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    assert chart.metadata["appVersion"] == crate


def test_values_yaml_and_schema_agree(chart):
    chart.validate_schema(REQUIRED)
    schema = chart.schema

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        props = node.get("properties", {})
        for key, value in values.items():
            assert key in props, f"{path}{key} is not in values.schema.json"
            if isinstance(value, dict) and props[key].get("properties"):
                walk(value, props[key], f"{path}{key}.")

    walk(chart.values, schema, "")


CONFLICTS = [
    ("url-and-secret", with_set(REQUIRED, "database.urlSecretName=hub-db"),
     "database.url and database.urlSecretName cannot both be set"),
    ("no-database", {"hub": {"hostnames": ["hub.example.com"]}},
     "a PostgreSQL database is required: set database.url or database.urlSecretName"),
    ("ingress-without-host", with_set(REQUIRED, "ingress.enabled=true"),
     "ingress.host is required when ingress.enabled is true"),
]

SCHEMA_REJECTIONS = [
    ("no-hostnames", {"database": {"url": DB_URL}}, "/hub"),
    ("empty-hostnames", with_set(REQUIRED, "hub.hostnames={}"), "/hub/hostnames"),
    ("hostname-with-comma", with_set(REQUIRED, "hub.hostnames[0]=a\\,b"), "/hub/hostnames/0"),
    ("url-not-postgres", with_set({"hub": {"hostnames": ["h"]}}, "database.url=mysql://x"), "/database/url"),
    ("replicas-not-a-number", with_set(REQUIRED, "replicaCount=two"), "/replicaCount"),
    ("service-type-unknown", with_set(REQUIRED, "service.grpc.type=External"), "/service/grpc/type"),
    ("pool-too-small", with_set(REQUIRED, "database.poolSize=1"), "/database/poolSize"),
    ("misspelt-value", with_set(REQUIRED, "databse.url=x"), "databse"),
    ("store-in-extra-env", deep_merge(REQUIRED, {"extraEnv": [{"name": "ARGOCD_GATEWAY_HUB_STORE",
                                                               "value": DB_URL}]}), "/extraEnv/0/name"),
]


@pytest.mark.parametrize("values,message", [(v, m) for _, v, m in CONFLICTS], ids=[i for i, _, _ in CONFLICTS])
def test_schema_rejects_conflicts_with_the_reason(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)
    assert "db-password-SECRET" not in str(err.value)


@pytest.mark.parametrize("values,name", [(v, n) for _, v, n in SCHEMA_REJECTIONS],
                         ids=[i for i, _, _ in SCHEMA_REJECTIONS])
def test_schema_rejects_bad_values_naming_them(chart, values, name):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert name in str(err.value)


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory):
    """The chart as `helm install --skip-schema-validation` sees it."""
    copy_dir = tmp_path_factory.mktemp("noschema") / "argocd-gateway-hub"
    shutil.copytree(CHART_DIR, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    loaded = helm.Chart.load(copy_dir)
    yield loaded
    loaded.close()


@pytest.mark.parametrize("values,message", [(v, m) for _, v, m in CONFLICTS] + [
    ({"database": {"url": DB_URL}}, "hub.hostnames is required")],
    ids=[i for i, _, _ in CONFLICTS] + ["no-hostnames"])
def test_templates_refuse_the_same_conflicts_without_schema(chart_without_schema, values, message):
    with pytest.raises(helm.HelmRenderError) as err:
        chart_without_schema.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)
    assert "db-password-SECRET" not in str(err.value)
