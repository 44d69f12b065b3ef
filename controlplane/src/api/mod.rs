//! The management HTTP API: one module per resource, bearer-token auth as middleware.

mod commands;
mod destinations;
mod health;
mod mappings;
mod moves;
mod nodes;
mod stats;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use subtle::ConstantTimeEq;

pub use stats::fleet_stats;

use crate::state::Shared;

/// Shortest admin token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 32;

#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    token: Arc<String>,
}

pub fn router(shared: Arc<Shared>, token: String) -> Router {
    let state = ApiState { shared, token: Arc::new(token) };
    let protected = Router::new()
        .merge(stats::routes())
        .merge(commands::routes())
        .merge(destinations::routes())
        .merge(nodes::routes())
        .merge(mappings::routes())
        .merge(moves::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new().merge(health::routes()).merge(protected).with_state(state)
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(state.token.as_bytes())) {
        next.run(request).await
    } else {
        let body = axum::Json(serde_json::json!({ "error": "missing or invalid bearer token" }));
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
    }
}

/// Seconds with millisecond precision, for `*_age_s` fields.
fn seconds(d: std::time::Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

#[cfg(test)]
mod tests;
