//! Shared by the examples: the payload type both sides agree on.

use serde::{Deserialize, Serialize};

/// The payload of an `email.send` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    pub to: String,
    pub subject: String,
}

/// The queue the examples use.
pub const QUEUE: &str = "emails";
/// The job kind the examples use.
pub const KIND: &str = "email.send";

/// Resolves on Ctrl-C or SIGTERM: what the example workers pass to `Worker::run`.
pub async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
