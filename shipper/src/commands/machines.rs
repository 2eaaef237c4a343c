//! `hrl-shipper machines`: on the process server, the machines it accepts.

use std::path::PathBuf;

use clap::Subcommand;

use super::print_json;
use crate::error::Result;
use crate::gateway::machines::Registry;

#[derive(clap::Args)]
pub struct Args {
    /// The gateway's TOML config (for its state_dir).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The gateway's state directory [default: /var/lib/hrl-gateway].
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Print a one-time enrollment token for machine NAME (valid 24 h). For
    /// an enrolled machine this issues a new identity; the old one works
    /// until the token is used.
    Add {
        /// Letters, digits, '.', '_' or '-' (for example its host name).
        name: String,
    },
    /// Every machine: enrolled, revoked, its disks and last contact.
    List {
        /// One JSON object per machine.
        #[arg(long)]
        json: bool,
    },
    /// Refuse machine NAME from its next request on (its secret is erased).
    Revoke {
        /// The machine's name.
        name: String,
    },
}

pub async fn run(a: Args) -> Result<u8> {
    let state = super::serve::settings(a.config.as_ref(), a.state_dir.as_ref())?.state_dir();
    let now = hrl_format::now_ns();
    match a.cmd {
        Verb::Add { name } => {
            let token = Registry::update(&state, |r| r.add(&name, now))?;
            eprintln!("enrollment token for {name} (one use, valid 24 h); on the machine put it in a file (0600) and run hrl-shipper enroll --token-file FILE:");
            println!("{token}");
        }
        Verb::Revoke { name } => {
            Registry::update(&state, |r| r.revoke(&name, now))?;
            println!("machine {name} revoked: its next request is refused");
        }
        Verb::List { json } => {
            let reg = Registry::load(&state)?;
            if !json {
                println!("{:<20} {:<10} {:>5}  LAST CONTACT (UTC)", "MACHINE", "STATE", "DISKS");
            }
            for (name, m) in &reg.machines {
                let st = match (m.revoked(), m.enrolled_ns) {
                    (true, _) => "revoked",
                    (false, Some(_)) => "enrolled",
                    (false, None) => "invited",
                };
                if json {
                    print_json(&serde_json::json!({"machine": name, "state": st, "disks": m.disks,
                        "last_contact_ns": m.last_contact_ns, "enrolled_ns": m.enrolled_ns, "revoked_ns": m.revoked_ns}))?;
                } else {
                    let when = m
                        .last_contact_ns
                        .map_or("never".into(), |t| hrl_common::time::when(t, now));
                    println!("{name:<20} {st:<10} {:>5}  {when}", m.disks.len());
                }
            }
        }
    }
    Ok(0)
}
