"""Renders a `helm upgrade --install` invocation with the real Helm engine, as helm would
install it: the test suite captures the argv of the command that `hub token create` printed
(run through a real shell) and hands it here. Prints JSON: {"ok": true, "release",
"namespace", "docs": [...], "notes"} or {"ok": false, "error": "..."}.

Values merge in helm's order: every --set, then every --set-string, then every --set-file,
each list in the order given; --set-file paths are read relative to --cwd.

    python render_install.py --argv ARGV_FILE --cwd DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import helm_python as helm
import yaml


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def parse(argv: list[str]) -> dict[str, Any]:
    """The release, chart, namespace and value expressions of `helm upgrade --install …`."""
    if argv[:2] != ["upgrade", "--install"]:
        raise SystemExit(f"not a `helm upgrade --install` command: {argv[:2]}")
    out: dict[str, Any] = {"positional": [], "set": [], "set-string": [], "set-file": [],
                           "namespace": "default", "create-namespace": False}
    i = 2
    while i < len(argv):
        a = argv[i]
        if a in ("--set", "--set-string", "--set-file", "--namespace"):
            out[a[2:]] = out[a[2:]] + [argv[i + 1]] if a != "--namespace" else argv[i + 1]
            i += 2
        elif a == "--create-namespace":
            out["create-namespace"] = True
            i += 1
        elif a.startswith("-"):
            raise SystemExit(f"unexpected helm flag {a}")
        else:
            out["positional"].append(a)
            i += 1
    if len(out["positional"]) != 2:
        raise SystemExit(f"expected RELEASE CHART, got {out['positional']}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--argv", required=True)
    ap.add_argument("--cwd", required=True)
    args = ap.parse_args()
    with open(args.argv, "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    cmd = parse(argv)
    release, chart_ref = cmd["positional"]
    os.chdir(args.cwd)
    try:
        helm.validate_release_name(release)
        values: dict[str, Any] = {}
        for expr in cmd["set"]:
            deep_merge(values, helm.parse_set_string(expr))
        for expr in cmd["set-string"]:
            deep_merge(values, helm.parse_set_string_values(expr))
        for expr in cmd["set-file"]:
            deep_merge(values, helm.parse_set_file(expr))
        chart = helm.Chart.load(chart_ref)
        files = chart.render(values, name=release, namespace=cmd["namespace"], is_install=True)
    except helm.HelmError as e:
        print(json.dumps({"ok": False, "error": str(e)}))
        return 0
    docs, notes = [], ""
    for path in sorted(files):
        if path.endswith("NOTES.txt"):
            notes = files[path]
            continue
        docs.extend(d for d in yaml.safe_load_all(files[path]) if d)
    print(json.dumps({"ok": True, "release": release, "namespace": cmd["namespace"],
                      "createNamespace": cmd["create-namespace"], "values": values,
                      "docs": docs, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
