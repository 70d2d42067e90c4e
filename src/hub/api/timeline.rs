//! State timelines (see [`crate::hub::timeline`]): `GET …/applications/{namespace}/{name}/timeline`
//! for one application and `GET /api/v1/gateways/{id}/timeline` across a gateway's
//! applications, newest first. `since` is an RFC 3339 time or a duration back from now
//! (`24h`); `limit` caps the answer (default 500, at most 5000).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::applications::ensure_gateway;
use super::{ApiError, ApiState};
use crate::hub::timeline::to_json;

const DEFAULT_LIMIT: usize = 500;
const MAX_LIMIT: usize = 5000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimelineQuery {
    since: Option<String>,
    limit: Option<usize>,
}

impl TimelineQuery {
    /// The oldest time asked for (Unix ms) and the limit.
    fn bounds(&self) -> Result<(i64, usize), ApiError> {
        let since = match self.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => 0,
            Some(s) => match s.parse::<jiff::Timestamp>() {
                Ok(t) => t.as_millisecond(),
                Err(_) => {
                    let back = crate::util::parse_duration(s).map_err(|_| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("since must be an RFC 3339 time or a duration such as 24h, not {s:?}"),
                        )
                    })?;
                    crate::util::unix_ms_now() - back.as_millis() as i64
                }
            },
        };
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        Ok((since, limit))
    }
}

pub(super) async fn app_timeline(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<TimelineQuery>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    let (since, limit) = q.bounds()?;
    let rows = state
        .hub
        .store
        .app_timeline(id, format!("{namespace}/{name}"), since, limit)
        .await?;
    Ok(Json(json!({ "items": rows.iter().map(to_json).collect::<Vec<_>>() })))
}

pub(super) async fn gateway_timeline(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<TimelineQuery>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    let (since, limit) = q.bounds()?;
    let rows = state.hub.store.gateway_timeline(id, since, limit).await?;
    Ok(Json(json!({ "items": rows.iter().map(to_json).collect::<Vec<_>>() })))
}
