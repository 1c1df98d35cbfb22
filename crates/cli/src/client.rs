//! A small HTTP client for the CLI: JSON in, JSON out, API errors turned into messages.

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        Self::reply(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        Self::reply(response).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        Self::reply(response).await
    }

    /// DELETE; a 204 answer is `Value::Null`.
    pub async fn delete(&self, path: &str) -> Result<Value> {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        Self::reply(response).await
    }

    async fn reply(response: reqwest::Response) -> Result<Value> {
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .context("the server's reply is not JSON")?;
        if status.is_success() {
            return Ok(body);
        }
        let error = &body["error"];
        let mut message = format!(
            "{} {}: {}",
            status.as_u16(),
            error["code"].as_str().unwrap_or("error"),
            error["message"].as_str().unwrap_or("")
        );
        for detail in error["details"].as_array().into_iter().flatten() {
            message.push_str(&format!(
                "\n  {}: {}",
                detail["path"].as_str().unwrap_or(""),
                detail["message"].as_str().unwrap_or("")
            ));
        }
        Err(anyhow!(message))
    }
}
