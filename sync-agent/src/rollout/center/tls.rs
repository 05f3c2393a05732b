//! HTTPS for the center: its certificate and key (PEM) as a rustls server
//! config. The crypto provider is named explicitly (aws-lc-rs, the one the
//! MQTT client already builds), so no process-wide default is needed.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server config of `tls_cert` (a PEM chain, leaf first) and `tls_key`.
/// Errors name the file and what is wrong with it.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("rollout.center.tls_cert: reading {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "rollout.center.tls_cert: {} holds no PEM certificate",
            cert.display()
        );
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("rollout.center.tls_key: reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "rollout.center.tls_key: {} does not fit the certificate in {}",
                key.display(),
                cert.display()
            )
        })?;
    // HTTP/1.1 only, as the plain listener (axum built with http1 alone).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_and_its_key_load_and_mismatches_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key, other_key) = (
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            dir.path().join("o.pem"),
        );
        std::fs::write(&cert, a.cert.pem()).unwrap();
        std::fs::write(&key, a.signing_key.serialize_pem()).unwrap();
        std::fs::write(&other_key, b.signing_key.serialize_pem()).unwrap();
        server_config(&cert, &key).unwrap();
        let e = format!("{:#}", server_config(&cert, &other_key).unwrap_err());
        assert!(e.contains("does not fit") && e.contains("o.pem"), "{e}");
        let e = format!("{:#}", server_config(&key, &key).unwrap_err());
        assert!(e.contains("tls_cert") && e.contains("k.pem"), "{e}");
        let e = format!(
            "{:#}",
            server_config(&dir.path().join("missing.pem"), &key).unwrap_err()
        );
        assert!(e.contains("missing.pem"), "{e}");
    }
}
