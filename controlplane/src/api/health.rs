//! `/healthz` (the process runs) and `/readyz` (the mapping store answers and holds the
//! history this control plane follows); no auth.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::ApiState;

pub fn routes() -> Router<ApiState> {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz))
}

async fn readyz(State(state): State<ApiState>) -> (StatusCode, String) {
    match state.shared.readiness().await {
        Ok(_) => (StatusCode::OK, "ready".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")),
    }
}
