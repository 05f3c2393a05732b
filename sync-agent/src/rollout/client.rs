//! The operator's client of the config center's HTTP API (`sync-agent
//! config …`).

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Serialize, de::DeserializeOwned};

use super::wire::{ApiError, ConfigKey};

/// An HTTP client builder for a center: `token` is sent as
/// `Authorization: Bearer` on every request (marked sensitive, so it is
/// never logged), and `ca_file` (PEM, one or more certificates) becomes the
/// only trust root for an `https://` center (without it: the system's).
/// Shared by the CLI and the device side, so both speak to a center the
/// same way.
pub fn client_builder(
    token: Option<&str>,
    ca_file: Option<&Path>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty() && !token.contains(char::is_whitespace))
            .context("the token is empty or holds spaces or control characters")?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if let Some(ca_file) = ca_file {
        let pem = std::fs::read(ca_file)
            .with_context(|| format!("reading CA file {}", ca_file.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("CA file {}: not PEM certificates", ca_file.display()))?;
        if certs.is_empty() {
            bail!("CA file {} holds no PEM certificate", ca_file.display());
        }
        builder = builder.tls_certs_only(certs);
    }
    Ok(builder)
}

/// Reads a token file: the token on its first line (surrounding whitespace
/// ignored). Errors name the file.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!(
            "token file {} must hold one token (as printed by `sync-agent config token new`)",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// A center at `base` (`http://host:port` or `https://host:port`).
pub struct CenterClient {
    base: String,
    http: reqwest::Client,
}

impl CenterClient {
    /// A client for the center at `base`, without token or CA file.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// A client for the center at `base` sending `token`, trusting only
    /// `ca_file` for HTTPS if given (see [`client_builder`]).
    pub fn with_auth(
        base: &str,
        token: Option<&str>,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let http = client_builder(token, ca_file)?
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_ca_files_are_checked_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        assert!(client_builder(Some("mlag_ab"), None).is_ok());
        for bad in ["", "a b", "a\nb"] {
            assert!(client_builder(Some(bad), None).is_err(), "{bad:?}");
        }
        let missing = dir.path().join("missing.pem");
        let e = format!("{:#}", client_builder(None, Some(&missing)).unwrap_err());
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = format!("{:#}", client_builder(None, Some(&empty)).unwrap_err());
        assert!(e.contains("empty.pem"), "{e}");
        let ca = rcgen::generate_simple_self_signed(vec!["center".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        client_builder(None, Some(&good)).unwrap().build().unwrap();

        let file = dir.path().join("token");
        std::fs::write(&file, "  mlag_00ff\n").unwrap();
        assert_eq!(read_token_file(&file).unwrap(), "mlag_00ff");
        std::fs::write(&file, "\n").unwrap();
        assert!(format!("{:#}", read_token_file(&file).unwrap_err()).contains("token file"));
    }
}
