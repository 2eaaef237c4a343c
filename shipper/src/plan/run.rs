//! Running a resolved plan: preflight (targets free, disks not failed
//! over), then each group in order: its disks, its `after` command, its
//! pause. Every step is timed and reported; the report is saved as JSON.
//! A test run writes scratch targets and removes them all afterwards
//! (unless `keep`), whatever happened; it never fences a disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{Member, Plan};
use crate::azure::BlobUrl;
use crate::error::{to_json_pretty, Result, ShipError};
use crate::repo::fence::{self, FailoverRecord};
use crate::repo::Repo;
use crate::restore::{PointSel, RestoreOptions};

/// How a plan runs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Scratch targets, checks, everything removed after (unless `keep`).
    pub test: bool,
    pub keep: bool,
    /// Answers the pauses (and is the confirmation off a terminal).
    pub yes: bool,
    /// Fail over disks that already failed over.
    pub force: bool,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub group: String,
    /// `restore`, `copy` (from the standby), `after`, `pause`, `remove`.
    pub what: String,
    pub disk: Option<String>,
    pub point: Option<u64>,
    pub target: Option<String>,
    pub seconds: f64,
    pub ok: bool,
    pub detail: String,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub plan: String,
    pub test: bool,
    pub point_rule: String,
    pub started: String,
    pub seconds: f64,
    pub ok: bool,
    pub steps: Vec<Step>,
}

impl Step {
    /// A step of `group` that names no disk (an action, a pause, a removal).
    fn plain(group: &str, what: &str, t: Instant, ok: bool, detail: String) -> Self {
        Step {
            group: group.into(),
            what: what.into(),
            disk: None,
            point: None,
            target: None,
            seconds: t.elapsed().as_secs_f64(),
            ok,
            detail,
        }
    }
}

struct Runner<'a> {
    repo: &'a Repo,
    plan: &'a Plan,
    o: &'a RunOptions,
    steps: Vec<Step>,
    written: Vec<String>,
    say: &'a mut dyn FnMut(&Step),
}

impl Runner<'_> {
    fn push(&mut self, s: Step) -> bool {
        (self.say)(&s);
        let ok = s.ok;
        self.steps.push(s);
        ok
    }
}

/// Checks every target is free and (for real) every disk not failed over.
pub async fn preflight(repo: &Repo, plan: &Plan, o: &RunOptions) -> Result<()> {
    for m in plan.groups.iter().flat_map(|g| &g.members) {
        match BlobUrl::parse(&m.target) {
            Some(u) => {
                let blob = crate::restore::blob::open_blob(&u?).await?;
                if blob.properties(None).await?.is_some() {
                    return Err(ShipError::Usage(format!(
                        "plan {}: target {} of disk {} exists; nothing was done",
                        plan.name,
                        m.target,
                        m.disk.label()
                    )));
                }
            }
            None if Path::new(&m.target).exists() => {
                return Err(ShipError::Usage(format!(
                    "plan {}: target {} of disk {} exists; nothing was done",
                    plan.name,
                    m.target,
                    m.disk.label()
                )))
            }
            None => {}
        }
        if !o.test && !o.force {
            fence::check_fence(repo, &m.disk.id).await.map_err(|e| match e {
                e @ ShipError::Fenced { .. } => ShipError::Usage(format!("plan {}: {e}", plan.name)),
                e => e,
            })?;
        }
    }
    Ok(())
}

/// Runs `plan`; `say` hears of every step as it ends.
pub async fn execute(repo: &Repo, plan: &Plan, o: &RunOptions, say: &mut dyn FnMut(&Step)) -> Result<PlanReport> {
    let t0 = Instant::now();
    let started = hrl_common::time::rfc3339(hrl_format::now_ns());
    let mut r = Runner {
        repo,
        plan,
        o,
        steps: Vec::new(),
        written: Vec::new(),
        say,
    };
    let mut ok = true;
    for (i, g) in plan.groups.iter().enumerate() {
        for m in &g.members {
            ok = restore_member(&mut r, &g.name, m).await?;
            if !ok {
                break;
            }
        }
        if ok {
            if let Some(cmd) = &g.after {
                ok = after(&mut r, &g.name, cmd, &g.members);
            }
        }
        if ok && g.pause && i + 1 < plan.groups.len() {
            ok = pause(&mut r, &g.name, &plan.groups[i + 1].name);
        }
        if !ok {
            break;
        }
    }
    if o.test && !o.keep {
        remove_all(&mut r).await;
    }
    Ok(PlanReport {
        plan: plan.name.clone(),
        test: o.test,
        point_rule: plan.rule.clone(),
        started,
        seconds: t0.elapsed().as_secs_f64(),
        ok: ok && r.steps.iter().all(|s| s.ok),
        steps: r.steps,
    })
}

/// Restores (or copies from the standby) one disk; for real, then
/// records its failover. Ok(false): the step failed (reported).
async fn restore_member(r: &mut Runner<'_>, group: &str, m: &Member) -> Result<bool> {
    let t = Instant::now();
    let is_blob = BlobUrl::parse(&m.target).is_some();
    let standby = r.plan.standby.as_deref().filter(|_| is_blob);
    let o = RestoreOptions {
        progress: false,
        force: false,
    };
    let to = PathBuf::from(&m.target);
    let res = crate::standby::write_point(r.repo, &m.disk.id, PointSel::Seq(m.point), &to, standby, o).await;
    let (ok, detail) = match res {
        Ok(rep) => {
            r.written.push(m.target.clone());
            let how = if standby.is_some() {
                "copied from the standby".to_string()
            } else {
                format!("{} written", hrl_format::human_bytes(rep.bytes_written))
            };
            if !r.o.test {
                let rec = FailoverRecord {
                    disk: m.disk.id,
                    point: m.point,
                    time_ns: hrl_format::now_ns(),
                    target: m.target.clone(),
                    forced: r.o.force,
                };
                fence::record(r.repo, &rec).await?;
            }
            (true, how)
        }
        Err(e) => (false, e.to_string()),
    };
    Ok(r.push(Step {
        group: group.into(),
        what: if standby.is_some() { "copy" } else { "restore" }.into(),
        disk: Some(m.disk.label()),
        point: Some(m.point),
        target: Some(m.target.clone()),
        seconds: t.elapsed().as_secs_f64(),
        ok,
        detail,
    }))
}

/// Runs a group's `after` command in the plan's folder with the targets
/// in its environment.
fn after(r: &mut Runner<'_>, group: &str, cmd: &str, members: &[Member]) -> bool {
    let t = Instant::now();
    let targets: Vec<&str> = members.iter().map(|m| m.target.as_str()).collect();
    let disks: Vec<String> = members.iter().map(|m| m.disk.label()).collect();
    let dir = if r.plan.dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        r.plan.dir.clone()
    };
    let st = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .env("HRL_PLAN", &r.plan.name)
        .env("HRL_GROUP", group)
        .env("HRL_TEST", if r.o.test { "1" } else { "0" })
        .env("HRL_TARGETS", targets.join(" "))
        .env("HRL_DISKS", disks.join(" "))
        .env("HRL_ALL_TARGETS", r.written.join(" "))
        .status();
    // The command as the operator wrote it, shortened for the report.
    let shown: String = if cmd.chars().count() > 60 {
        cmd.chars().take(57).chain("...".chars()).collect()
    } else {
        cmd.to_string()
    };
    let (ok, detail) = match st {
        Ok(s) if s.success() => (true, format!("`{shown}` passed")),
        Ok(s) => (false, format!("`{shown}` failed ({s}): the plan stops here")),
        Err(e) => (false, format!("`{shown}` could not start: {e}")),
    };
    r.push(Step::plain(group, "after", t, ok, detail))
}

/// A pause before the next group: `--yes` goes on; on a terminal the
/// operator types yes; otherwise the plan stops.
fn pause(r: &mut Runner<'_>, group: &str, next: &str) -> bool {
    let t = Instant::now();
    let (ok, detail) = if r.o.yes {
        (true, format!("went on to {next:?} (--yes)"))
    } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!(
            "plan {}: group {group:?} is done. Type yes to go on with {next:?}: ",
            r.plan.name
        );
        let mut line = String::new();
        let answered = std::io::stdin().read_line(&mut line).is_ok() && line.trim() == "yes";
        if answered {
            (true, format!("went on to {next:?}"))
        } else {
            (false, "stopped at the pause".to_string())
        }
    } else {
        (
            false,
            format!("pause before {next:?}: not on a terminal; pass --yes to go on"),
        )
    };
    r.push(Step::plain(group, "pause", t, ok, detail))
}

/// Test runs: removes every target written.
async fn remove_all(r: &mut Runner<'_>) {
    for target in std::mem::take(&mut r.written) {
        let t = Instant::now();
        let res = remove_one(&target).await;
        let (ok, detail) = match res {
            Ok(()) => (true, "removed".to_string()),
            Err(e) => (false, format!("not removed: {e}")),
        };
        r.push(Step {
            target: Some(target),
            ..Step::plain("", "remove", t, ok, detail)
        });
    }
}

async fn remove_one(target: &str) -> Result<()> {
    match BlobUrl::parse(target) {
        Some(u) => {
            let blob = crate::restore::blob::open_blob(&u?).await?;
            blob.delete(None).await.map(|_| ())
        }
        None => std::fs::remove_file(target).map_err(|e| ShipError::io(target, "remove scratch target", e)),
    }
}

/// Saves the report as pretty JSON at `path`.
pub fn save(rep: &PlanReport, path: &Path) -> Result<()> {
    std::fs::write(path, to_json_pretty(rep, "plan report")?).map_err(|e| ShipError::io(path, "write plan report", e))
}
