//! The HTTP client of one remote agent: HTTPS with the agent's
//! certificate checked (and a client certificate for mutual TLS), the
//! bearer token on every request, and errors that say which agent and why.

use std::time::Duration;

use serde::de::DeserializeOwned;
use shard_agent::api::ErrorBody;
use shard_agent::error::one_line;
use shard_agent::AgentError;
use topology::{AgentSpec, AgentTls, Secret, Shard, TlsMode};

pub struct AgentClient {
    pub(super) shard: String,
    pub(super) base: String,
    token: Secret,
    client: reqwest::Client,
}

impl AgentClient {
    pub fn new(shard: &Shard, spec: &AgentSpec) -> Result<AgentClient, AgentError> {
        Ok(AgentClient {
            shard: shard.name.clone(),
            base: spec.url.as_str().trim_end_matches('/').to_string(),
            token: spec.token.clone(),
            client: http_client(shard, spec)?,
        })
    }
}

/// The client of one agent: HTTPS with the agent's certificate checked
/// against the topology's CA (and a client certificate for mutual TLS), or
/// plain HTTP where the topology says `agent_insecure`.
fn http_client(shard: &Shard, spec: &AgentSpec) -> Result<reqwest::Client, AgentError> {
    // reqwest builds a rustls configuration even for plain HTTP.
    shard_agent::tls::install_provider();
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs(10));
    let builder = match &spec.tls {
        AgentTls::Insecure => builder,
        AgentTls::Https { ca_pem, identity } => {
            let config = shard_agent::tls::client_config(
                TlsMode::VerifyFull,
                Some(ca_pem),
                identity.as_ref().map(|(c, k)| (c.as_str(), k.expose())),
            )
            .map_err(|e| AgentError::Remote {
                shard: shard.name.clone(),
                agent: spec.url.to_string(),
                what: format!("TLS settings: {e}"),
            })?;
            builder.https_only(true).tls_backend_preconfigured(config)
        }
    };
    builder.build().map_err(|e| AgentError::Tool {
        shard: shard.name.clone(),
        what: format!("cannot build an HTTP client: {e}"),
    })
}

/// Whether a transport error is the TLS handshake refusing (a
/// certificate, an alert from the peer), not an unreachable agent.
fn is_tls_failure(why: &str) -> bool {
    let w = why.to_ascii_lowercase();
    ["certificate", "tls", "alert", "handshake"]
        .iter()
        .any(|k| w.contains(k))
}

/// Why a remote call failed: the agent said no, or it could not be reached.
pub(super) enum Failure {
    Api(ErrorBody),
    Transport(String),
}

impl AgentClient {
    pub(super) fn err(&self, what: String) -> AgentError {
        AgentError::Remote {
            shard: self.shard.clone(),
            agent: self.base.clone(),
            what,
        }
    }

    pub(super) fn failure(&self, f: Failure) -> AgentError {
        match f {
            Failure::Api(body) if body.kind == "unauthorized" => self.err(
                "refused the agent token (401); check agent_token_env / agent_token_file".into(),
            ),
            Failure::Api(body) => self.err(body.error),
            Failure::Transport(t) => self.err(t),
        }
    }

    pub(super) async fn send<B: serde::Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, Failure> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let why = one_line(&e);
            Failure::Transport(if e.is_timeout() {
                "did not answer in time".to_string()
            } else if is_tls_failure(&why) {
                format!("TLS refused: {why}")
            } else if e.is_connect() {
                format!("unreachable (is `shard-agent serve` running there?): {why}")
            } else {
                format!("connection failed: {why}")
            })
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = read_bounded(resp, ERROR_MAX).await.ok();
        match body.and_then(|b| serde_json::from_slice::<ErrorBody>(&b).ok()) {
            Some(body) => Err(Failure::Api(body)),
            None => Err(Failure::Transport(format!("answered HTTP {status}"))),
        }
    }

    pub(super) async fn call<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, AgentError> {
        let resp = self
            .send(method, path, body)
            .await
            .map_err(|f| self.failure(f))?;
        let body = read_bounded(resp, ANSWER_MAX)
            .await
            .map_err(|why| self.err(format!("sent an unreadable answer: {why}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| self.err(format!("sent an unreadable answer: {e}")))
    }
}

/// The most an agent's answer may take: the largest is a shard's part of
/// a backup's manifest, bounded as a manifest is.
const ANSWER_MAX: u64 = shard_agent::manifest::MANIFEST_MAX;
/// The most an agent's error answer may take: a message and a kind.
const ERROR_MAX: u64 = 64 << 10;

/// The body of `resp`, refused once it passes `max` bytes (by its
/// announced length before anything is read): the network is untrusted.
async fn read_bounded(mut resp: reqwest::Response, max: u64) -> Result<Vec<u8>, String> {
    let too_large = |n: u64| format!("{n} bytes or more, more than the {max} an answer may take");
    if let Some(n) = resp.content_length().filter(|n| *n > max) {
        return Err(too_large(n));
    }
    let mut body = Vec::new();
    while let Some(piece) = resp.chunk().await.map_err(|e| one_line(&e))? {
        let n = (body.len() + piece.len()) as u64;
        if n > max {
            return Err(too_large(n));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::read_bounded;

    /// The answer of a server on loopback that sends `response` to the
    /// first request.
    async fn answer(response: Vec<u8>) -> reqwest::Response {
        shard_agent::tls::install_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = s.read(&mut request).await;
            let _ = s.write_all(&response).await;
        });
        reqwest::Client::new().get(url).send().await.unwrap()
    }

    #[tokio::test]
    async fn an_answer_past_its_bound_is_refused_before_it_is_read_whole() {
        let announced = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\n\r\n{}".to_vec();
        assert_eq!(
            read_bounded(answer(announced).await, 1000).await,
            Err("5000000000 bytes or more, more than the 1000 an answer may take".into())
        );
        // Without a length: refused once the pieces read pass the bound.
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..3 {
            chunked.extend_from_slice(format!("258\r\n{}\r\n", "x".repeat(600)).as_bytes());
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(
            read_bounded(answer(chunked.clone()).await, 1000).await,
            Err("1200 bytes or more, more than the 1000 an answer may take".into())
        );
        assert_eq!(
            read_bounded(answer(chunked).await, 1800)
                .await
                .map(|b| b.len()),
            Ok(1800)
        );
    }
}
