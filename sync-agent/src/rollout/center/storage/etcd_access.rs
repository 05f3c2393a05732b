//! [`EtcdAccess`]: how a center reaches its etcd cluster: the client URLs
//! and, optionally, TLS (the cluster's CA, a client certificate) and an
//! etcd user whose password is read from a file. Built from
//! `[rollout.center]` when the store is opened; every file is read and
//! checked here, so a missing or unreadable file, or one that holds no
//! certificate or key, stops the center at start naming the field and the
//! file. What the settings themselves get wrong (a certificate without its
//! key, `https://` without a CA) is a config problem
//! ([`CenterConfig::problems`]).
//!
//! TLS and authentication are etcd-client's own (`ConnectOptions::with_tls`,
//! rustls with the aws-lc-rs provider, the one the rest of the agent uses;
//! `ConnectOptions::with_user`, with the token refreshed when etcd lets it
//! expire, `--auth-token-ttl`). Only the CA named is trusted: etcd clusters
//! run on a CA of their own, and a center must not accept any publicly
//! certified server as its store.

use std::path::Path;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::rollout::center::config::CenterConfig;
use crate::rollout::center::error::{CenterError, CenterResult};

/// How to reach the cluster. Its `Debug` never shows the password.
#[derive(Clone)]
pub struct EtcdAccess {
    endpoints: Vec<String>,
    tls: Option<TlsOptions>,
    /// Whether TLS presents a client certificate (`etcd_cert_file`).
    presents_certificate: bool,
    /// (user, password, the file the password came from).
    user: Option<(String, String, String)>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(user, ..)| user))
            .finish()
    }
}

/// A config problem found in a file: `field: file: what`.
fn file_problem(field: &str, path: &Path, what: impl std::fmt::Display) -> CenterError {
    CenterError::Invalid(format!(
        "rollout.center.{field}: {}: {what}",
        path.display()
    ))
}

/// The PEM certificates of `path` (at least one).
fn certificates(field: &str, path: &Path) -> CenterResult<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| file_problem(field, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_problem(field, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_problem(field, path, "holds no PEM certificate"));
    }
    Ok(pem)
}

/// The password in `path`: its first line, as written (a final line end
/// is not part of it).
fn password(path: &Path) -> CenterResult<String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| file_problem("etcd_password_file", path, e))?;
    let first = text.lines().next().unwrap_or_default();
    if first.is_empty() {
        return Err(file_problem(
            "etcd_password_file",
            path,
            "is empty: write the etcd user's password on its first line",
        ));
    }
    warn_if_readable_by_others(path);
    Ok(first.to_string())
}

/// A password file others can read is worth a warning, not a refusal
/// (the operator may have reasons; the agent runs as root).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "rollout.center.etcd_password_file is readable by group or others (chmod 600 it)"
        );
    }
}

impl EtcdAccess {
    /// Plain `http://` endpoints, no credentials (tests, tools).
    pub fn plain(endpoints: &[String]) -> Self {
        EtcdAccess {
            endpoints: endpoints.to_vec(),
            tls: None,
            presents_certificate: false,
            user: None,
        }
    }

    /// The access `[rollout.center]` describes, its files read and
    /// checked (errors name the field and the file).
    pub fn from_config(config: &CenterConfig) -> CenterResult<Self> {
        let mut presents_certificate = false;
        let tls = if config.etcd_tls() {
            let ca = config.etcd_ca_file.as_deref().ok_or_else(|| {
                CenterError::Invalid(
                    "rollout.center.etcd_ca_file: the etcd endpoints are https://: give the CA that signed the members' certificates"
                        .into(),
                )
            })?;
            let mut tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(certificates("etcd_ca_file", ca)?));
            if let (Some(cert), Some(key)) = (&config.etcd_cert_file, &config.etcd_key_file) {
                let chain = certificates("etcd_cert_file", cert)?;
                let key_pem =
                    std::fs::read(key).map_err(|e| file_problem("etcd_key_file", key, e))?;
                check_pair(&chain, &key_pem, cert, key)?;
                tls = tls.identity(Identity::from_pem(chain, key_pem));
                presents_certificate = true;
            }
            Some(tls)
        } else {
            None
        };
        let user = match (&config.etcd_user, &config.etcd_password_file) {
            (Some(user), Some(file)) => {
                Some((user.clone(), password(file)?, file.display().to_string()))
            }
            _ => None,
        };
        Ok(EtcdAccess {
            endpoints: config.etcd_endpoints.clone(),
            tls,
            presents_certificate,
            user,
        })
    }

    /// The client URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The client URLs joined, for messages.
    pub fn named(&self) -> String {
        self.endpoints.join(",")
    }

    /// etcd-client's options for this access, on top of `base`.
    pub fn options(&self, base: ConnectOptions) -> ConnectOptions {
        let mut options = base;
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((user, password, _)) = &self.user {
            // etcd's simple tokens expire (`--auth-token-ttl`, 5 min by
            // default): every request refused for an expired token
            // authenticates again and is sent once more.
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        options
    }

    /// Why connecting or a first request failed, in the operator's terms:
    /// the etcd error with its causes, and what to check when it is an
    /// authentication, permission or TLS failure.
    pub fn explain(&self, error: &etcd_client::Error) -> String {
        let text = error_chain(error);
        let hint = self.hint(&text);
        format!("{text}{hint}")
    }

    /// What to check, given the text of an etcd error ("" when nothing
    /// more specific than the error itself can be said).
    fn hint(&self, text: &str) -> String {
        let lower = text.to_lowercase();
        // A TLS alert the member sent about this center's certificate.
        // Which alert depends on the member's TLS stack and version (Go
        // sends `bad certificate` under TLS 1.2 and some 1.3 builds,
        // `certificate required` under others), so both mean the same.
        let refused_certificate = lower.contains("alert")
            && [
                "badcertificate",
                "bad certificate",
                "certificaterequired",
                "certificate required",
            ]
            .iter()
            .any(|said| lower.contains(said));
        if lower.contains("authentication failed") {
            match &self.user {
                Some((user, _, file)) => format!(
                    " (authentication failed: etcd refused user {user:?} with the password in {file}; check rollout.center.etcd_user and etcd_password_file)"
                ),
                None => " (authentication failed)".into(),
            }
        } else if lower.contains("authentication is not enabled") {
            " (etcd_user is set but this etcd has no authentication enabled: remove etcd_user and etcd_password_file, or `etcdctl auth enable`)".into()
        } else if lower.contains("user name is empty") || lower.contains("user name not found") {
            " (etcd requires authentication: set rollout.center.etcd_user and etcd_password_file)"
                .into()
        } else if lower.contains("permission denied") {
            let who = self
                .user
                .as_ref()
                .map_or("the center's user".to_string(), |(u, ..)| {
                    format!("user {u:?}")
                });
            format!(
                " (permission denied: give {who} a role with readwrite on the center's etcd_prefix)"
            )
        } else if refused_certificate && !self.presents_certificate {
            " (etcd refused the TLS connection for want of a client certificate: its members run with --client-cert-auth; set rollout.center.etcd_cert_file and etcd_key_file)".into()
        } else if refused_certificate {
            " (etcd refused this center's client certificate: check rollout.center.etcd_cert_file against the CA the members trust, --trusted-ca-file)".into()
        } else if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
        {
            " (TLS to etcd failed: check rollout.center.etcd_ca_file, etcd_cert_file and etcd_key_file against the members' certificates)".into()
        } else if self.tls.is_some()
            && ["connection closed", "broken pipe", "connection reset"]
                .iter()
                .any(|said| lower.contains(said))
        {
            // With TLS 1.3 a member that refuses the client's certificate
            // (or its absence, under --client-cert-auth) is seen only as
            // a connection it closes after the handshake: the client's
            // next read or write finds it closed, broken or reset.
            " (over TLS this is also how a member refuses this center's client certificate, or the lack of one under --client-cert-auth: check rollout.center.etcd_cert_file and etcd_key_file)".into()
        } else {
            String::new()
        }
    }
}

/// Checks that `key_pem` is a private key that fits the certificate
/// chain `chain_pem` (as a TLS client would present them), so a mismatch
/// is named at start rather than met as a failed handshake.
fn check_pair(chain_pem: &[u8], key_pem: &[u8], cert: &Path, key: &Path) -> CenterResult<()> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_problem("etcd_cert_file", cert, e))?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| file_problem("etcd_key_file", key, format!("no PEM private key: {e}")))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CenterError::internal("TLS protocol versions", e))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| {
            file_problem(
                "etcd_key_file",
                key,
                format!("does not fit the certificate in {}: {e}", cert.display()),
            )
        })?;
    Ok(())
}

/// An etcd client error with every cause under it (its own `Display`
/// says only "transport error" for a failed TLS handshake).
fn error_chain(error: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let mut text = match error {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    };
    let mut source = match error {
        etcd_client::Error::GRpcStatus(status) => status.source(),
        etcd_client::Error::TransportError(e) => e.source(),
        _ => None,
    };
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::center::config::StoreKind;

    fn etcd_config(dir: &Path) -> CenterConfig {
        CenterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            db_path: dir.join("unused.redb"),
            store: StoreKind::Etcd,
            etcd_endpoints: vec!["https://127.0.0.1:2379".into()],
            etcd_ca_file: Some(dir.join("ca.pem")),
            ..Default::default()
        }
    }

    fn error_of(config: &CenterConfig) -> String {
        EtcdAccess::from_config(config).unwrap_err().to_string()
    }

    #[test]
    fn each_missing_or_wrong_file_is_named_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = etcd_config(dir.path());
        let e = error_of(&config);
        assert!(
            e.starts_with("rollout.center.etcd_ca_file: ") && e.contains("ca.pem"),
            "{e}"
        );
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let client = rcgen::generate_simple_self_signed(vec!["center".into()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        let e = error_of(&config);
        assert!(
            e.contains("etcd_ca_file") && e.contains("no PEM certificate"),
            "{e}"
        );
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        assert!(EtcdAccess::from_config(&config).unwrap().tls.is_some());

        config.etcd_cert_file = Some(dir.path().join("client.pem"));
        config.etcd_key_file = Some(dir.path().join("client.key"));
        std::fs::write(dir.path().join("client.pem"), client.cert.pem()).unwrap();
        let e = error_of(&config);
        assert!(
            e.contains("etcd_key_file") && e.contains("client.key"),
            "{e}"
        );
        // The CA's key is not the client certificate's.
        std::fs::write(
            dir.path().join("client.key"),
            ca.signing_key.serialize_pem(),
        )
        .unwrap();
        let e = error_of(&config);
        assert!(
            e.contains("does not fit") && e.contains("client.pem"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("client.key"),
            client.signing_key.serialize_pem(),
        )
        .unwrap();
        EtcdAccess::from_config(&config).unwrap();

        config.etcd_user = Some("center".into());
        config.etcd_password_file = Some(dir.path().join("password"));
        let e = error_of(&config);
        assert!(
            e.starts_with("rollout.center.etcd_password_file: ") && e.contains("password"),
            "{e}"
        );
        std::fs::write(dir.path().join("password"), "\n").unwrap();
        assert!(error_of(&config).contains("is empty"));
        std::fs::write(dir.path().join("password"), "s3cret word\n").unwrap();
        let access = EtcdAccess::from_config(&config).unwrap();
        assert_eq!(access.user.as_ref().unwrap().1, "s3cret word");
        assert!(
            !format!("{access:?}").contains("s3cret"),
            "the password never shows"
        );
    }

    #[test]
    fn a_members_certificate_alert_points_to_the_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        let mut config = etcd_config(dir.path());
        let without = EtcdAccess::from_config(&config).unwrap();
        for alert in [
            "transport error: connection error: received fatal alert: BadCertificate",
            "transport error: connection error: received fatal alert: CertificateRequired",
        ] {
            let hint = without.hint(alert);
            assert!(
                hint.contains("client certificate") && hint.contains("etcd_cert_file"),
                "{alert}: {hint}"
            );
        }
        let client = rcgen::generate_simple_self_signed(vec!["center".into()]).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("client.key"),
            client.signing_key.serialize_pem(),
        )
        .unwrap();
        config.etcd_cert_file = Some(dir.path().join("client.pem"));
        config.etcd_key_file = Some(dir.path().join("client.key"));
        let with = EtcdAccess::from_config(&config).unwrap();
        let hint = with.hint("received fatal alert: BadCertificate");
        assert!(
            hint.contains("refused this center's client certificate"),
            "{hint}"
        );
        // Our own verdict on the member's certificate is not the member's.
        let hint = with.hint("invalid peer certificate: UnknownIssuer");
        assert!(hint.contains("etcd_ca_file"), "{hint}");
    }
}
