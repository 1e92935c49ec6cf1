//! The orchestrator's view of a shard agent: in-process (a [`Session`] in
//! this process) or remote (`shard-agent serve` on the database host, over
//! HTTP). Both expose the same steps, so the cut and the dump are driven by
//! one code path whatever the deployment.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::de::DeserializeOwned;
use shard_agent::api::*;
use shard_agent::cut::{BlockError, CutOptions};
use shard_agent::dump::DumpOptions;
use shard_agent::manifest::ShardManifest;
use shard_agent::position::Position;
use shard_agent::session::Session;
use shard_agent::AgentError;
use topology::{AgentSpec, AgentTls, Engine, Secret, Shard, TlsMode};

pub enum Agent {
    Local(Box<Session>),
    Remote(Remote),
}

pub struct Remote {
    shard: String,
    engine: Engine,
    base: String,
    token: Secret,
    client: reqwest::Client,
    session: String,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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

/// An error and its sources on one line (reqwest's own text omits the
/// TLS reason, which is what a DBA needs to see).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// Whether a transport error is the TLS handshake refusing (a
/// certificate, an alert from the peer), not an unreachable agent.
fn is_tls_failure(why: &str) -> bool {
    let w = why.to_ascii_lowercase();
    ["certificate", "tls", "alert", "handshake"]
        .iter()
        .any(|k| w.contains(k))
}

/// A remote dump whose progress has not moved for this long is given up
/// (the agent may be wedged); the orchestrator never polls forever.
const DUMP_STALL_LIMIT: Duration = Duration::from_secs(30 * 60);

impl Agent {
    pub async fn prepare(shard: &Shard, opts: &CutOptions) -> Result<Agent, AgentError> {
        match &shard.agent {
            None => Ok(Agent::Local(Box::new(Session::prepare(shard, opts).await?))),
            Some(spec) => {
                let mut remote = Remote {
                    shard: shard.name.clone(),
                    engine: shard.engine,
                    base: spec.url.as_str().trim_end_matches('/').to_string(),
                    token: spec.token.clone(),
                    client: http_client(shard, spec)?,
                    session: String::new(),
                };
                let v: VersionInfo = remote
                    .call(reqwest::Method::GET, "/v1/version", None::<&()>)
                    .await?;
                if v.api != API_VERSION {
                    return Err(remote.err(format!(
                        "speaks agent API v{} (version {}), this shardcut needs v{API_VERSION}; install matching versions",
                        v.api, v.version
                    )));
                }
                let req = PrepareRequest {
                    shard: ShardSpec::from_shard(shard),
                    write_block_timeout_ms: millis(opts.write_block_timeout),
                    write_block_lease_ms: millis(opts.write_block_lease),
                    connect_timeout_ms: millis(opts.connect_timeout),
                };
                let r: PrepareResponse = remote
                    .call(reqwest::Method::POST, "/v1/sessions", Some(&req))
                    .await?;
                remote.session = r.session;
                Ok(Agent::Remote(remote))
            }
        }
    }

    pub fn shard(&self) -> &str {
        match self {
            Agent::Local(s) => s.shard(),
            Agent::Remote(r) => &r.shard,
        }
    }

    /// Whether this shard blocks in the cut's first wave (see
    /// [`shard_agent::engine::Driver::blocks_in_first_wave`]).
    pub fn blocks_first(&self) -> bool {
        let engine = match self {
            Agent::Local(s) => s.engine(),
            Agent::Remote(r) => r.engine,
        };
        shard_agent::engine::driver(engine).blocks_in_first_wave()
    }

    /// See [`Session::settle`].
    pub async fn settle(&mut self) -> Result<Duration, AgentError> {
        match self {
            Agent::Local(s) => Ok(s.settle().await),
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/settle", r.session);
                let m: SettleResponse = r.call(reqwest::Method::POST, &path, None::<&()>).await?;
                Ok(Duration::from_millis(m.waited_ms))
            }
        }
    }

    pub async fn block(&mut self) -> Result<(), BlockError> {
        match self {
            Agent::Local(s) => s.block().await,
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/block", r.session);
                match r.send(reqwest::Method::POST, &path, None::<&()>).await {
                    Ok(_) => Ok(()),
                    Err(Failure::Api(body)) if body.kind == "block_timeout" => {
                        Err(BlockError::Timeout {
                            shard: r.shard.clone(),
                            timeout: Duration::from_millis(body.timeout_ms),
                            holder: body.holder,
                        })
                    }
                    Err(f) => Err(BlockError::Failed(r.failure(f))),
                }
            }
        }
    }

    pub async fn mark(&mut self) -> Result<Position, AgentError> {
        match self {
            Agent::Local(s) => s.mark().await,
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/mark", r.session);
                let m: MarkResponse = r.call(reqwest::Method::POST, &path, None::<&()>).await?;
                Ok(m.position)
            }
        }
    }

    pub async fn release(&mut self) -> Result<Duration, AgentError> {
        match self {
            Agent::Local(s) => s.release().await,
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/release", r.session);
                let m: ReleaseResponse = r.call(reqwest::Method::POST, &path, None::<&()>).await?;
                Ok(Duration::from_millis(m.held_ms))
            }
        }
    }

    /// Dumps the shard. A remote agent writes into the repository itself
    /// (at the same path on its host: a shared mount); this side only
    /// polls its progress and collects the shard's manifest.
    pub async fn dump(self, opts: DumpOptions) -> Result<ShardManifest, AgentError> {
        match self {
            Agent::Local(s) => s.dump(opts).await,
            Agent::Remote(r) => {
                let path = format!("/v1/sessions/{}/dump", r.session);
                let req = DumpRequest {
                    backup_id: opts.backup_id.clone(),
                    repository: opts.repo.location(),
                    compression: opts.compression,
                    chunk_rows: opts.chunk_rows,
                    digest_only: opts.digest_only,
                };
                r.send(reqwest::Method::POST, &path, Some(&req))
                    .await
                    .map_err(|f| r.failure(f))?;
                let mut last = (u64::MAX, u64::MAX);
                let mut moved = std::time::Instant::now();
                loop {
                    if opts.cancel.load(Ordering::Relaxed) {
                        // Best effort: the agent also stops when its session is dropped.
                        drop(
                            r.send(
                                reqwest::Method::DELETE,
                                &format!("/v1/sessions/{}", r.session),
                                None::<&()>,
                            )
                            .await,
                        );
                        return Err(AgentError::Cancelled {
                            shard: r.shard.clone(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let status: DumpStatus =
                        r.call(reqwest::Method::GET, &path, None::<&()>).await?;
                    match status {
                        DumpStatus::Running {
                            rows,
                            bytes,
                            rows_estimate,
                        } => {
                            if (rows, bytes) != last {
                                last = (rows, bytes);
                                moved = std::time::Instant::now();
                            } else if moved.elapsed() > DUMP_STALL_LIMIT {
                                return Err(r.err(format!(
                                    "dump made no progress for {} min; giving up",
                                    DUMP_STALL_LIMIT.as_secs() / 60
                                )));
                            }
                            opts.progress.rows.store(rows, Ordering::Relaxed);
                            opts.progress.bytes.store(bytes, Ordering::Relaxed);
                            opts.progress
                                .rows_estimate
                                .store(rows_estimate, Ordering::Relaxed);
                        }
                        DumpStatus::Done { manifest } => return Ok(*manifest),
                        DumpStatus::Failed { error } => {
                            return Err(r.err(format!("dump failed: {error}")))
                        }
                    }
                }
            }
        }
    }
}

/// Why a remote call failed: the agent said no, or it could not be reached.
enum Failure {
    Api(ErrorBody),
    Transport(String),
}

impl Remote {
    fn err(&self, what: String) -> AgentError {
        AgentError::Remote {
            shard: self.shard.clone(),
            agent: self.base.clone(),
            what,
        }
    }

    fn failure(&self, f: Failure) -> AgentError {
        match f {
            Failure::Api(body) if body.kind == "unauthorized" => self.err(
                "refused the agent token (401); check agent_token_env / agent_token_file".into(),
            ),
            Failure::Api(body) => self.err(body.error),
            Failure::Transport(t) => self.err(t),
        }
    }

    async fn send<B: serde::Serialize>(
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
            let why = chain(&e);
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

    async fn call<B: serde::Serialize, T: DeserializeOwned>(
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
