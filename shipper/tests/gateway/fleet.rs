//! The fleet view (issue 17): two machines forward through the gateway;
//! the admin sees both in `/fleet.json`, in `hrl-shipper fleet` and on the
//! page rendered by headless Chromium (machine and disk names, an RPO
//! value, alerts; screenshots saved); no credential, a machine's, or a
//! wrong secret gets 401; no page shows a secret; the webhook receives one
//! event per RPO breach and one when it clears, even though it refuses
//! the first delivery. And the forwarder's own status file and metrics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hrl_format::DiskMode;
use hrl_shipper::forward::client::GatewayClient;
use hrl_testkit::spool::SpoolWriter;
use reqwest::Method;
use serde_json::Value;
use uuid::Uuid;

use super::Gw;

/// A webhook receiver on loopback: answers 500 to the very first request,
/// 200 to the rest, and keeps the bodies it answered 200.
fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        let mut first = true;
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            let status = if first { "500 Internal Server Error" } else { "200 OK" };
            if !first {
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push(v);
                }
            }
            first = false;
            let _ = r
                .get_mut()
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
        }
    });
    (url, got)
}

/// A machine's spool for disk `host/data` in data mode, with points
/// `from..=to` (the last one aborted when `abort_last`).
fn points(spool: &Path, disk: Uuid, host: &str, from: u64, to: u64, abort_last: bool) {
    std::fs::create_dir_all(spool).unwrap();
    let mut w = SpoolWriter::named(spool, disk, 16, from, host, "data");
    if from == 1 {
        w.mode(DiskMode::Data);
        w.full_copy();
    }
    for p in from..=to {
        let c = w.any_chunk();
        w.random(c);
        w.tag(p, abort_last && p == to);
    }
    w.close();
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn alerts(v: &Value, kind: &str) -> Vec<String> {
    v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == kind)
        .map(|a| a["label"].as_str().unwrap().to_string())
        .collect()
}

/// Headless Chromium's DOM of `url`, and a screenshot of it into `shot`.
fn browse(url: &str, shot: &Path) -> String {
    let chromium = hrl_testkit::browser().expect("chromium");
    let profile = tempfile::tempdir().unwrap();
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--ignore-certificate-errors",
        "--window-size=1500,900",
    ];
    let run = |extra: &str| {
        let o = std::process::Command::new(&chromium)
            .args(common)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(extra)
            .arg(url)
            .output()
            .unwrap();
        assert!(o.status.success(), "chromium: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    run(&format!("--screenshot={}", shot.display()));
    assert!(
        std::fs::metadata(shot).map(|m| m.len() > 10_000).unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );
    run("--dump-dom")
}

pub fn the_fleet_view_shows_every_machine_and_its_alerts_to_the_admin_only() {
    let (hook, events) = webhook();
    let gw = Gw::start_with(
        "0",
        &format!("rpo_warn = \"8s\"\nsilent_after = \"6s\"\nwebhook = {hook:?}\n"),
    );
    let work = tempfile::tempdir().unwrap();
    let (db, web) = (Uuid::new_v4(), Uuid::new_v4());
    let (db_id, _) = gw.enroll("db01");
    let (web_id, _) = gw.enroll("web01");
    points(&work.path().join("db01"), db, "db01", 1, 2, false);
    points(&work.path().join("web01"), web, "web01", 1, 2, true);
    gw.forward(&db_id, &work.path().join("db01")).unwrap();
    gw.forward(&web_id, &work.path().join("web01")).unwrap();
    let repo = gw.repo();
    gw.wait_points(&repo, &db, 2);
    gw.wait_points(&repo, &web, 1);

    let secret = std::fs::read_to_string(gw.state().join("admin.secret"))
        .unwrap()
        .trim()
        .to_string();
    let admin = GatewayClient::admin(&gw.url, &gw.fingerprint, &secret).unwrap();
    let view = || gw.call(&admin, Method::GET, "/fleet.json", None).1;
    // The ship loop's status (published points) is written as it goes.
    wait_for("the published points in the view", Duration::from_secs(20), || {
        let v = view();
        v["machines"][0]["disks"][0]["published"] == 2 && v["machines"][1]["disks"][0]["published"] == 1
    });
    let v = view();
    let names: Vec<&str> = v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db01", "web01"], "{v}");
    let disk = |v: &Value, m: usize| v["machines"][m]["disks"][0].clone();
    assert_eq!(disk(&v, 0)["label"], "db01/data");
    assert_eq!(disk(&v, 0)["mode"], "data");
    assert_eq!(disk(&v, 0)["published"], 2);
    assert_eq!(disk(&v, 1)["published"], 1, "web01's point 2 was aborted");
    assert_eq!(v["machines"][0]["connected"], true);
    assert!(disk(&v, 0)["rpo_seconds"].as_f64().unwrap() < 8.0);
    assert_eq!(alerts(&v, "point-aborted"), ["web01/data"], "{v}");

    // Time passes with no new point and no contact: RPO and silence alerts.
    wait_for("RPO and silence alerts", Duration::from_secs(30), || {
        let v = view();
        alerts(&v, "rpo").len() == 2 && alerts(&v, "silent").len() == 2
    });
    let v = view();
    assert_eq!(v["machines"][0]["connected"], false);

    // The same view from the command line, and its exit code.
    let out = std::process::Command::new(hrl_testkit::bin("hrl-shipper"))
        .args([
            "fleet",
            "--gateway",
            &gw.url,
            "--fingerprint",
            &gw.fingerprint,
            "--admin-file",
        ])
        .arg(gw.state().join("admin.secret"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "alerts are raised: {text}");
    assert!(
        text.contains("db01/data") && text.contains("OVER") && text.contains("ALERT Rpo"),
        "{text}"
    );

    // Refused without the admin credential, and with a machine's.
    let port = gw.url.rsplit(':').next().unwrap().to_string();
    let none = GatewayClient::new(&gw.url, &gw.fingerprint, None).unwrap();
    let wrong = GatewayClient::admin(&gw.url, &gw.fingerprint, "0123").unwrap();
    for (who, c) in [("nobody", &none), ("a wrong secret", &wrong)] {
        for path in ["/", "/fleet.json", "/metrics", &format!("/disk/{db}")] {
            assert_eq!(gw.call(c, Method::GET, path, None).0, 401, "{who} {path}");
        }
    }
    let web_secret = web_id.secret.clone();
    let as_machine = GatewayClient::new(&gw.url, &gw.fingerprint, Some(("web01", &web_secret))).unwrap();
    assert_eq!(gw.call(&as_machine, Method::GET, "/fleet.json", None).0, 401);

    // Metrics name machines and disks, and every query of the Grafana
    // dashboard names a metric the gateway exports.
    let metrics = String::from_utf8(gw.rt.block_on(admin.get_bytes("/metrics")).unwrap()).unwrap();
    assert!(
        metrics.contains("hrl_fleet_rpo_seconds{machine=\"db01\",disk=\"db01/data\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("kind=\"point-aborted\""), "{metrics}");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/grafana/hrl-fleet.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 5);
    for e in &exprs {
        let names: Vec<&str> = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("hrl_"))
            .collect();
        assert!(!names.is_empty(), "dashboard query {e:?} names no hrl metric");
        for n in names {
            assert!(
                metrics.contains(&format!("# TYPE {n} ")),
                "dashboard query {e:?}: the gateway exports no {n}"
            );
        }
    }

    // The page in a real browser.
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleet-page");
    std::fs::create_dir_all(&shots).unwrap();
    let base = format!("https://admin:{secret}@127.0.0.1:{port}");
    let dom = browse(&format!("{base}/"), &shots.join("fleet.png"));
    for want in [
        "db01",
        "web01",
        "db01/data",
        "web01/data",
        "RPO",
        "exceeds",
        "point-aborted",
        "no contact for",
    ] {
        assert!(dom.contains(want), "the fleet page lacks {want:?}: {dom}");
    }
    assert!(
        dom.contains("<td class=\"warn\">") || dom.contains("class=\"warn\""),
        "no RPO over its threshold is marked"
    );
    let page = browse(&format!("{base}/disk/{db}"), &shots.join("disk.png"));
    for want in ["db01/data", "Published points (2)", "rpo-chart", "polyline"] {
        assert!(page.contains(want), "the disk page lacks {want:?}: {page}");
    }
    for s in [&secret, &web_secret] {
        assert!(
            !dom.contains(s.as_str()) && !page.contains(s.as_str()),
            "a secret is on a page"
        );
    }
    eprintln!("screenshots: {}", shots.display());

    // A new point from db01 clears its RPO and silence alerts.
    points(&work.path().join("db01"), db, "db01", 3, 3, false);
    gw.forward(&db_id, &work.path().join("db01")).unwrap();
    gw.wait_points(&repo, &db, 3);
    let rpo_events = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["alert"]["kind"] == "rpo" && e["alert"]["disk"] == db.to_string())
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect()
    };
    wait_for("the webhook's resolved event", Duration::from_secs(30), || {
        rpo_events(&events.lock().unwrap()).contains(&"resolved".to_string())
    });
    let got = rpo_events(&events.lock().unwrap());
    assert_eq!(
        got[..2],
        ["raised", "resolved"],
        "db01's RPO events at the webhook: {got:?}"
    );
    let all = events.lock().unwrap().len();
    eprintln!("webhook: {all} events delivered (the first delivery was refused and retried); db01 RPO: {got:?}");
}

/// The value of the sample `name` (with its labels) at a local metrics
/// endpoint (plain HTTP).
fn scrape(addr: &str, name: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}: {out}"))
}

/// The forwarder as a daemon: its status file and metrics say where the
/// gateway stands and what the spool still holds, and say so when the
/// gateway goes away; `hrl-shipper status` prints it.
pub fn a_forwarder_reports_where_the_gateway_stands_and_when_it_is_unreachable() {
    use hrl_shipper::forward::status::{load, serve_metrics, ForwardStatus};
    use std::sync::atomic::AtomicBool;
    let gw = Gw::start("0");
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("m1");
    let disk = Uuid::new_v4();
    points(&spool, disk, "m1", 1, 3, false);
    let (id, _) = gw.enroll("m1");
    let st = Arc::new(Mutex::new(ForwardStatus {
        gateway: gw.url.clone(),
        machine: "m1".into(),
        ..Default::default()
    }));
    serve_metrics(&st, "127.0.0.1:0");
    let addr = st.lock().unwrap().metrics.clone().expect("metrics address");
    let mut o = hrl_shipper::forward::ForwardOptions::new(&spool);
    o.status = Some(st.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s2, id2) = (stop.clone(), id.clone());
    let task = rt.spawn(async move { hrl_shipper::forward::forward(&id2, &o, &s2).await });
    wait_for(
        "the forwarder's status: all acknowledged",
        Duration::from_secs(30),
        || {
            load(&spool).is_ok_and(|s| {
                s.reachable && s.last_ack_ns.is_some() && s.disks.get(&disk).is_some_and(|d| d.pending_bytes == 0)
            })
        },
    );
    let pending = format!("hrl_forwarder_pending_bytes{{disk=\"{disk}\"}}");
    assert_eq!(scrape(&addr, "hrl_forwarder_gateway_reachable"), 1.0);
    assert_eq!(scrape(&addr, &pending), 0.0);
    assert!(scrape(&addr, "hrl_forwarder_sent_bytes") > 0.0);
    let status = |what: &str| {
        let o = std::process::Command::new(hrl_testkit::bin("hrl-shipper"))
            .args(["status", "--spool"])
            .arg(&spool)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(text.contains(what), "status lacks {what:?}: {text}");
        o.status.code()
    };
    assert_eq!(status("gateway reachable"), Some(0));

    // The gateway goes away; the agent keeps writing.
    drop(gw);
    points(&spool, disk, "m1", 4, 5, false);
    wait_for(
        "the forwarder's status: unreachable, bytes pending",
        Duration::from_secs(30),
        || {
            load(&spool).is_ok_and(|s| {
                !s.reachable && s.last_error.is_some() && s.disks.get(&disk).is_some_and(|d| d.pending_bytes > 0)
            })
        },
    );
    assert_eq!(scrape(&addr, "hrl_forwarder_gateway_reachable"), 0.0);
    assert!(scrape(&addr, &pending) > 0.0);
    assert_eq!(status("UNREACHABLE"), Some(0));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = rt.block_on(task);
}
