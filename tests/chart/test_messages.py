"""Every message names settings that exist: each Helm value path and each `--flag` named in a
user-facing string of src/ (string literals, which hold every error and log message, and `///`
doc comments, which become --help text) must be a value in values.yaml or a flag of the CLI.
The chart's environment variables must be ones the binary reads, for the subcommand that runs
them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from conftest import ROOT

SRC = ROOT / "src"
VALUES = ROOT / "charts" / "argocd-gateway" / "values.yaml"

# Flags of other tools that messages quote on purpose: the flag, and a pattern of the words
# around it that name the tool.
EXTERNAL_FLAGS = {
    "--no-hooks": r"helm uninstall",
    "--set": r"(?i)helm", "--set-file": r"(?i)helm", "--set-string": r"(?i)helm",
    "--install": r"helm upgrade", "--namespace": r"(?i)helm", "--create-namespace": r"(?i)helm",
    "--account": r"argocd account generate-token",
    "--insecure": r"argocd-server|server runs",
    "--rootpath": r"argocd-server",
    "--from": r"kubectl create job",
    "--discovery-token-ca-cert-hash": r"kubeadm join",
}
# Files that build other tools' command lines: the helm command of `hub token create`.
COMMAND_BUILDERS = {"src/hub/api/install.rs": "helm"}


def rust_texts(source: str) -> list[str]:
    """The string literals and `///`/`//!` doc comments of Rust source, in order."""
    out: list[str] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            end = source.find("\n", i)
            end = n if end < 0 else end
            if source.startswith("///", i) or source.startswith("//!", i):
                out.append(source[i + 3:end])
            i = end
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c == "r" and re.match(r'r#*"', source[i:]) and not (i and (source[i - 1].isalnum() or source[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', source[i:]).group(1)
            start = i + 2 + len(hashes)
            end = source.find('"' + hashes, start)
            out.append(source[start:end])
            i = end + 1 + len(hashes)
        elif c == '"':
            j, buf = i + 1, []
            while j < n and source[j] != '"':
                if source[j] == "\\":
                    nxt = source[j + 1]
                    if nxt == "\n":
                        # A line continuation swallows the newline and the next line's indent.
                        j += 2
                        while j < n and source[j] in " \t":
                            j += 1
                        continue
                    buf.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
                    j += 2
                    continue
                buf.append(source[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\'', '"') or a lifetime ('a): skip without reading a string.
            m = re.match(r"'(\\.|[^\\'])'", source[i:])
            i += len(m.group(0)) if m else 1
        else:
            i += 1
    return out


def sources() -> dict[Path, list[str]]:
    """User-facing texts per file; unit-test modules (at the end of a file) are not shipped."""
    out = {}
    for p in sorted(SRC.rglob("*.rs")):
        text = p.read_text().split("\n#[cfg(test)]\nmod tests", 1)[0]
        out[p] = rust_texts(text)
    return out


def value_paths(values: dict[str, Any]) -> set[str]:
    paths: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                path = f"{prefix}{k}"
                paths.add(path)
                walk(v, path + ".")
    walk(values, "")
    return paths


def test_rust_text_extraction():
    texts = rust_texts('let a = "x \\"q\\" --flag"; // not this\n/// doc gateway.debug\n'
                       'let r = r#"raw "inner""#; let c = \'"\'; fn f<\'a>() {} "line \\\n    two"')
    assert texts == ['x "q" --flag', " doc gateway.debug", 'raw "inner"', "line two"]


def test_every_helm_value_named_in_a_message_exists():
    values = yaml.safe_load(VALUES.read_text())
    known = value_paths(values)
    # Maps whose keys are the user's (labels, annotations, selectors): any key below is fine.
    open_maps = {p for p in known if p.endswith(("Annotations", "Labels", "labels", "annotations",
                                                  "nodeSelector", "resources"))}
    # The change feed's event types (`gateway.connected`) look like value paths but are not.
    event_types = set(re.findall(r'Self::\w+ => "([a-z]+\.[a-z]+)"', (SRC / "hub" / "feed.rs").read_text()))
    assert "gateway.connected" in event_types, "the feed's event types moved: update this test"
    roots = "|".join(sorted(k for k, v in values.items() if isinstance(v, dict)))
    pattern = re.compile(rf"(?<![\w.`-])((?:{roots})(?:\.[A-Za-z][A-Za-z0-9]*)+)")
    unknown = []
    found = 0
    for path, texts in sources().items():
        for text in texts:
            for m in pattern.finditer(text):
                name = m.group(1)
                found += 1
                if name in known or name in event_types or any(name.startswith(o + ".") for o in open_maps):
                    continue
                unknown.append(f"{path.relative_to(ROOT)}: {name} in {text.strip()[:160]!r}")
    assert found > 50, "the scan found almost nothing: is the pattern still right?"
    assert not unknown, "Helm values named in messages but not in values.yaml:\n" + "\n".join(unknown)


def test_every_flag_named_in_a_message_exists(cli):
    flags: set[str] = set()
    for command in cli.all_commands():
        flags |= cli.flags(*command)
    assert {"--hub-url", "--argocd-token-file", "--registration-token-file", "--public-url",
            "--bundle", "--wait", "--trust-ca"} <= flags
    pattern = re.compile(r"(?<![\w-])(--[a-z][a-z0-9]*(?:-[a-z0-9]+)*)")
    unknown = []
    for path, texts in sources().items():
        for text in texts:
            for m in pattern.finditer(text):
                flag = m.group(1)
                if flag in flags:
                    continue
                context = EXTERNAL_FLAGS.get(flag)
                if context and re.search(context, text):
                    continue
                if context and str(path.relative_to(ROOT)) in COMMAND_BUILDERS:
                    continue
                unknown.append(f"{path.relative_to(ROOT)}: {flag} in {text.strip()[:160]!r}")
    assert not unknown, "flags named in messages that no command has:\n" + "\n".join(unknown)
