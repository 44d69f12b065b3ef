//! `/healthz` (the process runs) and `/readyz` (the mapping store answers and holds the
//! history this control plane follows). Both answer without a token; why the control
//! plane is not ready (the store's address, database and user) only with the admin token.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

use super::{ApiState, Bearer};

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz))
}

async fn readyz(State(state): State<ApiState>, request: Request) -> (StatusCode, String) {
    let Err(e) = state.shared.publisher.readiness().await else {
        return (StatusCode::OK, "ready".into());
    };
    // A wrong token counts towards the lockout here too: the detail must not become a
    // way to test guesses without one.
    // Probes send no token and are not counted as failures.
    if !request.headers().contains_key(header::AUTHORIZATION) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready".into());
    }
    let answer = match state.bearer(&request) {
        Bearer::Valid => format!("not ready: {e}"),
        Bearer::Refused | Bearer::LockedOut(_) => "not ready".into(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, answer)
}
