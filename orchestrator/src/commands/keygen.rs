use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;
use shard_agent::repo::{generate_key, key_id_text, CIPHER_NAME};

use crate::exit;

/// Write a new repository encryption key to a file (owner-only, mode 0600);
/// name it in the topology as `repository.encryption.key_file`.
#[derive(Debug, clap::Args)]
pub struct Keygen {
    /// The file to create; an existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

impl Keygen {
    pub fn run(self) -> anyhow::Result<u8> {
        let key = generate_key();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.out)
            .with_context(|| format!("cannot create key file {}", self.out.display()))?;
        file.write_all(format!("{}\n", key.to_text()).as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write key file {}", self.out.display()))?;
        exit::emit(&format!(
            "wrote a new {CIPHER_NAME} key to {} (key id {}); keep a copy away from the repository: without it no backup sealed with it can be read\n",
            self.out.display(),
            key_id_text(&key)
        ))?;
        Ok(exit::SUCCESS)
    }
}
