//! Registration tokens: create (one hour by default, single use, stored hashed, answered with
//! the ready-to-paste `helm` command of [`super::install`]), list (never the secret) and revoke.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, ApiState, install, rfc3339};
use crate::hub::store::TokenRecord;

/// The default registration token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Tokens may live at most a day.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateToken {
    ttl_seconds: Option<u64>,
    name: Option<String>,
    environments: Option<Vec<String>>,
    /// The hub URL gateways dial, for this token's command (default: `hub serve --public-url`).
    public_url: Option<String>,
    /// Argo CD API URL for the command.
    argocd_url: Option<String>,
    /// Skip Argo CD certificate verification in the command.
    #[serde(default)]
    argocd_insecure: bool,
    /// Argo CD web UI URL for the command.
    argocd_web_url: Option<String>,
    /// A file with the Argo CD token on the machine that runs helm (`--set-file`).
    argocd_token_file: Option<String>,
    /// An existing Secret holding the Argo CD token, in the release namespace.
    argocd_token_secret: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreatedToken {
    id: String,
    token: String,
    expires_at: String,
    ca_fingerprint: String,
    helm_command: String,
    /// The release and namespace the command installs.
    release: String,
    namespace: String,
    /// The command that follows the install's progress.
    status_command: String,
    /// What may keep the command from working (a loopback hub address, say).
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenView {
    #[serde(flatten)]
    record: TokenRecord,
    created_at: Option<String>,
    expires_at: Option<String>,
    used_at: Option<String>,
    state: &'static str,
}

pub(super) async fn create_token(
    State(state): State<Arc<ApiState>>,
    body: Option<Json<CreateToken>>,
) -> ApiResult<Response> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let ttl = Duration::from_secs(req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL.as_secs()));
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "ttlSeconds must be between 1 and {} (24 hours)",
                MAX_TOKEN_TTL.as_secs()
            ),
        ));
    }
    let name = req.name.unwrap_or_default().trim().to_owned();
    let environments: Vec<String> = req
        .environments
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if environments.iter().any(|e| e.contains(',')) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "environment names cannot contain commas",
        ));
    }
    // 96 bits of id and 256 bits of secret; only the secret's hash is stored.
    let id = crate::hub::pki::random_token(12);
    let secret = crate::hub::pki::random_token(32);
    let token = format!("{id}.{secret}");
    let (_, hash) = crate::hub::registration::token_parts(&token)
        .ok_or(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token"))?;
    let now = jiff::Timestamp::now().as_second();
    let expires_at = now + ttl.as_secs() as i64;
    let record = TokenRecord {
        id: id.clone(),
        name: name.clone(),
        environments: environments.clone(),
        created_at: now,
        expires_at,
        used_at: None,
        gateway_id: None,
    };
    state.hub.store.insert_token(record, hash).await?;
    let fingerprint = state.hub.ca.fingerprint().to_string();
    tracing::info!(token_id = %id, name = %name, expires_at = %rfc3339(Some(expires_at)).unwrap_or_default(), "created a registration token");
    let hub_url = nonempty(req.public_url).unwrap_or_else(|| state.public_url.clone());
    let mut warnings = Vec::new();
    if install::is_loopback(&hub_url) {
        warnings.push(format!(
            "the command points gateways at {hub_url}, a loopback address a cluster cannot reach: start the hub with --public-url set to the address gateways dial (or pass --public-url to `hub token create`)"
        ));
    }
    let argocd_token = match (nonempty(req.argocd_token_file), nonempty(req.argocd_token_secret)) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "argocdTokenFile and argocdTokenSecret cannot both be set: name a token file or an existing Secret",
            ));
        }
        (Some(f), None) => Some(install::ArgoCdTokenSource::File(f)),
        (None, Some(s)) => Some(install::ArgoCdTokenSource::Secret(s)),
        (None, None) => None,
    };
    if argocd_token.is_none() {
        warnings.push(format!(
            "the command reads the gateway's Argo CD token from the file ./{}: put an Argo CD account token there (argocd account generate-token --account <account>), or name the file or an existing Secret with --argocd-token-file / --argocd-token-secret",
            install::DEFAULT_ARGOCD_TOKEN_FILE
        ));
    }
    let command = install::helm_command(&install::InstallOptions {
        chart: state.helm_chart.clone(),
        hub_url,
        hub_plaintext: state.plaintext,
        ca_fingerprint: Some(fingerprint.clone()),
        token: token.clone(),
        name: name.clone(),
        environments: environments.clone(),
        argocd_url: nonempty(req.argocd_url),
        argocd_insecure: req.argocd_insecure,
        argocd_web_url: nonempty(req.argocd_web_url),
        argocd_token,
    });
    let created = CreatedToken {
        helm_command: command.command,
        release: command.release,
        namespace: command.namespace,
        status_command: format!("argocd-gateway hub token status {id} --wait"),
        warnings,
        id,
        token,
        expires_at: rfc3339(Some(expires_at)).unwrap_or_default(),
        ca_fingerprint: fingerprint,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub(super) async fn list_tokens(State(state): State<Arc<ApiState>>) -> ApiResult<Json<serde_json::Value>> {
    let now = jiff::Timestamp::now().as_second();
    let items: Vec<TokenView> = state
        .hub
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|r| TokenView {
            created_at: rfc3339(Some(r.created_at)),
            expires_at: rfc3339(Some(r.expires_at)),
            used_at: rfc3339(r.used_at),
            state: if r.used_at.is_some() {
                "used"
            } else if r.expires_at <= now {
                "expired"
            } else {
                "active"
            },
            record: r,
        })
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

pub(super) async fn delete_token(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if state.hub.store.delete_token(id.clone()).await? {
        tracing::info!(token_id = %id, "revoked a registration token");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no registration token {id}"),
        ))
    }
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}
