//! HTTPS for the API: rustls (ring provider, as the MQTT client) in front of the same router.
//! `axum::serve` speaks plain TCP only, so TLS connections are accepted here and handed to
//! hyper one by one; a failed handshake costs that connection only. At shutdown the loop
//! stops accepting and lets open connections finish what they are answering (up to
//! [`DRAIN`]), as `axum::serve`'s graceful shutdown does for plain HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use super::{ServeError, TlsFiles};

/// A TLS acceptor for the configured certificate and key.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let chain = crate::ingest::pem_certs(&files.cert, "certificate chain")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    let mut cfg = cfg;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// How long open connections get to finish at shutdown.
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts TLS connections until `stop` fires, then drains the open ones.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), ServeError> {
    let mut make = router.into_make_service_with_connect_info::<SocketAddr>();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => {
                if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
                    tracing::warn!("HTTPS: connections still open after {DRAIN:?}; closing them");
                }
                return Ok(());
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let svc = match make.call(peer).await {
            Ok(s) => s,
            Err(never) => match never {},
        };
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let hyper_svc = hyper_util::service::TowerToHyperService::new(svc);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder
                .serve_connection(TokioIo::new(tls), hyper_svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}
