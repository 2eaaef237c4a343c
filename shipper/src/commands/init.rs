//! `hrl-shipper init`: create a repository (and its key file).

use super::RepoArgs;
use crate::error::{Result, ShipError};
use crate::repo::{create_key_file, Repo};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    /// Chunk size in bytes: a power of two of at least 4096; fixed for the
    /// repository's life (agents must track with the same).
    #[arg(long, default_value_t = 65536)]
    chunk_size: u32,
    /// Pack size in bytes: chunks are uploaded in packs of about this size.
    #[arg(long, default_value_t = 16 << 20)]
    pack_size: u64,
    /// A full checkpoint manifest every N points (restore reads at most N
    /// manifests).
    #[arg(long, default_value_t = 16)]
    checkpoint_every: u64,
}

pub async fn run(a: Args) -> Result<u8> {
    if !a.chunk_size.is_power_of_two() || a.chunk_size < 4096 {
        return Err(ShipError::Usage(format!(
            "chunk size {}: a power of two of at least 4096",
            a.chunk_size
        )));
    }
    // The URL is checked before the key file is made: a refused init
    // leaves nothing behind.
    crate::repo::repository::local_path(&a.r.repo)?;
    let created = create_key_file(&a.r.key_file)?;
    let repo = Repo::init(&a.r.repo, &a.r.key_file, a.chunk_size, a.pack_size, a.checkpoint_every).await?;
    println!(
        "initialised repository {} ({}), chunk size {}; key file {}{}",
        repo.url,
        repo.config.repo_id,
        a.chunk_size,
        a.r.key_file.display(),
        if created {
            " (new; keep a copy somewhere safe)"
        } else {
            ""
        }
    );
    Ok(0)
}
