//! `hrl-shipper test-failover`: restore a point into a scratch target, run
//! a check on it, report, and remove the target (unless `--keep`).
//! Replication is not touched.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{PointArgs, RepoArgs};
use crate::error::{Result, ShipError};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    r: RepoArgs,
    #[command(flatten)]
    p: PointArgs,
    /// The scratch target: a new image file (it must not exist), or a new
    /// VHD page blob az://CONTAINER/NAME.vhd (the check gets its URL as {}).
    #[arg(long)]
    to: PathBuf,
    /// A shell command run on the restored target; `{}` is replaced by the
    /// image's path, `{dev}` and `{mnt}` (with --mount) by the loop device
    /// and the mount point, all quoted; e.g. "test -s {mnt}/etc/hostname"
    /// or "e2fsck -fn {}". Exit 0 passes.
    #[arg(long)]
    check: Option<String>,
    /// Attach the restored image to a loop device and mount it (replaying
    /// the filesystem's journal and orphans, as a failed-over machine's boot
    /// would) before the check; unmounted and detached after.
    #[arg(long)]
    mount: bool,
    /// Keep the scratch target.
    #[arg(long)]
    keep: bool,
}

/// The restored image attached and mounted; undone when dropped.
struct Mounted {
    dev: String,
    mnt: tempfile::TempDir,
    mounted: bool,
}

impl Mounted {
    fn new(image: &Path) -> Result<Self> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .map_err(|e| ShipError::io("losetup", "run", e))?;
        if !out.status.success() {
            return Err(ShipError::Usage(format!(
                "{}: losetup failed: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mnt = tempfile::Builder::new()
            .prefix("hrl-test-failover-")
            .tempdir()
            .map_err(|e| ShipError::io("/tmp", "create mount point", e))?;
        let mut m = Mounted {
            dev,
            mnt,
            mounted: false,
        };
        let st = std::process::Command::new("mount")
            .arg(&m.dev)
            .arg(m.mnt.path())
            .status()
            .map_err(|e| ShipError::io("mount", "run", e))?;
        if !st.success() {
            return Err(ShipError::Usage(format!(
                "{}: the restored image does not mount ({st}); check it with --check without --mount",
                image.display()
            )));
        }
        m.mounted = true;
        Ok(m)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(self.mnt.path()).status();
        }
        let _ = std::process::Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// `s` as one word for `sh -c`, whatever characters it holds.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs the check; Ok(passed), or Err when it could not start.
fn run_check(cmd: &str, to: &Path, mounted: Option<&Mounted>) -> Result<bool> {
    let mut cmd = cmd.replace("{}", &shell_quote(&to.display().to_string()));
    if let Some(m) = mounted {
        cmd = cmd
            .replace("{dev}", &shell_quote(&m.dev))
            .replace("{mnt}", &shell_quote(&m.mnt.path().display().to_string()));
    }
    let t = Instant::now();
    let st = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd)
        .status()
        .map_err(|e| ShipError::io("/bin/sh", "run check", e))?;
    let ok = st.success();
    println!(
        "test failover: check `{cmd}` {} in {:.1}s",
        if ok { "PASSED" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    Ok(ok)
}

/// Test failover into a page blob: restore, check (`{}` is the blob's
/// URL), delete the blob unless `--keep`.
async fn into_blob(a: &Args, repo: &crate::repo::Repo, disk: &uuid::Uuid, to: crate::azure::BlobUrl) -> Result<u8> {
    if a.mount {
        return Err(ShipError::Usage(format!(
            "{to}: --mount needs an image file target; a page blob cannot be mounted here"
        )));
    }
    let o = crate::restore::RestoreOptions {
        progress: true,
        force: false,
    };
    // A failed restore deletes its blob itself.
    let rep = crate::restore::restore_to_blob(repo, disk, a.p.point, &to, o).await?;
    println!(
        "test failover: restored point {} of disk {} to {to} in {:.1}s",
        rep.point, rep.disk_label, rep.seconds
    );
    let url = to.to_string();
    let checked = a
        .check
        .as_deref()
        .map_or(Ok(true), |c| run_check(c, Path::new(&url), None));
    if a.keep {
        println!("test failover: kept {to}");
    } else {
        crate::restore::blob::open_blob(&to).await?.delete(None).await?;
    }
    Ok(if checked? { 0 } else { 1 })
}

pub async fn run(a: Args) -> Result<u8> {
    let repo = a.r.open().await?;
    let disk = a.p.disk_id(&repo).await?;
    let point = a.p.point;
    if let Some(to) = super::blob_target(&a.to) {
        return into_blob(&a, &repo, &disk, to?).await;
    }
    if a.to.exists() {
        return Err(ShipError::Usage(format!(
            "{}: the scratch target exists; test-failover writes a new one and removes it after",
            a.to.display()
        )));
    }
    let restored = crate::restore::restore(&repo, &disk, point, &a.to, true).await;
    let checked = restored.and_then(|rep| -> Result<bool> {
        println!(
            "test failover: restored point {} of disk {} to {} in {:.1}s",
            rep.point,
            rep.disk_label,
            a.to.display(),
            rep.seconds
        );
        let mounted = if a.mount { Some(Mounted::new(&a.to)?) } else { None };
        a.check
            .as_deref()
            .map_or(Ok(true), |c| run_check(c, &a.to, mounted.as_ref()))
    });
    // The scratch target goes whatever happened (a failed restore or a
    // check that could not start included), unless asked to keep it.
    if a.keep {
        println!("test failover: kept {}", a.to.display());
    } else if a.to.exists() {
        std::fs::remove_file(&a.to).map_err(|e| ShipError::io(&a.to, "remove scratch target", e))?;
    }
    Ok(if checked? { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn a_path_is_one_word_for_the_shell() {
        for p in ["/tmp/a b", "/tmp/x;rm -rf y", "/tmp/it's", "/tmp/$(id)"] {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(p)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), p);
        }
    }
}
