use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use shard_agent::serve::http::{read_token, ServerTls};
use topology::Topology;

use crate::exit::{self, InvalidInput};
use crate::service::{serve, Config, Hooks};

/// Run as a service: the topologies' scheduled jobs, and backups, drills
/// and restores on request over a REST API (with a dashboard at `/`),
/// every job kept in the cluster's history. Stops on SIGTERM, letting
/// running jobs finish (up to --shutdown-timeout).
#[derive(Debug, clap::Args)]
pub struct Serve {
    /// A cluster's topology file (repeatable: one service for several
    /// clusters).
    #[arg(
        short,
        long = "topology",
        value_name = "FILE",
        env = "SHARDCUT_TOPOLOGY",
        required = true
    )]
    topologies: Vec<PathBuf>,
    /// A topology that `POST …/restores` may restore into, named in the
    /// request by its cluster name (repeatable; none: no restores).
    #[arg(long = "target", value_name = "FILE")]
    targets: Vec<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:7080.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// File holding the bearer token clients must present (at least 16
    /// characters).
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    #[command(flatten)]
    tls: ServerTls,
    /// After SIGTERM, how long running jobs may take to finish before they
    /// are cancelled (and recorded as failed).
    #[arg(long, default_value = "5m", value_parser = topology::parse_duration, value_name = "DURATION")]
    shutdown_timeout: Duration,
    /// Connections served at once; more are closed.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_connections: usize,
    /// Test only: hold every backup's write block this long.
    #[arg(long, hide = true, value_parser = topology::parse_duration)]
    test_hold_block: Option<Duration>,
}

impl Serve {
    pub async fn run(self) -> anyhow::Result<u8> {
        let token = read_token(&self.token_file).map_err(InvalidInput)?;
        let tls = self.tls.server_config(None).map_err(InvalidInput)?;
        let mut topologies = Vec::new();
        for path in &self.topologies {
            let t = Topology::load(path)?;
            if let Some(target) = &t.drill_target {
                // A drill target that does not load fails now, not at 3 am.
                Topology::load(target)?;
            }
            topologies.push(t);
        }
        let mut targets = BTreeMap::new();
        for path in &self.targets {
            let t = Topology::load(path)?;
            targets.insert(t.cluster.clone(), path.clone());
        }
        shard_agent::tls::install_provider();
        let listener = tokio::net::TcpListener::bind(&self.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", self.listen))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!(
            "shardcut {} serving {} cluster(s) on {scheme}://{}",
            env!("CARGO_PKG_VERSION"),
            topologies.len(),
            listener.local_addr()?
        );
        let config = Config {
            topologies,
            targets,
            token,
            tls,
            max_connections: self.max_connections,
            shutdown_timeout: self.shutdown_timeout,
            hooks: Hooks {
                hold_block: self.test_hold_block,
            },
        };
        serve(config, listener).await?;
        eprintln!("shardcut serve stopped");
        Ok(exit::SUCCESS)
    }
}
