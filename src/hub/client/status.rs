//! `hub token status ID [--wait]`: an install's progress, one line per step. With `--wait` it
//! prints each step as it happens and ends when every step is done (exit 0), when one fails
//! (exit 1, with the step's message), or at the timeout (exit 2).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::exit;
use super::print::Output;
use super::{ApiArgs, ApiClient, CALL_TIMEOUT, WAIT_MARGIN, enc};

/// How often `--wait` asks the hub.
const POLL: Duration = Duration::from_secs(1);

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn line(step: &Value) -> String {
    let state = text(step, "state");
    let mark = match state.as_str() {
        "done" => "done   ",
        "failed" => "FAILED ",
        _ => "pending",
    };
    let mut out = format!("{mark}  {}", text(step, "title"));
    let at = text(step, "at");
    if !at.is_empty() {
        out.push_str(&format!(" ({at})"));
    }
    let message = text(step, "message");
    if !message.is_empty() {
        out.push_str(&format!(": {message}"));
    }
    out
}

fn steps(v: &Value) -> Vec<Value> {
    v.get("steps").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn failed(v: &Value) -> Option<(String, String)> {
    let f = v.get("failed").filter(|f| !f.is_null())?;
    Some((text(f, "title"), text(f, "message")))
}

fn complete(v: &Value) -> bool {
    v.get("complete").and_then(Value::as_bool) == Some(true)
}

fn verdict(v: &Value) -> ExitCode {
    match failed(v) {
        Some((title, message)) => {
            eprintln!("install step failed: {title}: {message}");
            ExitCode::from(exit::FAILED)
        }
        None => ExitCode::SUCCESS,
    }
}

/// Runs the command.
pub async fn token_status(
    client: &ApiClient,
    api: &ApiArgs,
    id: &str,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/registration-tokens/{}", enc(id));
    let first = client.call(Method::GET, &path, None).await?;
    if !wait {
        api.output.emit(&first, |v| {
            println!("registration {id} ({})", text(v, "name"));
            for step in steps(v) {
                println!("{}", line(&step));
            }
        })?;
        return Ok(verdict(&first));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    // Each step is printed once it is no longer pending, and again if its state changes.
    let mut shown: HashMap<String, String> = HashMap::new();
    let mut current = first;
    // With -o json|yaml, stdout carries only the final answer; the progress goes to stderr.
    let table = api.output == Output::Table;
    let say = |text: String| {
        if table {
            println!("{text}");
        } else {
            eprintln!("{text}");
        }
    };
    let last = |v: &Value| api.output.emit(v, |_| {});
    say(format!("waiting for registration {id} ({})", text(&current, "name")));
    loop {
        for step in steps(&current) {
            let name = text(&step, "step");
            let state = text(&step, "state");
            if state != "pending" && shown.get(&name) != Some(&state) {
                say(line(&step));
                shown.insert(name, state);
            }
        }
        if let Some((title, message)) = failed(&current) {
            last(&current)?;
            eprintln!("install step failed: {title}: {message}");
            return Ok(ExitCode::from(exit::FAILED));
        }
        if complete(&current) {
            last(&current)?;
            say("the gateway is installed, connected and healthy".into());
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() >= deadline {
            let waiting = steps(&current)
                .into_iter()
                .find(|s| text(s, "state") == "pending")
                .map(|s| line(&s))
                .unwrap_or_default();
            last(&current)?;
            eprintln!(
                "gave up after {}: still {waiting} (flag --timeout)",
                humantime::format_duration(timeout)
            );
            return Ok(ExitCode::from(exit::TIMEOUT));
        }
        tokio::time::sleep(POLL).await;
        // A hub that stops answering must not hold the command past its own --timeout.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        current = client
            .call_for(Method::GET, &path, None, CALL_TIMEOUT.min(left + WAIT_MARGIN))
            .await?;
    }
}
