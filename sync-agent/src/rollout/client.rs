//! The operator's client of the config center's HTTP API (`sync-agent
//! config …`).

use anyhow::{Context as _, bail};
use serde::{Serialize, de::DeserializeOwned};

use super::wire::{ApiError, ConfigKey};

/// A center at `base` (`http://host:port`).
pub struct CenterClient {
    base: String,
    http: reqwest::Client,
}

impl CenterClient {
    /// A client for the center at `base`.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// The URL of a config key's resource.
    pub fn key_url(&self, key: &ConfigKey, suffix: &str) -> String {
        format!(
            "{}/v1/configs/{}/{}/{}{suffix}",
            self.base, key.namespace, key.group, key.name
        )
    }

    /// The URL of a path under `/v1`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.base)
    }

    async fn answer(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the config center at {} ({what})", self.base))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or(body);
            bail!("config center refused {what}: {status}: {message}");
        }
        serde_json::from_str(&body).with_context(|| format!("unreadable answer to {what}"))
    }

    /// GET a JSON document.
    pub async fn get(&self, url: &str, what: &str) -> anyhow::Result<serde_json::Value> {
        self.answer(self.http.get(url), what).await
    }

    /// PUT a JSON body.
    pub async fn put<T: Serialize>(
        &self,
        url: &str,
        body: &T,
        what: &str,
    ) -> anyhow::Result<serde_json::Value> {
        self.answer(self.http.put(url).json(body), what).await
    }

    /// POST a JSON body.
    pub async fn post<T: Serialize>(
        &self,
        url: &str,
        body: &T,
        what: &str,
    ) -> anyhow::Result<serde_json::Value> {
        self.answer(self.http.post(url).json(body), what).await
    }

    /// DELETE a resource.
    pub async fn delete(&self, url: &str, what: &str) -> anyhow::Result<serde_json::Value> {
        self.answer(self.http.delete(url), what).await
    }

    /// Decodes an answer into a type.
    pub fn decode<T: DeserializeOwned>(value: serde_json::Value) -> anyhow::Result<T> {
        serde_json::from_value(value).context("unexpected answer from the config center")
    }
}
