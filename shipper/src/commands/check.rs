//! `hrl-shipper check`: every referenced chunk exists; with --read-data,
//! every chunk decrypts and hashes to its id. Exit 1 on any problem.

use super::{print_json, RepoArgs};
use crate::error::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    /// Also read every pack and verify every chunk (slow: reads everything).
    #[arg(long)]
    read_data: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: Args) -> Result<u8> {
    let repo = a.r.open().await?;
    let rep = crate::restore::check(&repo, a.read_data).await?;
    if a.json {
        print_json(&rep)?;
    } else {
        for p in &rep.problems {
            eprintln!("problem: {}: {}", p.object, p.what);
        }
        println!(
            "{} points, {} referenced chunks, {} packs, {} chunks stored twice ({}){}: {}",
            rep.points,
            rep.referenced_chunks,
            rep.packs,
            rep.duplicate_chunks,
            hrl_format::human_bytes(rep.duplicate_bytes),
            if a.read_data {
                format!(", {} chunks read and verified", rep.chunks_read)
            } else {
                String::new()
            },
            if rep.problems.is_empty() {
                "no problems".to_string()
            } else {
                format!("{} PROBLEMS", rep.problems.len())
            }
        );
    }
    Ok(if rep.problems.is_empty() { 0 } else { 1 })
}
