//! TLS for the MQTT client: a rustls configuration with the ring provider, from PEM files,
//! and the translation of handshake failures into one sentence a user can act on.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::IngestError;

fn cfg_err(s: String) -> IngestError {
    IngestError::Config(s)
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, IngestError> {
    pem_certs(path, what).map_err(cfg_err)
}

/// The PEM certificates in `path` (at least one); errors name `what` and the file. Also what
/// the HTTP API's TLS reads its chain with.
pub fn pem_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds the client configuration: trust `ca_file` (or the system roots), and present a
/// client certificate when both `cert_file` and `key_file` are given.
pub fn client_config(
    ca_file: Option<&Path>,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<Arc<ClientConfig>, IngestError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(p) => {
            for c in read_certs(p, "CA file")? {
                roots
                    .add(c)
                    .map_err(|e| cfg_err(format!("CA file {}: {e}", p.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(cfg_err(
                    "no system CA certificates found; give the broker's CA with --ca-file".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let cfg = match (cert_file, key_file) {
        (Some(c), Some(k)) => {
            let chain = read_certs(c, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| cfg_err(format!("client key {}: {e}", k.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                cfg_err(format!(
                    "client certificate and key do not fit together: {e}"
                ))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(cfg_err(
                "mutual TLS needs both --client-cert and --client-key".into(),
            ));
        }
    };
    Ok(Arc::new(cfg))
}

/// A handshake failure that retrying cannot fix, as a sentence; None for transient ones.
pub fn classify(e: &rumqttc::TlsError) -> Option<String> {
    let rustls_err = match e {
        rumqttc::TlsError::TLS(r) => Some(r),
        rumqttc::TlsError::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        rumqttc::TlsError::DNSName(_) => {
            return Some("the broker host is not a valid TLS server name".into());
        }
        _ => None,
    }?;
    Some(match rustls_err {
        rustls::Error::InvalidCertificate(c) => format!(
            "the broker's certificate is not trusted ({c:?}); check --ca-file and that the broker's certificate names this host"
        ),
        rustls::Error::AlertReceived(a) => format!(
            "the broker rejected our TLS handshake ({a:?}); if it requires a client certificate, give --client-cert and --client-key"
        ),
        rustls::Error::NoCertificatesPresented => "the broker presented no certificate".into(),
        other => format!("{other}"),
    })
}
