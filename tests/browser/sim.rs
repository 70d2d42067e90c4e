//! The Argo CD simulator as a process for the browser tests (`tests/browser/run.sh`), with a
//! small control API so a test can change Argo CD's state the way the in-process Rust tests do
//! through `SimHandle`. Built as the `browser-sim` example; never shipped.
//!
//! Prints one JSON line on stdout once ready: `{"url", "tokenFile", "control"}`. Control API
//! (JSON, 127.0.0.1 only):
//! - `POST /apps/{namespace}/{name}/health` `{"status", "message"?}`
//! - `POST /apps/{namespace}/{name}/sync` `{"status"}`
//! - `POST /apps/{namespace}/{name}/revision` `{"revision"}`
//! - `POST /apps` a raw Argo CD Application object (added or replaced)
//! - `GET /requests` the requests Argo CD received (`method`, `path`, `query`, `body`);
//!   `DELETE /requests` forgets them.
//!
//! Ends on SIGTERM, SIGINT or when stdin closes.

use std::path::PathBuf;

use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::io::Read;

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.next()?;
    args.next()
}

async fn set(
    State(sim): State<SimHandle>,
    Path((ns, name, what)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> StatusCode {
    let s = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    let found = match what.as_str() {
        "health" => sim.set_health(&ns, &name, &s("status"), &s("message")),
        "sync" => sim.set_sync_status(&ns, &name, &s("status")),
        "revision" => sim.set_revision(&ns, &name, &s("revision")),
        _ => return StatusCode::BAD_REQUEST,
    };
    if found {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn upsert(State(sim): State<SimHandle>, Json(app): Json<Value>) -> StatusCode {
    sim.upsert_app(app);
    StatusCode::NO_CONTENT
}

async fn requests(State(sim): State<SimHandle>) -> Json<Value> {
    let items: Vec<Value> = sim
        .requests()
        .iter()
        .map(|r| json!({"method": r.method, "path": r.path, "query": r.query, "body": r.body}))
        .collect();
    Json(json!({ "items": items }))
}

async fn clear_requests(State(sim): State<SimHandle>) -> StatusCode {
    sim.clear_requests();
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    argocd_gateway::tls::install_crypto_provider();
    let apps: usize = arg("--apps").and_then(|a| a.parse().ok()).unwrap_or(50);
    let dir = PathBuf::from(arg("--dir").unwrap_or_else(|| ".".into()));
    let sim = Simulator::start(SimOptions {
        tls: SimTls::Plaintext,
        ..SimOptions::default()
    })
    .await?;
    sim.add_synthetic_apps(apps);
    let token_file = dir.join("argocd-token");
    std::fs::write(&token_file, sim.add_token(TokenSpec::account("gateway")))?;

    let control = Router::new()
        .route("/apps", post(upsert))
        .route("/apps/{ns}/{name}/{what}", post(set))
        .route("/requests", get(requests).delete(clear_requests))
        .with_state(sim.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_addr = listener.local_addr()?;
    println!(
        "{}",
        json!({"url": sim.url(), "tokenFile": token_file, "control": format!("http://{control_addr}")})
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // The test runner holds our stdin: when it dies, the pipe closes and so do we.
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = closed_tx.send(());
    });
    let stdin_closed = async {
        let _ = closed.await;
    };
    tokio::select! {
        r = axum::serve(listener, control) => r?,
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed => {}
    }
    sim.shutdown();
    Ok(())
}
