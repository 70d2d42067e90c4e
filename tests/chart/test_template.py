"""tests/chart/template.sh, the documented way to render the chart without a helm binary: it
renders with the given values through the same engine, and refuses values the schema refuses."""

from __future__ import annotations

import subprocess
import sys

import yaml

from conftest import ROOT

SCRIPT = ROOT / "tests" / "chart" / "template.py"


def template(*args: str, tmp_path=None) -> subprocess.CompletedProcess[str]:
    # The script's wrapper only makes the virtualenv this test already runs in.
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=tmp_path or ROOT)


def test_renders_with_set_and_set_file_values(tmp_path):
    token = tmp_path / "argocd-token"
    token.write_text("argocd-account-token")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"replicaCount": 2}))
    out = template("prod", "--namespace", "gw", "-f", str(values),
                   "--set", "gateway.hub.serverGrpcUrl=https://hub.example.com:8443",
                   "--set-file", f"gateway.argocd.authenticationToken={token}", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "prod-argocd-gateway") in kinds, kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == "gw"
    assert deployment["spec"]["replicas"] == 2
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env.get("ARGOCD_GATEWAY_HUB_URL") == "https://hub.example.com:8443", env
    assert "# Source: argocd-gateway/templates/deployment.yaml" in out.stdout
    assert "NOTES" in out.stderr

    only = template("prod", "--set", "gateway.hub.serverGrpcUrl=https://hub.example.com:8443",
                    "--set-file", f"gateway.argocd.authenticationToken={token}",
                    "--show-only", "templates/deployment.yaml", tmp_path=tmp_path)
    assert only.returncode == 0, only.stderr
    assert [d["kind"] for d in yaml.safe_load_all(only.stdout) if d] == ["Deployment"]


def test_values_the_schema_refuses_fail_with_the_engines_message():
    out = template("prod")
    assert out.returncode == 1
    assert "an Argo CD credential is required" in out.stderr, out.stderr
    assert out.stdout == ""
