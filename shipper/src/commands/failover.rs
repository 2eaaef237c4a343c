//! `hrl-shipper failover`: restore a point for real and fence the disk, so
//! shippers of the old source refuse to publish for it from then on; or
//! run a recovery plan (`--plan`, `--test`), see `crate::plan`.

use std::path::PathBuf;

use uuid::Uuid;

use super::{PointArgs, RepoArgs};
use crate::error::{Result, ShipError};
use crate::repo::fence::{check_fence, record, FailoverRecord};
use crate::restore::PointSel;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    #[command(flatten)]
    p: PointArgs,
    /// The target: a new image file, a block device at least as large as
    /// the disk, neither mounted nor tracked by an agent, or
    /// az://CONTAINER/NAME.vhd (a fixed VHD page blob for an Azure disk).
    #[arg(long, required_unless_present = "plan", conflicts_with = "plan")]
    to: Option<PathBuf>,
    /// Run a recovery plan (TOML: groups of disks in order, one point
    /// rule, actions between groups); docs/operations.md.
    #[arg(long, conflicts_with_all = ["standby"])]
    plan: Option<PathBuf>,
    /// With --plan: fail over into scratch targets (`test-<time>-` file
    /// names), run the plan's actions, then remove every target. The
    /// disks are not fenced; replication goes on.
    #[arg(long, requires = "plan")]
    test: bool,
    /// With --test: keep the scratch targets.
    #[arg(long, requires = "test")]
    keep: bool,
    /// With --plan: where to save the report (JSON). Default
    /// `hrl-failover-<plan>-<time>.json` in the current folder.
    #[arg(long, requires = "plan")]
    report: Option<PathBuf>,
    /// With --to az://...: copy the point's snapshot from this standby
    /// (az://CONTAINER[/PREFIX] of `hrl-shipper standby`) instead of
    /// restoring it from the repository: a server-side copy.
    #[arg(long)]
    standby: Option<String>,
    /// Fail over again although the disk already failed over (the new
    /// record replaces the old one; the earlier target stops being the
    /// recorded one).
    #[arg(long)]
    force: bool,
    /// Do not ask for confirmation (needed off a terminal, e.g. in scripts).
    #[arg(long)]
    yes: bool,
}

/// Says what failover will do and asks on a terminal; off a terminal only
/// `--yes` lets it go ahead.
fn confirm(a: &Args, to: &std::path::Path, disk: &str, id: &Uuid, seq: u64) -> Result<()> {
    let what = format!(
        "failover restores point {seq} of disk {disk} onto {}, then records failover/{id} in the repository: from then on the shippers of the old source refuse to publish points of this disk (its replication stops).",
        to.display(),
    );
    confirm_text(a, &what)
}

/// `failover --plan`: resolves the whole plan first (nothing is written
/// when it does not resolve), asks once (real runs), then runs it.
async fn run_plan(a: &Args, path: &std::path::Path) -> Result<u8> {
    if a.p.disk.is_some() {
        return Err(ShipError::Usage("--plan names its disks; drop --disk".into()));
    }
    let file = crate::plan::load(path)?;
    let repo = a.r.open().await?;
    let now = hrl_common::time::rfc3339(hrl_format::now_ns());
    let stamp: String = now.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let plan = crate::plan::resolve(&repo, &file, path, a.test.then_some(stamp.as_str())).await?;
    let o = crate::plan::run::RunOptions {
        test: a.test,
        keep: a.keep,
        yes: a.yes,
        force: a.force,
    };
    crate::plan::run::preflight(&repo, &plan, &o).await?;
    let mut summary = format!(
        "plan {} ({}), point rule {}:",
        plan.name,
        if a.test {
            "TEST: scratch targets, removed after"
        } else {
            "FAILOVER: the disks are fenced"
        },
        plan.rule
    );
    for g in &plan.groups {
        summary.push_str(&format!("\n  group {}:", g.name));
        for m in &g.members {
            summary.push_str(&format!("\n    {} point {} -> {}", m.disk.label(), m.point, m.target));
        }
    }
    if a.test {
        println!("{summary}");
    } else {
        confirm_text(a, &summary)?;
    }
    let mut say = |s: &crate::plan::run::Step| {
        let who = match (&s.disk, &s.target) {
            (Some(d), _) => format!(" {d}"),
            (None, Some(t)) => format!(" {t}"),
            _ => String::new(),
        };
        let group = if s.group.is_empty() {
            String::new()
        } else {
            format!(" [{}]", s.group)
        };
        println!(
            "{} {}{who}{group} {:.2}s: {}",
            if s.ok { "ok  " } else { "FAIL" },
            s.what,
            s.seconds,
            s.detail
        );
    };
    let rep = crate::plan::run::execute(&repo, &plan, &o, &mut say).await?;
    let out = a.report.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "hrl-failover-{}-{stamp}{}.json",
            plan.name,
            if a.test { "-test" } else { "" }
        ))
    });
    crate::plan::run::save(&rep, &out)?;
    println!(
        "plan {} {} in {:.1}s; report {}",
        plan.name,
        if rep.ok { "succeeded" } else { "FAILED" },
        rep.seconds,
        out.display()
    );
    Ok(if rep.ok { 0 } else { 1 })
}

/// Asks for `yes` on a terminal after showing `what`; off a terminal
/// only `--yes` goes ahead.
fn confirm_text(a: &Args, what: &str) -> Result<()> {
    if a.yes {
        return Ok(());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(ShipError::Usage(format!(
            "{what}\nNot on a terminal to confirm: pass --yes to fail over. Nothing was done."
        )));
    }
    eprint!("{what}\nType yes to fail over: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| ShipError::io("stdin", "read confirmation", e))?;
    if line.trim() != "yes" {
        return Err(ShipError::Usage("failover not confirmed; nothing was done".into()));
    }
    Ok(())
}

pub async fn run(a: Args) -> Result<u8> {
    if let Some(plan) = &a.plan {
        return run_plan(&a, plan).await;
    }
    let Some(to) = a.to.clone() else {
        return Err(ShipError::Usage("failover needs --to (or --plan)".into()));
    };
    let repo = a.r.open().await?;
    let disk = a.p.disk_id(&repo).await?;
    let point = a.p.point;
    if !a.force {
        // Only a fence says "already failed over"; any other error (the
        // store is down) is reported as what it is.
        match check_fence(&repo, &disk).await {
            Ok(()) => {}
            Err(e @ ShipError::Fenced { .. }) => {
                return Err(ShipError::Usage(format!(
                    "{e}\nIt already failed over; --force fails over again (only if the earlier target is abandoned: both sides would otherwise claim the disk)."
                )))
            }
            Err(e) => return Err(e),
        }
    }
    let seq = crate::restore::resolve(&repo, &disk, point).await?;
    let label = crate::repo::manifest::load(&repo, &disk, seq).await?.0.disk_label();
    confirm(&a, &to, &label, &disk, seq)?;
    let o = crate::restore::RestoreOptions {
        progress: true,
        force: false,
    };
    let rep = crate::standby::write_point(&repo, &disk, PointSel::Seq(seq), &to, a.standby.as_deref(), o).await?;
    let rec = FailoverRecord {
        disk,
        point: rep.point,
        time_ns: hrl_format::now_ns(),
        target: to.display().to_string(),
        forced: a.force,
    };
    record(&repo, &rec).await?;
    println!(
        "failed over disk {label} to point {} on {} ({:.1}s); shippers of the old source now refuse to publish for this disk",
        rep.point,
        to.display(),
        rep.seconds
    );
    Ok(0)
}
