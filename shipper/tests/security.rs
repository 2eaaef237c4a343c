//! Bad input and security through the `hrl-shipper` command, as an
//! operator meets them: a wrong, missing or loose key; truncated and
//! bit-flipped repository objects; a manifest moved to another disk; an
//! index that points a chunk id at another chunk's bytes; a repository from
//! a newer version. Each is a clear error naming the object, with its
//! documented exit code, and changes nothing in the repository. And no
//! secret (master key, account key, request signature) reaches the logs at
//! trace level.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hrl_shipper::repo::{create_key_file, pack_key, Repo};
use uuid::Uuid;

use hrl_testkit::spool::SpoolWriter;

/// A spool of 24 chunks and `points` points of one changed chunk each.
fn spool(dir: &Path, disk: Uuid, points: u64) {
    let mut w = SpoolWriter::new(dir, disk, 24, 8 << 20, disk.as_u128() as u64);
    w.full_copy();
    for p in 1..=points {
        w.random(p % 24);
        w.tag(p, false);
    }
    w.close();
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hrl-shipper"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Every object of a local repository: name -> bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

struct Env {
    dir: tempfile::TempDir,
    url: String,
    key: PathBuf,
    disk: Uuid,
    other: Uuid,
    rt: tokio::runtime::Runtime,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        create_key_file(&key).unwrap();
        let url = format!("file://{}", dir.path().join("repo").display());
        let (disk, other) = (Uuid::new_v4(), Uuid::new_v4());
        let sp = dir.path().join("spool");
        std::fs::create_dir_all(&sp).unwrap();
        spool(&sp, disk, 3);
        spool(&sp, other, 2);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let e = Env {
            dir,
            url,
            key,
            disk,
            other,
            rt,
        };
        let o = cli(&["init", "--repo", &e.url, "--key-file", e.k()], &[]);
        assert!(o.status.success(), "{}", err(&o));
        let o = cli(
            &[
                "run",
                "--once",
                "--repo",
                &e.url,
                "--key-file",
                e.k(),
                "--spool",
                sp.to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "{}", err(&o));
        e
    }
    fn k(&self) -> &str {
        self.key.to_str().unwrap()
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
    fn restore(&self, disk: &Uuid, point: &str) -> Output {
        let to = self.dir.path().join(format!("img-{}", Uuid::new_v4()));
        cli(
            &[
                "restore",
                "--repo",
                &self.url,
                "--key-file",
                self.k(),
                "--disk",
                &disk.to_string(),
                "--point",
                point,
                "--to",
                to.to_str().unwrap(),
            ],
            &[],
        )
    }
    /// Runs `f` to damage the repository, then checks that `cmd` fails with
    /// `code` and a message containing every `needle`, and changes nothing.
    fn damaged(&self, what: &str, f: impl FnOnce(&Path), cmd: impl Fn() -> Output, code: i32, needles: &[&str]) {
        f(&self.root());
        let before = snapshot(&self.root());
        let o = cmd();
        let e = err(&o);
        assert_eq!(o.status.code(), Some(code), "{what}: {e}");
        for n in needles {
            assert!(e.contains(n), "{what}: the error must mention {n:?}: {e}");
        }
        assert!(
            before == snapshot(&self.root()),
            "{what}: the failing command changed the repository"
        );
        eprintln!("{what}: exit {code}: {}", e.trim());
    }
}

fn keys_are_checked_and_loose_or_missing_ones_refused() {
    let e = Env::new();
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&e.key), 0o600, "key files are created 0600");
    let wrong = e.dir.path().join("wrong");
    create_key_file(&wrong).unwrap();
    let ws = wrong.to_str().unwrap().to_string();
    e.damaged(
        "wrong key",
        |_| {},
        || cli(&["points", "--repo", &e.url, "--key-file", &ws], &[]),
        2,
        &["wrong key"],
    );
    let missing = e.dir.path().join("missing").to_str().unwrap().to_string();
    e.damaged(
        "missing key file",
        |_| {},
        || cli(&["points", "--repo", &e.url, "--key-file", &missing], &[]),
        2,
        &[&missing],
    );
    let loose = e.dir.path().join("loose");
    std::fs::copy(&e.key, &loose).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let ls = loose.to_str().unwrap().to_string();
    e.damaged(
        "key file readable by others",
        |_| {},
        || cli(&["points", "--repo", &e.url, "--key-file", &ls], &[]),
        2,
        &["readable by others"],
    );
    hrl_format::testutil::reliability_report(
        "wrong, missing, loose key",
        3,
        3,
        0,
        0,
        "exit 2 naming the key file; keys created 0600",
    );
}

fn damaged_repository_objects_are_clear_errors_that_change_nothing() {
    let e = Env::new();
    let manifest = |d: &Uuid, s: u64| e.root().join(format!("points/{d}/{s:016}"));
    // A truncated manifest.
    let m3 = manifest(&e.disk, 3);
    e.damaged(
        "truncated manifest",
        |_| {
            let b = std::fs::read(&m3).unwrap();
            std::fs::write(&m3, &b[..b.len() / 2]).unwrap();
        },
        || e.restore(&e.disk, "3"),
        1,
        &[&format!("points/{}/{:016}", e.disk, 3)],
    );
    // A manifest moved to another disk's point: authentication fails.
    let src = manifest(&e.disk, 2);
    let dst = manifest(&e.other, 2);
    e.damaged(
        "manifest moved to another disk",
        |_| {
            std::fs::copy(&src, &dst).unwrap();
        },
        || e.restore(&e.other, "2"),
        1,
        &[&format!("points/{}/{:016}", e.other, 2), "authentication"],
    );
    // A bit flipped in an index object.
    let idx = std::fs::read_dir(e.root().join("index"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let idx_name = format!("index/{}", idx.file_name().unwrap().to_string_lossy());
    let saved_index = std::fs::read(&idx).unwrap();
    e.damaged(
        "bit-flipped index",
        |_| {
            let mut b = saved_index.clone();
            let n = b.len() / 2;
            b[n] ^= 0x01;
            std::fs::write(&idx, &b).unwrap();
        },
        || e.restore(&e.disk, "1"),
        1,
        &[&idx_name],
    );
    std::fs::write(&idx, &saved_index).unwrap();
    // A truncated pack: restore names the chunk and the pack and says the
    // target is incomplete; check --read-data fails too.
    let repo = e.rt.block_on(Repo::open(&e.url, &e.key)).unwrap();
    let (_, map) =
        e.rt.block_on(hrl_shipper::repo::manifest::full_map(&repo, &e.disk, 1))
            .unwrap();
    let index = e.rt.block_on(repo.load_index()).unwrap();
    let ids: Vec<_> = map
        .values()
        .filter_map(|r| match r {
            hrl_shipper::repo::manifest::ChunkRef::Stored(id) => Some(*id),
            _ => None,
        })
        .collect();
    let loc = index[&ids[0]];
    let pk = pack_key(&loc.pack);
    let pack = e.root().join(&pk);
    let saved_pack = std::fs::read(&pack).unwrap();
    e.damaged(
        "truncated pack",
        |_| std::fs::write(&pack, &saved_pack[..loc.offset as usize + 10]).unwrap(),
        || e.restore(&e.disk, "1"),
        1,
        &["chunk ", &pk, "incomplete"],
    );
    e.damaged(
        "truncated pack (check --read-data)",
        |_| {},
        || cli(&["check", "--read-data", "--repo", &e.url, "--key-file", e.k()], &[]),
        1,
        &[&pk],
    );
    std::fs::write(&pack, &saved_pack).unwrap();
    // An index (written with the right key, as by a confused or replayed
    // index) that says chunk A lives where chunk B's bytes are: the AEAD
    // binds each blob to its id, so A fails to authenticate.
    let (a, b) = (
        ids[0],
        *ids.iter()
            .find(|i| index[*i].pack == loc.pack && **i != ids[0])
            .unwrap_or(&ids[1]),
    );
    let lb = index[&b];
    e.damaged(
        "chunk id pointed at another chunk's bytes",
        |root| {
            // Every index object is replaced by one that moves A.
            let mut packs: BTreeMap<[u8; 32], Vec<(hrl_shipper::repo::crypto::ChunkId, u64, u32)>> = BTreeMap::new();
            for (id, l) in &index {
                let l = if *id == a { lb } else { *l };
                packs.entry(l.pack).or_default().push((*id, l.offset, l.len));
            }
            for f in std::fs::read_dir(root.join("index")).unwrap().flatten() {
                std::fs::remove_file(f.path()).unwrap();
            }
            let forged: Vec<_> = packs.into_iter().collect();
            e.rt.block_on(repo.write_index(&forged)).unwrap();
        },
        || e.restore(&e.disk, "1"),
        1,
        &[&format!("chunk {}", hex::encode(a)), "incomplete"],
    );
    hrl_format::testutil::reliability_report(
        "damaged repository objects (6 kinds, CLI)",
        6,
        6,
        0,
        0,
        "truncated/moved manifest, flipped index, truncated pack, forged index: exit 1 naming the object, repository unchanged",
    );
}

fn no_secret_reaches_the_logs_at_trace_level() {
    let e = Env::new();
    let key_hex = std::fs::read_to_string(&e.key).unwrap().trim().to_string();
    let env = [("HRL_LOG", "trace")];
    let img = e.dir.path().join("img");
    let mut logs = String::new();
    for args in [
        vec!["points", "--repo", &e.url, "--key-file", e.k()],
        vec!["check", "--read-data", "--repo", &e.url, "--key-file", e.k()],
    ] {
        logs.push_str(&err(&cli(&args, &env)));
    }
    let d = e.disk.to_string();
    logs.push_str(&err(&cli(
        &[
            "restore",
            "--repo",
            &e.url,
            "--key-file",
            e.k(),
            "--disk",
            &d,
            "--to",
            img.to_str().unwrap(),
        ],
        &env,
    )));
    // With Azurite running, the account key and request signatures too.
    let mut secrets = vec![key_hex.clone()];
    if let Ok(az) = std::env::var("AZURITE_BLOB_STORAGE_URL") {
        let url = format!("az://hrl-sec-{}/r", &Uuid::new_v4().simple().to_string()[..10]);
        let sp = e.dir.path().join("spool2");
        std::fs::create_dir_all(&sp).unwrap();
        spool(&sp, Uuid::new_v4(), 2);
        let envs = [("HRL_LOG", "trace"), ("AZURITE_BLOB_STORAGE_URL", az.as_str())];
        logs.push_str(&err(&cli(&["init", "--repo", &url, "--key-file", e.k()], &envs)));
        logs.push_str(&err(&cli(
            &[
                "run",
                "--once",
                "--repo",
                &url,
                "--key-file",
                e.k(),
                "--spool",
                sp.to_str().unwrap(),
            ],
            &envs,
        )));
        // The emulator's well-known account key (public, but it stands in
        // for a real one here).
        secrets.push("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==".into());
        secrets.push("SharedKey devstoreaccount1:".into());
        secrets.push("sig=".into());
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("Azurite is not running; scripts/test.sh starts it");
    }
    assert!(!logs.is_empty(), "trace logging produced no output");
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a secret reached the logs: {s:.12}…");
    }
    eprintln!(
        "{} bytes of trace logs, none of {} secrets in them",
        logs.len(),
        secrets.len()
    );
    hrl_format::testutil::reliability_report(
        "no secret in trace logs",
        5,
        0,
        0,
        0,
        &format!(
            "{} bytes of trace logs, {} secrets looked for, none found",
            logs.len(),
            secrets.len()
        ),
    );
}

hrl_testkit::tests!(Nothing: [
    keys_are_checked_and_loose_or_missing_ones_refused,
    damaged_repository_objects_are_clear_errors_that_change_nothing,
    no_secret_reaches_the_logs_at_trace_level,
]);
