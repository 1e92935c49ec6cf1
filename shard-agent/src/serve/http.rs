//! The HTTP(S) server loop shared by the agent daemon and `shardcut serve`:
//! a bounded number of connections, a TLS handshake and the request headers
//! each within a time limit, until a shutdown future resolves.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use topology::Secret;

/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole request (body included) must be answered within this; the
/// agent's longest call is `prepare` (a connection and preflight) or
/// `block` (bounded by the write-block timeout).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How a server is reached: HTTPS with its certificate, or plain HTTP
/// only when asked for in so many words. The agent and `shardcut serve`
/// take the same flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerTls {
    /// The server's certificate chain (PEM): it is served over HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP: the token and what requests carry cross the
    /// network in clear. Only on loopback or a network you trust; never
    /// with --tls-cert.
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure: bool,
}

fn read_pem(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

impl ServerTls {
    /// The TLS configuration (`None`: plain HTTP, with `--insecure`);
    /// `client_ca`: clients must present a certificate it signed.
    pub fn server_config(
        &self,
        client_ca: Option<&Path>,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let client_ca = match client_ca {
                    Some(p) => Some(read_pem(p, "--client-ca")?),
                    None => None,
                };
                let config = crate::tls::server_config(
                    &read_pem(cert, "--tls-cert")?,
                    &read_pem(key, "--tls-key")?,
                    client_ca.as_deref(),
                )
                .map_err(|e| e.to_string())?;
                Ok(Some(Arc::new(config)))
            }
            _ if self.insecure => Ok(None),
            _ => Err(
                "give --tls-cert and --tls-key (HTTPS), or --insecure to serve plain HTTP".into(),
            ),
        }
    }
}

/// The bearer token in `path` (a trailing newline is not part of it): at
/// least 16 characters.
pub fn read_token(path: &Path) -> Result<Secret, String> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?
        .trim_end_matches(['\n', '\r'])
        .to_string();
    if token.len() < 16 {
        return Err(format!(
            "token in {} is shorter than 16 characters; use a long random token",
            path.display()
        ));
    }
    Ok(Secret::new(token))
}

/// Compares two secrets in time independent of where the first
/// difference is.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until
/// `shutdown` resolves; connections beyond `max_connections` are closed at
/// once.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("{peer}: refused: {max_connections} connections are open already");
            continue;
        };
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = match acceptor {
                None => {
                    http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::warn!("{peer}: TLS handshake refused: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(
                                "{peer}: no TLS handshake within {} s",
                                HANDSHAKE_TIMEOUT.as_secs()
                            );
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!("{peer}: {e}");
            }
        });
    }
}
