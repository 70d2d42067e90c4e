//! Registration tokens: create (one hour by default, single use, stored hashed, answered with
//! the ready-to-paste `helm` command), list (never the secret) and revoke.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, ApiState, rfc3339};
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
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreatedToken {
    id: String,
    token: String,
    expires_at: String,
    ca_fingerprint: String,
    helm_command: String,
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

/// Quotes a value for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/=@,{}+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn helm_command(state: &ApiState, token: &str, fingerprint: &str, name: &str, envs: &[String]) -> String {
    let mut sets = vec![format!("gateway.hub.serverGrpcUrl={}", state.public_url)];
    if state.plaintext {
        sets.push("gateway.hub.plaintext=true".into());
    } else {
        sets.push(format!("registration.caFingerprint={fingerprint}"));
    }
    sets.push(format!("registration.token={token}"));
    if !name.is_empty() {
        sets.push(format!("registration.name={name}"));
    }
    if !envs.is_empty() {
        sets.push(format!("registration.environments={{{}}}", envs.join(",")));
    }
    let mut cmd = format!(
        "helm upgrade --install argocd-gateway {} --namespace argocd",
        shell_quote(&state.helm_chart)
    );
    for s in sets {
        cmd.push_str(" --set ");
        cmd.push_str(&shell_quote(&s));
    }
    cmd
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
    tracing::info!(token_id = %id, name = %name, expires_at = ?rfc3339(Some(expires_at)), "created a registration token");
    let created = CreatedToken {
        helm_command: helm_command(&state, &token, &fingerprint, &name, &environments),
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

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("registration.token=abc.DEF_-"),
            "registration.token=abc.DEF_-"
        );
        assert_eq!(shell_quote("registration.name=it's"), r"'registration.name=it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
