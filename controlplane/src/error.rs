//! The control plane's error type: store failures, bad requests, and who they are shown to.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;
use crate::undeclared::Conflict;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store's history was lost or went back and the new epoch is not set up (or a
    /// write was refused while it was being set up): temporary, retry.
    #[error("{0}")]
    HistoryLost(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A mapping names a destination a control plane does not declare: a node's `Resolve`
    /// gets a temporary failure; a write naming it is refused, with the replicas that lack it.
    #[error("{message}")]
    Undeclared { message: String, conflicts: Vec<Conflict> },
    #[error("{0}")]
    Config(String),
    /// A node's Hello names an id a live process already holds.
    #[error("{0}")]
    NodeIdInUse(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::BadRequest(m) => tonic::Status::invalid_argument(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            // Not the default destination: the node answers its client with a temporary failure.
            Error::Undeclared { message, .. } => tonic::Status::unavailable(message),
            Error::NodeIdInUse(m) => tonic::Status::already_exists(m),
            // A node that gets `unavailable` answers its client with a temporary failure.
            other => tonic::Status::unavailable(other.to_string()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Undeclared { .. } => StatusCode::CONFLICT,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::NodeIdInUse(_) => StatusCode::CONFLICT,
            Error::Store(StoreError::ReadOnly) => StatusCode::CONFLICT,
            Error::Store(_) | Error::HistoryLost(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Config(_) | Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Error::Undeclared { conflicts, .. } = &self {
            body["conflicts"] = serde_json::json!(conflicts);
        }
        (status, Json(body)).into_response()
    }
}
