//! `argocd-gateway hub init`: creates what hub replicas share from files — the CA (certificate
//! and key), the server certificate for the hub's names and the admin token — into a directory,
//! as a Kubernetes Secret manifest on stdout, or straight into a Kubernetes Secret (the hub
//! chart's pre-install Job), never replacing one that exists. Replicas on PostgreSQL read these
//! files (`--data-dir`) and never keep them in the database.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;

use super::pki;

/// The files a hub's data directory holds (and a replica Secret carries), by name.
pub const FILES: [&str; 5] = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "admin-token"];

/// Flags of `argocd-gateway hub init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Directory to create the files in (existing ones are kept; the server certificate is
    /// issued again when the names change).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_DATA_DIR", default_value = "./hub-data")]
    pub dir: PathBuf,
    /// Names and IP addresses for the server certificate (repeatable; default localhost,
    /// 127.0.0.1 and this machine's host name): every name gateways dial the hub by.
    #[arg(long = "hostname", env = "ARGOCD_GATEWAY_HUB_HOSTNAME", value_delimiter = ',')]
    pub hostnames: Vec<String>,
    /// Print a Kubernetes Secret manifest with this name (new files, nothing written) instead
    /// of writing --dir: `hub init --print-secret hub-pki | kubectl apply -f -`.
    #[arg(long, conflicts_with = "create_secret")]
    pub print_secret: Option<String>,
    /// Create a Kubernetes Secret with this name through the Kubernetes API (in-cluster
    /// credentials or the kubeconfig), unless it exists: the hub chart's pre-install Job.
    #[arg(long)]
    pub create_secret: Option<String>,
    /// The namespace of the Secret (default: the pod's, or the kubeconfig's).
    #[arg(long)]
    pub namespace: Option<String>,
}

/// Errors of `hub init`.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Creating the files failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A file could not be read back.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The Kubernetes API refused or could not be reached.
    #[error("cannot create Secret {name} in Kubernetes: {reason} (flags --create-secret, --namespace)")]
    Kubernetes {
        /// The Secret.
        name: String,
        /// Why.
        reason: String,
    },
}

/// What `hub init` did, for its one line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The files are in this directory.
    Written(PathBuf),
    /// A manifest was printed.
    Printed,
    /// The Secret was created.
    Created,
    /// The Secret existed and was kept.
    Kept,
}

/// A private directory that is removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates the files in a private temporary directory and returns them by name.
fn fresh(hostnames: &[String]) -> Result<BTreeMap<&'static str, Vec<u8>>, InitError> {
    let path = std::env::temp_dir().join(format!("argocd-gateway-hub-init-{}", pki::random_token(9)));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&path).map_err(|source| InitError::Read {
        path: path.clone(),
        source,
    })?;
    let dir = Scratch(path);
    pki::load_or_init(&dir.0, hostnames)?;
    FILES
        .iter()
        .map(|f| {
            let path = dir.0.join(f);
            std::fs::read(&path)
                .map(|b| (*f, b))
                .map_err(|source| InitError::Read { path, source })
        })
        .collect()
}

/// A Kubernetes Secret manifest (YAML) carrying `files`.
pub fn secret_manifest(name: &str, namespace: Option<&str>, files: &BTreeMap<&'static str, Vec<u8>>) -> String {
    let mut out = String::from("apiVersion: v1\nkind: Secret\nmetadata:\n");
    out.push_str(&format!("  name: {name}\n"));
    if let Some(ns) = namespace {
        out.push_str(&format!("  namespace: {ns}\n"));
    }
    out.push_str("  labels:\n    app.kubernetes.io/name: argocd-gateway-hub\n    app.kubernetes.io/component: pki\n");
    out.push_str("type: Opaque\ndata:\n");
    for (f, bytes) in files {
        out.push_str(&format!(
            "  {f}: {}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ));
    }
    out
}

/// Runs `hub init`.
pub async fn run(args: InitArgs) -> Result<Outcome, InitError> {
    let hostnames = if args.hostnames.is_empty() {
        pki::default_hostnames()
    } else {
        args.hostnames.clone()
    };
    if let Some(name) = &args.print_secret {
        let files = tokio::task::spawn_blocking(move || fresh(&hostnames))
            .await
            .map_err(|e| InitError::Read {
                path: std::env::temp_dir(),
                source: std::io::Error::other(e),
            })??;
        print!("{}", secret_manifest(name, args.namespace.as_deref(), &files));
        return Ok(Outcome::Printed);
    }
    if let Some(name) = &args.create_secret {
        return create_secret(name, args.namespace.as_deref(), hostnames).await;
    }
    let dir = args.dir.clone();
    tokio::task::spawn_blocking(move || pki::load_or_init(&dir, &hostnames))
        .await
        .map_err(|e| InitError::Read {
            path: args.dir.clone(),
            source: std::io::Error::other(e),
        })??;
    Ok(Outcome::Written(args.dir))
}

async fn create_secret(name: &str, namespace: Option<&str>, hostnames: Vec<String>) -> Result<Outcome, InitError> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{ObjectMeta, PostParams};
    let fail = |reason: String| InitError::Kubernetes {
        name: name.to_owned(),
        reason,
    };
    let config = kube::Config::infer().await.map_err(|e| fail(e.to_string()))?;
    let ns = namespace
        .map(str::to_owned)
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| fail(e.to_string()))?;
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &ns);
    match api.get_opt(name).await {
        Ok(Some(_)) => return Ok(Outcome::Kept),
        Ok(None) => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let files = tokio::task::spawn_blocking(move || fresh(&hostnames))
        .await
        .map_err(|e| fail(e.to_string()))??;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), "argocd-gateway-hub".to_owned()),
                ("app.kubernetes.io/component".to_owned(), "pki".to_owned()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(files.into_iter().map(|(k, v)| (k.to_owned(), ByteString(v))).collect()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Outcome::Created),
        // Another Job (a retried install) made it first: keep that one.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Kept),
        Err(e) => Err(fail(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_carries_every_file() {
        let files = fresh(&["hub.example.com".to_owned()]).unwrap();
        assert_eq!(files.len(), FILES.len());
        let m = secret_manifest("hub-pki", Some("argocd"), &files);
        assert!(m.starts_with("apiVersion: v1\nkind: Secret\n"), "{m}");
        assert!(m.contains("  namespace: argocd\n"));
        for f in FILES {
            assert!(m.contains(&format!("\n  {f}: ")), "{f} missing: {m}");
        }
        let admin = base64::engine::general_purpose::STANDARD.encode(&files["admin-token"]);
        assert!(m.contains(&admin));
    }
}
