//! One file per subcommand; each is a clap struct with a `run()` that
//! parses its arguments, calls one flow (`crate::flow`) and renders what
//! it returns. No workflow lives here.

mod backup;
mod capture;
mod check;
mod copy;
mod drill;
mod expire;
mod history;
mod keygen;
mod list;
mod mark;
mod restore;
mod serve;
mod show;
mod status;
mod verify;

use std::path::{Path, PathBuf};

use clap::Subcommand;

/// `-t/--topology FILE`, or `SHARDCUT_TOPOLOGY`: the cluster's topology
/// file, the same argument in every command that takes one.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyFile {
    /// The cluster's topology file (for restore and drill: the source
    /// cluster, where the repository is).
    #[arg(
        short = 't',
        long = "topology",
        value_name = "FILE",
        env = "SHARDCUT_TOPOLOGY"
    )]
    path: PathBuf,
}

impl std::ops::Deref for TopologyFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Check(check::Check),
    Copy(copy::Copy),
    Drill(drill::Drill),
    Expire(expire::Expire),
    History(history::HistoryCmd),
    Keygen(keygen::Keygen),
    Backup(backup::Backup),
    Capture(capture::Capture),
    Mark(mark::MarkCmd),
    Status(status::Status),
    List(list::List),
    Restore(restore::Restore),
    Serve(serve::Serve),
    Show(show::Show),
    Verify(verify::Verify),
}

impl Command {
    /// Runs the command and returns its exit code.
    pub async fn run(self) -> anyhow::Result<u8> {
        match self {
            Command::Check(c) => c.run().await,
            Command::Copy(c) => c.run().await,
            Command::Drill(c) => c.run().await,
            Command::Expire(c) => c.run().await,
            Command::History(c) => c.run().await,
            Command::Keygen(c) => c.run(),
            Command::Backup(c) => c.run().await,
            Command::Capture(c) => c.run().await,
            Command::Mark(c) => c.run().await,
            Command::Status(c) => c.run().await,
            Command::List(c) => c.run().await,
            Command::Restore(c) => c.run().await,
            Command::Serve(c) => c.run().await,
            Command::Show(c) => c.run().await,
            Command::Verify(c) => c.run().await,
        }
    }
}
