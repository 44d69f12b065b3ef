//! The node's long-lived tasks (control link, listeners, health endpoint, metrics line).
//! Each runs until shutdown; one that ends earlier, or panics, leaves the node half-alive
//! (no route updates, no listener), so it ends the process with an error instead and the
//! orchestrator restarts it.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// The tasks, each with the name an error reports.
#[derive(Default)]
pub(crate) struct Background {
    tasks: JoinSet<()>,
    names: HashMap<Id, String>,
}

impl Background {
    pub(crate) fn spawn(&mut self, name: impl Into<String>, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name.into());
    }

    /// Waits for `shutdown`; a task that ends first cancels it and is the error returned.
    /// Either way every task has ended when this returns.
    pub(crate) async fn run_until(mut self, shutdown: &CancellationToken) -> Result<()> {
        let failure = tokio::select! {
            _ = shutdown.cancelled() => None,
            Some(ended) = self.tasks.join_next_with_id() => Some(self.failure(ended)),
        };
        if let Some(failure) = &failure {
            tracing::error!(error = %failure, "a background task stopped; shutting down");
            shutdown.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
        failure.map_or(Ok(()), Err)
    }

    fn failure(&self, ended: std::result::Result<(Id, ()), tokio::task::JoinError>) -> Error {
        let (id, how) = match ended {
            Ok((id, ())) => (id, "ended before shutdown".to_string()),
            Err(e) => {
                let id = e.id();
                let how = match e.try_into_panic() {
                    Ok(panic) => format!("panicked: {}", panic_message(&panic)),
                    Err(e) => e.to_string(),
                };
                (id, how)
            }
        };
        let name = self.names.get(&id).map_or("a background task", String::as_str);
        Error::Node(format!("{name} {how}"))
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_cancels_the_rest_and_is_the_error() {
        let shutdown = CancellationToken::new();
        let mut background = Background::default();
        let stop = shutdown.clone();
        background.spawn("metrics line", async move { stop.cancelled().await });
        background.spawn("control link", async { panic!("time_to_live is longer than 1000 years") });
        let result = tokio::time::timeout(Duration::from_secs(5), background.run_until(&shutdown)).await;
        let error = result.expect("ends without waiting for a shutdown signal").unwrap_err().to_string();
        assert!(error.contains("control link panicked: time_to_live is longer than 1000 years"), "{error}");
        assert!(shutdown.is_cancelled(), "the other tasks were told to stop");
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_an_error_too_and_shutdown_is_not() {
        let shutdown = CancellationToken::new();
        let mut background = Background::default();
        background.spawn("listener imap", async {});
        let error = background.run_until(&shutdown).await.unwrap_err().to_string();
        assert!(error.contains("listener imap ended before shutdown"), "{error}");

        let shutdown = CancellationToken::new();
        let mut background = Background::default();
        let stop = shutdown.clone();
        background.spawn("health endpoint", async move { stop.cancelled().await });
        shutdown.cancel();
        assert!(background.run_until(&shutdown).await.is_ok());
    }
}
