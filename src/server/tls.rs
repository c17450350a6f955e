//! TLS for the decision listener (rustls): the server's certificate and key
//! and, when a client CA is configured, required client certificates, so
//! that only the gateway may call the PDP. The files are re-read when they
//! change (certificate rotation without a restart); a broken or mismatched
//! set keeps the last good one. It does not authenticate end users.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Certificate files that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsError(String);

/// The listener's TLS configuration, rebuilt when its files change.
#[derive(Debug)]
pub struct ReloadingTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: ArcSwap<ServerConfig>,
    /// Modification times of the files at the last load. A std mutex is
    /// fine: held for a comparison, never across an await.
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl ReloadingTls {
    /// Loads the configured files.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
            return Err(TlsError("set both cert_file and key_file".into()));
        };
        let client_ca = config.client_ca_file.clone();
        let current = build(cert, key, client_ca.as_deref())?;
        let tls = ReloadingTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca,
            current: ArcSwap::from_pointee(current),
            stamps: Mutex::new(Vec::new()),
        };
        *tls.stamps.lock().unwrap_or_else(|p| p.into_inner()) = tls.file_stamps();
        Ok(tls)
    }

    /// True when client certificates are required.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.cert.as_path(), self.key.as_path()];
        files.extend(self.client_ca.as_deref());
        files
    }

    fn file_stamps(&self) -> Vec<Option<SystemTime>> {
        self.files()
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn build(&self) -> Result<ServerConfig, TlsError> {
        build(&self.cert, &self.key, self.client_ca.as_deref())
    }

    /// Rebuilds the configuration if a file changed. A broken set keeps the
    /// last good configuration; the error is returned for logging.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamps = self.file_stamps();
        {
            let last = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *last == stamps {
                return Ok(false);
            }
        }
        let config = self.build()?;
        self.current.store(Arc::new(config));
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        Ok(true)
    }

    /// Checks the files every `interval` until `cancel`.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        crate::time::every(interval, cancel, || async {
            match self.reload_if_changed() {
                Ok(true) => tracing::info!("listener TLS certificates reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "listener TLS files rejected; keeping the last good ones")
                }
            }
        })
        .await
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

/// Builds a rustls server configuration from PEM files.
fn build(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| TlsError(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let bad = |e: &dyn std::fmt::Display| TlsError(format!("{}: {e}", ca.display()));
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
                roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| bad(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, private_key).map_err(|e| {
        TlsError(format!(
            "{} and {} do not form a usable certificate and key: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS connection accepted by [`incoming`].
#[derive(Debug)]
pub struct TlsConnection(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts TCP connections and completes their TLS handshakes (each in its
/// own task, bounded in time, so a slow client cannot stall accepting)
/// until `cancel`. Failed handshakes (plaintext, a certificate from another
/// CA, none at all) are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    tasks: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<super::Coalesced<TlsConnection>, std::io::Error>>
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handshakes = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            handshakes.spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(conn)) => {
                        let _ = tx
                            .send(Ok(super::Coalesced::new(TlsConnection(conn))))
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(peer = %peer, error = %e, "TLS handshake refused")
                    }
                    Err(_) => tracing::info!(peer = %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
