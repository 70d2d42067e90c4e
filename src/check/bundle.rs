//! `check --bundle FILE`: a support bundle to attach to a question or an issue, as one JSON
//! document: the version, the configuration with secrets redacted, the check table, the running
//! gateway's metrics, and the metadata and expiry of every certificate involved (the Argo CD
//! and hub chains as presented, the trusted CAs, the gateway's own certificate and hub CA).
//!
//! It holds no secret: token files are named, never read; the identity's private key is never
//! read into it; environment values whose names mention a token, secret, password or key are
//! replaced, and credentials in proxy URLs are cut out.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::ServerCertVerified;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};

use super::CheckArgs;
use crate::report::Report;
use crate::tls::CertCheck;

/// Builds the bundle and writes it to `path` (mode 0600: it describes the installation).
pub async fn write(args: &CheckArgs, report: &Report, path: &Path) -> std::io::Result<()> {
    let bundle = build(args, report).await;
    let text = serde_json::to_vec_pretty(&bundle).map_err(std::io::Error::other)?;
    crate::util::write_private_file_atomic(path, &text)
}

/// The bundle as JSON.
pub async fn build(args: &CheckArgs, report: &Report) -> Value {
    json!({
        "generatedAt": crate::util::rfc3339_now(),
        "version": {
            "gateway": crate::VERSION,
            "protocol": crate::wire::PROTOCOL_VERSION,
        },
        "configuration": configuration(args),
        "check": {
            "passed": !report.failed(),
            "rows": report.rows,
            "table": report.render(),
        },
        "metrics": metrics(args).await,
        "certificates": certificates(args).await,
    })
}

/// Names whose values are never copied.
fn sensitive(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    let path_like = n.ends_with("_FILE") || n.ends_with("_DIR") || n.ends_with("_PATH");
    !path_like
        && ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL"]
            .iter()
            .any(|w| n.contains(w))
}

/// A URL with any `user:password@` removed.
fn without_credentials(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("redacted");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => value.to_owned(),
    }
}

fn configuration(args: &CheckArgs) -> Value {
    let a = &args.argocd;
    let u = &args.uplink;
    let secs = |d: Duration| humantime::format_duration(d).to_string();
    let mut env = serde_json::Map::new();
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("ARGOCD_GATEWAY_")
                || matches!(
                    k.as_str(),
                    "HTTPS_PROXY" | "https_proxy" | "HTTP_PROXY" | "http_proxy" | "NO_PROXY" | "no_proxy"
                )
                || k == crate::kube::NAMESPACE_ENV
                || k == crate::kube::POD_NAME_ENV
        })
        .collect();
    vars.sort();
    for (k, v) in vars {
        let shown = if sensitive(&k) {
            "<redacted>".to_owned()
        } else {
            without_credentials(&v)
        };
        env.insert(k, Value::String(shown));
    }
    json!({
        "argocd": {
            "server": a.argocd_server,
            "insecure": a.argocd_insecure,
            "plaintext": a.argocd_plaintext,
            "tokenFile": a.argocd_token_file,
            "projectTokensDir": a.argocd_project_tokens_dir,
            "watch": a.watch,
            "pollInterval": secs(a.poll_interval),
            "resyncInterval": secs(a.resync_interval),
            "clusterInterval": secs(a.cluster_interval),
            "selector": a.selector,
            "projects": a.project,
            "appNamespaces": a.app_namespace,
            "requestTimeout": secs(a.argocd_request_timeout),
            "maxBodyBytes": a.argocd_max_body_bytes,
            "maxLineBytes": a.argocd_max_line_bytes,
        },
        "hub": {
            "url": u.hub_url,
            "plaintext": u.hub_plaintext,
            "fingerprint": u.hub_fingerprint,
            "caFingerprint": u.hub_ca_fingerprint,
            "connectTimeout": secs(u.hub_connect_timeout),
        },
        "trustCa": u.trust.trust_ca,
        "identity": u.identity,
        "adminAddr": args.admin_addr,
        "environment": env,
    })
}

/// The running gateway's metrics from its admin server (in the pod, the same address as
/// `run`'s `--admin-addr`).
async fn metrics(args: &CheckArgs) -> Value {
    let mut addr = args.admin_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/metrics");
    let fetch = async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        resp.text().await.map_err(|e| e.to_string())
    };
    match fetch.await {
        Ok(text) => json!({ "source": url, "text": text }),
        Err(e) => json!({ "source": url, "unavailable": format!("no gateway answered ({e}); is `run` running here?") }),
    }
}

/// Metadata of one certificate: names, validity, fingerprint, whether it is a CA.
pub fn describe(der: &[u8], role: &str) -> Value {
    let fingerprint = crate::tls::Fingerprint::of(der).to_string();
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => {
            let not_after = jiff::Timestamp::from_second(c.validity().not_after.timestamp()).ok();
            let days_left = not_after.map(|t| t.duration_since(jiff::Timestamp::now()).as_hours() / 24);
            let names: Vec<String> = c
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .map(|n| match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                                4 => <[u8; 4]>::try_from(*b)
                                    .map(|a| std::net::IpAddr::from(a).to_string())
                                    .unwrap_or_default(),
                                16 => <[u8; 16]>::try_from(*b)
                                    .map(|a| std::net::IpAddr::from(a).to_string())
                                    .unwrap_or_default(),
                                _ => String::new(),
                            },
                            other => format!("{other:?}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "role": role,
                "subject": c.subject().to_string(),
                "issuer": c.issuer().to_string(),
                "selfSigned": c.subject() == c.issuer(),
                "isCa": c.is_ca(),
                "names": names,
                "notBefore": jiff::Timestamp::from_second(c.validity().not_before.timestamp()).ok().map(|t| t.to_string()),
                "notAfter": not_after.map(|t| t.to_string()),
                "daysLeft": days_left,
                "fingerprint": fingerprint,
            })
        }
        Err(e) => json!({ "role": role, "fingerprint": fingerprint, "unparsable": e.to_string() }),
    }
}

/// A check that records the presented chain and accepts it: only the metadata is wanted.
#[derive(Debug, Default)]
struct Record(Mutex<Vec<CertificateDer<'static>>>);

impl CertCheck for Record {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.0.lock() {
            chain.push(end_entity.clone().into_owned());
            chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        }
        Ok(ServerCertVerified::assertion())
    }
}

/// The chain a TLS server presents (empty when it cannot be reached or does not speak TLS).
async fn presented_chain(host: &str, port: u16) -> Result<Vec<CertificateDer<'static>>, String> {
    let record = Arc::new(crate::tls::Verifier::new(Record::default()));
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(record.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| "timed out".to_owned())??;
    Ok(record.inner().0.lock().map(|c| c.clone()).unwrap_or_default())
}

async fn chain_of(role: &str, host: &str, port: u16) -> Vec<Value> {
    match presented_chain(host, port).await {
        Ok(chain) => chain
            .iter()
            .enumerate()
            .map(|(i, der)| describe(der, &format!("{role} chain [{i}]")))
            .collect(),
        Err(e) => vec![json!({ "role": role, "unavailable": e })],
    }
}

async fn certificates(args: &CheckArgs) -> Vec<Value> {
    let mut out = Vec::new();
    if !args.argocd.argocd_plaintext
        && let Ok(url) = crate::argocd::config::parse_server_url(&args.argocd.argocd_server, false)
        && let Some(host) = url.host_str()
    {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        out.extend(chain_of("Argo CD server", host, url.port_or_known_default().unwrap_or(443)).await);
    }
    if let Ok(hub) = args.uplink.hub()
        && !hub.endpoint.plaintext
    {
        out.extend(chain_of("hub", &hub.endpoint.host, hub.endpoint.port).await);
    }
    match args.uplink.trust.load() {
        Ok(cas) => out.extend(cas.iter().map(|der| describe(der, "trusted CA (--trust-ca)"))),
        Err(e) => out.push(json!({ "role": "trusted CA (--trust-ca)", "unavailable": e.to_string() })),
    }
    if let Ok(location) = args.uplink.identity_location() {
        let store = crate::cli::open_identity_store(&location);
        match store.load().await {
            Ok(Some(id)) => {
                if let Ok(der) = crate::certs::first_cert_der(&id.cert_pem) {
                    out.push(describe(&der, "gateway client certificate"));
                }
                if let Ok(cas) = crate::tls::parse_certs_pem(id.ca_pem.as_bytes(), "hub CA") {
                    out.extend(cas.iter().map(|der| describe(der, "hub CA (stored at registration)")));
                }
            }
            Ok(None) => out.push(json!({ "role": "gateway client certificate", "unavailable": format!("not registered: no identity in {}", store.describe()) })),
            Err(e) => out.push(json!({ "role": "gateway client certificate", "unavailable": e.to_string() })),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_rules() {
        for name in [
            "ARGOCD_GATEWAY_REGISTRATION_TOKEN",
            "ARGOCD_GATEWAY_ADMIN_TOKEN",
            "SOME_SECRET",
            "DB_PASSWORD",
        ] {
            assert!(sensitive(name), "{name}");
        }
        for name in [
            "ARGOCD_GATEWAY_REGISTRATION_TOKEN_FILE",
            "ARGOCD_GATEWAY_ARGOCD_TOKEN_FILE",
            "ARGOCD_GATEWAY_ARGOCD_PROJECT_TOKENS_DIR",
            "ARGOCD_GATEWAY_HUB_URL",
        ] {
            assert!(!sensitive(name), "{name}");
        }
        assert_eq!(
            without_credentials("http://user:pa55@proxy.corp:3128"),
            "http://redacted@proxy.corp:3128/"
        );
        assert_eq!(without_credentials("proxy.corp:3128"), "proxy.corp:3128");
    }
}
