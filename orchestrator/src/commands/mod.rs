//! One file per subcommand; each is a clap struct with a `run()`.

mod check;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    Check(check::Check),
}

impl Command {
    /// Runs the command and returns its exit code.
    pub async fn run(self) -> anyhow::Result<u8> {
        match self {
            Command::Check(c) => c.run().await,
        }
    }
}
