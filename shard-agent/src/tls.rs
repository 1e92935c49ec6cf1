//! TLS for every connection shardcut makes or accepts: database
//! connections (the libraries' and shardcut's own readers), the agent's
//! HTTPS API and the orchestrator's client of it. One crypto provider
//! (rustls with ring), one reading of PEM files, one meaning of each
//! [`TlsMode`].

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
pub use topology::TlsMode;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not valid PEM: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} holds no certificate")]
    NoCertificate { what: &'static str },
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("client certificate checks: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("server certificate checks: {0}")]
    ServerVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("server name `{0}` is neither a DNS name nor an IP address")]
    Name(String),
    #[error("the server does not offer TLS, and this shard's `tls` mode requires it")]
    NotOffered,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default provider, for the libraries that build
/// their own rustls configuration (mysql_async). Idempotent.
pub fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Every certificate in `pem`.
pub fn certificates(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

pub fn private_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::Pem { what, source })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(ca_pem, "the CA file")? {
        store.add(cert).map_err(|source| TlsError::Rustls {
            what: "the CA file",
            source,
        })?;
    }
    Ok(Arc::new(store))
}

/// A client configuration for `mode`. `ca_pem` is required when the mode
/// verifies (the topology guarantees it); `identity` is a client
/// certificate chain and key for mutual TLS.
pub fn client_config(
    mode: TlsMode,
    ca_pem: Option<&str>,
    identity: Option<(&str, &str)>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, ca_pem) {
        (TlsMode::VerifyFull, Some(ca)) | (TlsMode::VerifyCa, Some(ca)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
                .build()
                .map_err(TlsError::ServerVerifier)?;
            if mode == TlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { webpki, seen: None })
            }
        }
        // The topology requires a CA for these modes; a spec that reaches
        // here without one (from the network) never gets less checking.
        (TlsMode::VerifyFull | TlsMode::VerifyCa, None) => {
            return Err(TlsError::NoCertificate {
                what: "the CA that verify-ca/verify-full check against",
            })
        }
        _ => Arc::new(Unchecked(provider.clone())),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certificates(cert, "the client certificate")?,
                private_key(key, "the client key")?,
            )
            .map_err(|source| TlsError::Rustls {
                what: "the client certificate and key",
                source,
            }),
    }
}

/// A server configuration; with `client_ca_pem`, every client must present
/// a certificate that CA signed (mutual TLS).
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?;
    let builder = match client_ca_pem {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider)
                .build()
                .map_err(TlsError::ClientVerifier)?,
        ),
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(
            certificates(cert_pem, "the server certificate")?,
            private_key(key_pem, "the server key")?,
        )
        .map_err(|source| TlsError::Rustls {
            what: "the server certificate and key",
            source,
        })
}

/// The name a client checks the server's certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::Name(host.to_string()))
}

/// `require` and `prefer`: encryption without authentication of the
/// server (libpq's meaning). The handshake's signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name is not compared.
/// With `seen`, the names the certificate carries are kept there (see
/// [`recording_config`]).
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
    seen: Option<SeenNames>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked only after the chain verified, so a name
        // error means the chain is good.
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            })) => {
                if let Some(Ok(mut seen)) = self.seen.as_ref().map(|s| s.lock()) {
                    *seen = presented_names(&presented);
                }
                Ok(ServerCertVerified::assertion())
            }
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Where [`recording_config`] leaves the names it saw.
pub type SeenNames = Arc<std::sync::Mutex<Vec<String>>>;

/// A `verify-ca` client configuration that also records the names the
/// server's certificate carries (when they differ from the name asked
/// for): mysql_async cannot skip the name check, so shardcut learns a name
/// the certificate is valid for and has the library check that one, which
/// is what `verify-ca` promises (a certificate the CA signed).
pub fn recording_config(ca_pem: &str) -> Result<(ClientConfig, SeenNames), TlsError> {
    let provider = provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(TlsError::ServerVerifier)?;
    let names = Arc::new(std::sync::Mutex::new(Vec::new()));
    let verifier = Arc::new(ChainOnly {
        webpki,
        seen: Some(names.clone()),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((config, names))
}

/// The DNS names and IP addresses among rustls's rendering of a
/// certificate's subject alternative names (`DnsName("db1")`,
/// `IpAddress(10.0.0.5)`), wildcards left out.
pub fn presented_names(presented: &[String]) -> Vec<String> {
    presented
        .iter()
        .filter_map(|p| {
            p.strip_prefix("DnsName(\"")
                .and_then(|r| r.strip_suffix("\")"))
                .or_else(|| {
                    p.strip_prefix("IpAddress(")
                        .and_then(|r| r.strip_suffix(')'))
                })
        })
        .filter(|n| !n.contains('*') && ServerName::try_from(n.to_string()).is_ok())
        .map(str::to_string)
        .collect()
}

/// A TCP stream, in clear or inside TLS: what shardcut's own wire readers
/// read from.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Starts TLS over a plain stream (after the protocol's own request
    /// for it), checking the server as `config` says against `host`.
    pub async fn upgrade(self, config: ClientConfig, host: &str) -> Result<Stream, io::Error> {
        let Stream::Plain(tcp) = self else {
            return Err(io::Error::other("TLS is already on"));
        };
        let name = server_name(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifying_mode_without_a_ca_is_refused_not_weakened() {
        for mode in [TlsMode::VerifyCa, TlsMode::VerifyFull] {
            assert!(matches!(
                client_config(mode, None, None),
                Err(TlsError::NoCertificate { .. })
            ));
        }
        assert!(client_config(TlsMode::Require, None, None).is_ok());
    }

    #[test]
    fn names_are_read_from_rustls_renderings_of_a_certificate() {
        let presented = [
            "DnsName(\"db1.example.com\")".to_string(),
            "DnsName(\"*.example.com\")".to_string(),
            "IpAddress(10.0.0.5)".to_string(),
            "UniformResourceIdentifier(\"spiffe://x\")".to_string(),
            "DnsName(\"bad name\")".to_string(),
        ];
        assert_eq!(
            presented_names(&presented),
            vec!["db1.example.com".to_string(), "10.0.0.5".to_string()]
        );
    }
}
