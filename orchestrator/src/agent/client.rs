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
        match resp.json::<ErrorBody>().await {
            Ok(body) => Err(Failure::Api(body)),
            Err(_) => Err(Failure::Transport(format!("answered HTTP {status}"))),
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
        resp.json::<T>()
            .await
            .map_err(|e| self.err(format!("sent an unreadable answer: {e}")))
    }
}
