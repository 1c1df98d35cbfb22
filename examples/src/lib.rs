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
