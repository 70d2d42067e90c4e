"""`helm template` without helm: renders charts/argocd-gateway with the Helm engine the chart
tests use (PyPI helm-python-sdk) and prints the manifests, each under a `# Source:` comment.
Run it through tests/chart/template.sh, which makes the virtualenv.

    template.py [RELEASE] [--namespace NS] [-f VALUES.yaml]... [--set K=V]...
                [--set-string K=V]... [--set-file K=PATH]... [--chart DIR] [--show-only PATH]

Values merge in helm's order: the -f files, then every --set, --set-string and --set-file.
Exits 1 with the engine's message when the values do not fit the chart (its schema included).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import helm_python as helm
import yaml

from render_install import deep_merge

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(prog="tests/chart/template.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("release", nargs="?", default="argocd-gateway")
    ap.add_argument("--namespace", "-n", default="argocd-gateway")
    ap.add_argument("--values", "-f", action="append", default=[], metavar="FILE")
    ap.add_argument("--set", action="append", default=[], metavar="K=V")
    ap.add_argument("--set-string", action="append", default=[], metavar="K=V")
    ap.add_argument("--set-file", action="append", default=[], metavar="K=PATH")
    ap.add_argument("--chart", default=os.path.join(ROOT, "charts", "argocd-gateway"))
    ap.add_argument("--show-only", "-s", action="append", default=[], metavar="PATH",
                    help="only this template, e.g. templates/deployment.yaml (repeatable)")
    args = ap.parse_args()
    try:
        helm.validate_release_name(args.release)
        values: dict[str, Any] = {}
        for path in args.values:
            with open(path, encoding="utf-8") as f:
                deep_merge(values, yaml.safe_load(f) or {})
        for expr in args.set:
            deep_merge(values, helm.parse_set_string(expr))
        for expr in args.set_string:
            deep_merge(values, helm.parse_set_string_values(expr))
        for expr in args.set_file:
            deep_merge(values, helm.parse_set_file(expr))
        chart = helm.Chart.load(args.chart)
        files = chart.render(values, name=args.release, namespace=args.namespace, is_install=True)
    except (helm.HelmError, OSError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    shown = 0
    notes = ""
    for path in sorted(files):
        text = files[path].strip()
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        if args.show_only and not any(path.endswith(s) for s in args.show_only):
            continue
        if not text or all(line.lstrip().startswith("#") or not line.strip() for line in text.splitlines()):
            continue
        print(f"---\n# Source: {path}\n{text}")
        shown += 1
    if args.show_only and not shown:
        print(f"error: no rendered template matches {args.show_only}", file=sys.stderr)
        return 1
    if notes and not args.show_only:
        print("\n# NOTES:\n" + "\n".join("# " + line for line in notes.splitlines()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
