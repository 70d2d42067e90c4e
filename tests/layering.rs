//! The seams between the parts, checked on the source: the hub imports only the wire and shared
//! helpers, the Argo CD client knows nothing of the hub or the tunnel, and the wire imports no
//! part. A `use` across a seam would compile fine, so only a check like this one keeps them.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Lines of the files under `src/<part>` that name `crate::<other>` for a forbidden `other`
/// (comments and doc links excluded).
fn crossings(part: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(part);
    let mut found = vec![];
    for file in sources(&root) {
        let text = std::fs::read_to_string(&file).expect("a source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for other in forbidden {
                let needle = format!("crate::{other}");
                let crosses = code.match_indices(&needle).any(|(i, _)| {
                    // `crate::argocd` must not match `crate::argocd_like`.
                    !code[i + needle.len()..]
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if crosses {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn the_hub_imports_only_the_wire_and_shared_helpers() {
    let parts = [
        "tunnel",
        "relay",
        "argocd",
        "kube",
        "daemon",
        "check",
        "uplink",
        "identity",
        "admin",
        "demo",
        "simulator",
    ];
    let found = crossings("hub", &parts);
    assert!(
        found.is_empty(),
        "the hub reaches into gateway parts:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_argocd_client_knows_nothing_of_the_hub() {
    let found = crossings("argocd", &["hub", "tunnel", "relay", "uplink"]);
    assert!(found.is_empty(), "argocd/ reaches the hub side:\n{}", found.join("\n"));
}

#[test]
fn the_wire_imports_no_part() {
    let parts = [
        "hub",
        "tunnel",
        "relay",
        "uplink",
        "argocd",
        "kube",
        "daemon",
        "check",
        "identity",
        "admin",
        "demo",
        "simulator",
    ];
    let found = crossings("wire", &parts);
    assert!(found.is_empty(), "wire/ imports a part:\n{}", found.join("\n"));
}

#[test]
fn the_check_finds_a_crossing() {
    // The check itself works: the daemon, the composition root, does import the tunnel.
    assert!(!crossings("daemon", &["tunnel"]).is_empty());
}
