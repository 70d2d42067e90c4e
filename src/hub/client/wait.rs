//! `hub wait`: waits until what a deployment committed runs and is healthy, for one application
//! or many (label selector, annotations, project, gateways, an explicit list, with
//! `--expect-count`), printing what it waits for as the hub reports it and a verdict per
//! application at the end. Exit 0 Deployed, 1 Failed (or Overwritten, or a wrong count), 2
//! Timeout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::print::{print_table, s};
use super::{ApiArgs, ApiClient, enc};

/// Flags of `hub wait`.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Gateway id of the one application to wait for (with NAMESPACE/NAME).
    pub gateway: Option<String>,
    /// The application as namespace/name (with GATEWAY).
    pub app: Option<String>,
    /// An application to wait for: gateway/namespace/name, or namespace/name when only one
    /// gateway has it (repeatable).
    #[arg(long = "app", value_name = "GATEWAY/NAMESPACE/NAME")]
    pub apps: Vec<String>,
    /// Every application matching this label selector (k=v, k!=v, k, !k, k in (a,b)).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Every application with this annotation, key=value (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Every application of this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only applications of this gateway (repeatable); alone, every application of it.
    #[arg(long = "gateway", value_name = "ID")]
    pub gateways: Vec<String>,
    /// Fail at once, naming what was found, unless exactly this many applications match.
    #[arg(long)]
    pub expect_count: Option<usize>,
    /// The commit (full SHA, or at least 7 hex characters) the applications must run.
    #[arg(long)]
    pub revision: Option<String>,
    /// For multi-source applications: the 1-based source position the revision belongs to.
    #[arg(long, conflicts_with_all = ["source_name", "repo_url"])]
    pub source_position: Option<usize>,
    /// For multi-source applications: the name of the source the revision belongs to.
    #[arg(long, conflicts_with = "repo_url")]
    pub source_name: Option<String>,
    /// For multi-source applications: the repository URL of the source the revision belongs to.
    #[arg(long)]
    pub repo_url: Option<String>,
    /// What the change sets: GROUP/KIND/NAMESPACE/NAME:PATH=VALUE, for example
    /// apps/Deployment/shop/shop:spec.template.spec.containers[name=web].image=shop:1.4.2
    /// (empty group for the core group, empty namespace for cluster-scoped; repeatable).
    #[arg(long = "expect", value_name = "EXPECTATION")]
    pub expect: Vec<String>,
    /// A JSON file with a list of expectations as the API takes them
    /// ({"group","kind","namespace","name","path","value"}).
    #[arg(long)]
    pub expect_file: Option<PathBuf>,
    /// How long to wait.
    #[arg(long, default_value = "5m", value_parser = crate::util::parse_duration)]
    pub timeout: Duration,
    /// How long an application may stay Degraded, once nothing runs, before it counts as failed.
    #[arg(long, value_parser = crate::util::parse_duration)]
    pub degraded_grace: Option<Duration>,
    /// Ask Argo CD to refresh first (normal, or hard to regenerate manifests); needs an
    /// operator token.
    #[arg(long, num_args = 0..=1, default_missing_value = "normal", value_parser = ["normal", "hard"])]
    pub refresh: Option<String>,
    /// Sync applications without automated sync to the revision; needs an operator token.
    #[arg(long)]
    pub sync: bool,
    /// With --sync: sync applications with automated sync too.
    #[arg(long, requires = "sync")]
    pub force_sync: bool,
}

/// Parses `GROUP/KIND/NAMESPACE/NAME:PATH=VALUE`.
pub fn parse_expectation(text: &str) -> anyhow::Result<Value> {
    let usage = "give an expectation as GROUP/KIND/NAMESPACE/NAME:PATH=VALUE, for example apps/Deployment/shop/shop:spec.template.spec.containers[name=web].image=shop:1.4.2";
    let (resource, rest) = text.split_once(':').with_context(|| format!("{text:?}: {usage}"))?;
    let parts: Vec<&str> = resource.split('/').collect();
    let [group, kind, namespace, name] = parts.as_slice() else {
        bail!(
            "{text:?}: the resource needs four parts, GROUP/KIND/NAMESPACE/NAME (either may be empty but KIND and NAME); {usage}"
        );
    };
    // The path ends at the first `=` outside brackets (selectors such as [name=web] have one).
    let mut depth = 0i32;
    let mut split = None;
    for (i, c) in rest.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '=' if depth == 0 => {
                split = Some(i);
                break;
            }
            _ => {}
        }
    }
    let at = split.with_context(|| format!("{text:?}: no =VALUE after the path; {usage}"))?;
    let (path, value) = (&rest[..at], &rest[at + 1..]);
    let value = if value.starts_with(['{', '[', '"']) {
        serde_json::from_str(value).with_context(|| format!("{text:?}: the value looks like JSON but is not"))?
    } else {
        json!(value)
    };
    Ok(json!({"group": group, "kind": kind, "namespace": namespace, "name": name, "path": path, "value": value}))
}

/// The API body of a wait from its flags, and the route it goes to.
fn request(a: &WaitArgs) -> anyhow::Result<(String, Value)> {
    let mut body = json!({ "timeoutSeconds": a.timeout.as_secs().max(1) });
    let mut expectations: Vec<Value> = a
        .expect
        .iter()
        .map(|e| parse_expectation(e))
        .collect::<Result<_, _>>()?;
    if let Some(f) = &a.expect_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {} (flag --expect-file)", f.display()))?;
        let list: Vec<Value> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a JSON list of expectations (flag --expect-file)",
                f.display()
            )
        })?;
        expectations.extend(list);
    }
    if !expectations.is_empty() {
        body["expectations"] = json!(expectations);
    }
    for (k, v) in [
        ("revision", &a.revision),
        ("sourceName", &a.source_name),
        ("repoURL", &a.repo_url),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    if let Some(p) = a.source_position {
        body["sourcePosition"] = json!(p);
    }
    if let Some(g) = a.degraded_grace {
        body["degradedGraceSeconds"] = json!(g.as_secs());
    }
    if let Some(r) = &a.refresh {
        body["refresh"] = json!(r);
    }
    if a.sync {
        body["sync"] = json!(true);
    }
    if a.force_sync {
        body["forceSync"] = json!(true);
    }
    let selection = a.selector.is_some() || !a.annotations.is_empty() || a.project.is_some() || !a.gateways.is_empty();
    match (&a.gateway, &a.app) {
        (Some(gw), Some(app)) => {
            if selection || !a.apps.is_empty() || a.expect_count.is_some() {
                bail!(
                    "give either GATEWAY NAMESPACE/NAME or a selection (--app, -l, --annotation, --project, --gateway), not both"
                );
            }
            let (ns, name) = app
                .split_once('/')
                .filter(|(n, m)| !n.is_empty() && !m.is_empty())
                .context("give the application as namespace/name, for example argocd/guestbook")?;
            return Ok((
                format!(
                    "/api/v1/gateways/{}/applications/{}/{}/wait",
                    enc(gw),
                    enc(ns),
                    enc(name)
                ),
                body,
            ));
        }
        (Some(_), None) => bail!("give the application as GATEWAY NAMESPACE/NAME"),
        _ => {}
    }
    if !a.apps.is_empty() {
        let list: Vec<Value> = a
            .apps
            .iter()
            .map(|x| match x.split('/').collect::<Vec<_>>().as_slice() {
                [gw, ns, name] => Ok(json!({"gatewayId": gw, "namespace": ns, "name": name})),
                [ns, name] => Ok(json!({"namespace": ns, "name": name})),
                _ => bail!("--app {x:?}: give gateway/namespace/name or namespace/name"),
            })
            .collect::<anyhow::Result<_>>()?;
        body["applications"] = json!(list);
    } else if !selection {
        bail!("name what to wait for: GATEWAY NAMESPACE/NAME, --app, -l, --annotation, --project or --gateway");
    }
    if let Some(sel) = &a.selector {
        body["selector"] = json!(sel);
    }
    if !a.annotations.is_empty() {
        body["annotations"] = json!(a.annotations);
    }
    if let Some(p) = &a.project {
        body["project"] = json!(p);
    }
    if !a.gateways.is_empty() {
        body["gateways"] = json!(a.gateways);
    }
    if let Some(n) = a.expect_count {
        body["expectCount"] = json!(n);
    }
    Ok(("/api/v1/wait".to_owned(), body))
}

fn app_label(v: &Value) -> String {
    format!("{}/{}/{}", s(v, "gatewayId"), s(v, "namespace"), s(v, "name"))
}

fn seconds(v: &Value) -> String {
    format!(
        "{:>6.1}s",
        v.get("elapsedSeconds").and_then(Value::as_f64).unwrap_or(0.0)
    )
}

/// One streamed line as text for a CI log.
fn line_text(v: &Value) -> Option<String> {
    match v.get("type").and_then(Value::as_str)? {
        "progress" => Some(format!(
            "{}  {}  {:<11}  {}",
            seconds(v),
            app_label(v),
            s(v, "verdict"),
            s(v, "message")
        )),
        "trigger" => Some(format!(
            "{:>7}  {}  {} {}: {}",
            "",
            app_label(v),
            s(v, "action"),
            s(v, "result"),
            s(v, "message")
        )),
        "waiting" => {
            let counts = v
                .get("counts")
                .and_then(Value::as_object)
                .map(|c| c.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            Some(format!(
                "{}  waiting: {counts}; {}s left",
                seconds(v),
                v.get("remainingSeconds").and_then(Value::as_u64).unwrap_or(0)
            ))
        }
        _ => None,
    }
}

/// The exit code of a final result.
fn exit_code(result: &str) -> ExitCode {
    use super::exit::{FAILED, OK, TIMEOUT};
    ExitCode::from(match result {
        "Deployed" => OK,
        "Timeout" => TIMEOUT,
        // Failed, Overwritten: what was committed is not what runs.
        _ => FAILED,
    })
}

fn print_result(v: &Value) {
    let apps = v
        .get("applications")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| vec![app_label(a), s(a, "verdict"), s(a, "argocdRevision"), s(a, "message")])
        .collect();
    print_table(&["APPLICATION", "VERDICT", "ARGO CD REVISION", "DETAIL"], &rows);
    println!(
        "result: {} ({} application(s), {:.1}s)",
        s(v, "result"),
        apps.len(),
        v.get("elapsedSeconds").and_then(Value::as_f64).unwrap_or(0.0)
    );
}

/// Runs `hub wait`.
pub async fn wait(a: WaitArgs) -> anyhow::Result<ExitCode> {
    // Everything `request` refuses is the command line's fault.
    let (path, body) = request(&a).map_err(|e| super::exit::ClientError::Usage(format!("{e:#}")))?;
    let client = ApiClient::new(&a.api)?;
    let resp = client
        .request(reqwest::Method::POST, &format!("{path}?format=ndjson"))
        // The answer streams for as long as the wait lasts; the client's usual limit would cut it.
        .timeout(a.timeout + super::WAIT_MARGIN)
        .json(&body)
        .send()
        .await
        .map_err(|e| super::exit::ClientError::Unreachable {
            base: a.api.hub_api.clone(),
            detail: e.to_string(),
        })?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or(text);
        let code = v.get("code").and_then(Value::as_str).map(str::to_owned);
        if code.as_deref() == Some("count_mismatch") {
            eprintln!("{msg}");
            return Ok(ExitCode::from(super::exit::FAILED));
        }
        return Err(super::exit::ClientError::Refused {
            status: status.as_u16(),
            path,
            message: msg,
            code,
        }
        .into());
    }
    let output = a.api.output;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the hub's answer broke off; the wait's outcome is unknown")?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            match v.get("type").and_then(Value::as_str) {
                Some("result") => {
                    // For people: the verdict table after the progress lines; for scripts
                    // (-o json|yaml): the result alone, one document (the API streams the rest).
                    output.emit(&v, print_result)?;
                    return Ok(exit_code(&s(&v, "result")));
                }
                Some("error") => bail!("the hub ended the wait: {}", s(&v, "error")),
                _ => {
                    if output == super::print::Output::Table
                        && let Some(text) = line_text(&v)
                    {
                        println!("{text}");
                    }
                }
            }
        }
    }
    bail!("the hub's answer ended before a result; the wait's outcome is unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_parse_from_the_command_line() {
        let e = parse_expectation("apps/Deployment/shop/shop:spec.template.spec.containers[name=web].image=shop:1.4.2")
            .unwrap();
        assert_eq!(e["group"], "apps");
        assert_eq!(e["kind"], "Deployment");
        assert_eq!(e["path"], "spec.template.spec.containers[name=web].image");
        assert_eq!(e["value"], "shop:1.4.2");
        let core = parse_expectation("/ConfigMap//settings:data.mode={\"a\":1}").unwrap();
        assert_eq!(core["group"], "");
        assert_eq!(core["namespace"], "");
        assert_eq!(core["value"], json!({"a": 1}));
        assert!(parse_expectation("Deployment/shop:spec.replicas=3").is_err());
        assert!(parse_expectation("apps/Deployment/shop/shop:spec.replicas").is_err());
    }
}
