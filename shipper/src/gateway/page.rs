//! The fleet view as HTML: `/` (every machine and disk, the alerts) and
//! `/disk/<id>` (one disk: its published points and its RPO over the last
//! 24 h as an inline SVG chart). Rendered on the server, no script, no
//! external asset (the gateway's network may reach nothing else), a
//! refresh every 10 s. Every value that came from a machine is escaped.
//! Neither page shows a key, a secret or a token.

use std::fmt::Write;

use uuid::Uuid;

use super::fleet::{age, Alert, DiskView, FleetView};

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:14px}\
th{background:#f0f0f0}.bad{background:#fde2e2}.ok{color:#176b2c}.warn{color:#b00020;font-weight:bold}\
.muted{color:#777}";

/// `s` with HTML's special characters escaped.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=10>\
         <title>{}</title><style>{STYLE}</style></head><body>",
        escape(title)
    )
}

fn ago(now: u64, t: Option<u64>) -> String {
    t.map_or("never".into(), |t| {
        format!("{} ago", age(now.saturating_sub(t) as f64 / 1e9))
    })
}

fn bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

fn alerts_table(out: &mut String, alerts: &[Alert]) {
    if alerts.is_empty() {
        out.push_str("<p class=ok id=alerts>No alerts.</p>");
        return;
    }
    out.push_str("<table id=alerts><tr><th>alert</th><th>machine or disk</th><th>what</th></tr>");
    for a in alerts {
        let kind = serde_json::to_value(&a.kind).ok();
        let kind = kind.as_ref().and_then(|k| k.as_str()).unwrap_or("alert");
        let _ = write!(
            out,
            "<tr class=bad><td class=warn>{}</td><td>{}</td><td>{}</td></tr>",
            escape(kind),
            escape(&a.label),
            escape(&a.message)
        );
    }
    out.push_str("</table>");
}

fn rpo_cell(d: &DiskView, warn: u64) -> String {
    match d.rpo_seconds {
        None => "<td class=muted>no point yet</td>".into(),
        Some(r) if r > warn as f64 => format!("<td class=warn>{} (over {})</td>", age(r), age(warn as f64)),
        Some(r) => format!("<td class=ok>{}</td>", age(r)),
    }
}

/// The fleet page.
pub fn fleet(v: &FleetView) -> String {
    let disks: usize = v.machines.iter().map(|m| m.disks.len()).sum();
    let mut o = head("hrl fleet");
    let _ = write!(
        o,
        "<h1>hrl fleet</h1><p>{} machines, {disks} disks, {} alerts; RPO threshold {} (or the machine's policy's). Refreshes every 10 s.</p><h2>Alerts</h2>",
        v.machines.len(),
        v.alerts.len(),
        age(v.rpo_warn_seconds as f64)
    );
    alerts_table(&mut o, &v.alerts);
    o.push_str(
        "<h2>Machines</h2><table id=fleet><tr><th>machine</th><th>connected</th><th>last contact</th>\
         <th>disk</th><th>mode</th><th>last point</th><th>last app point</th><th>published</th>\
         <th>RPO</th><th>backlog</th><th>throughput</th><th>last error</th></tr>",
    );
    for m in &v.machines {
        let conn = match (m.revoked, m.connected) {
            (true, _) => "<td class=muted>revoked</td>",
            (false, true) => "<td class=ok>yes</td>",
            (false, false) => "<td class=warn>no</td>",
        };
        let policy = m
            .policy
            .as_deref()
            .map_or(String::new(), |p| format!(" <span class=muted>({})</span>", escape(p)));
        let first = format!(
            "<td>{}{policy}</td>{conn}<td>{}</td>",
            escape(&m.name),
            ago(v.time_ns, m.last_contact_ns)
        );
        if m.disks.is_empty() {
            let _ = write!(o, "<tr>{first}<td class=muted colspan=9>no disk yet</td></tr>");
        }
        for d in &m.disks {
            let point = |p: Option<super::observe::SeenPoint>| {
                p.map_or("none".into(), |p| {
                    let what = if p.aborted { " aborted" } else { "" };
                    format!("{} ({}){what}", p.seq, ago(v.time_ns, Some(p.time_ns)))
                })
            };
            let _ = write!(
                o,
                "<tr>{first}<td><a href=\"/disk/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}<td>{}</td><td>{}/s</td><td>{}</td></tr>",
                d.id,
                escape(&d.label),
                escape(&d.mode),
                escape(&point(d.last_point)),
                escape(&point(d.last_app_point)),
                d.published.map_or("none".into(), |p| p.to_string()),
                rpo_cell(d, d.rpo_warn_seconds),
                bytes(d.backlog_bytes as f64),
                bytes(d.throughput_bps),
                escape(d.last_error.as_deref().unwrap_or("")),
            );
        }
    }
    o.push_str("</table></body></html>");
    o
}

/// The RPO of the last 24 h as an SVG line, with the threshold dashed.
pub fn chart(history: &[(u64, f64)], now: u64, warn: u64) -> String {
    let (w, h) = (720.0, 160.0);
    let day = 86_400e9;
    let top = history.iter().map(|p| p.1).fold(warn as f64 * 1.5, f64::max).max(1.0);
    let x = |t: u64| w * (1.0 - (now.saturating_sub(t) as f64 / day).min(1.0));
    let y = |r: f64| h - h * (r / top).min(1.0);
    let pts: Vec<String> = history
        .iter()
        .map(|&(t, r)| format!("{:.1},{:.1}", x(t), y(r)))
        .collect();
    format!(
        "<svg id=rpo-chart width={w} height={} viewBox=\"0 0 {w} {}\" role=img aria-label=\"RPO over the last 24 hours\">\
         <rect width={w} height={h} fill=#fafafa stroke=#ccc />\
         <line x1=0 x2={w} y1={ty:.1} y2={ty:.1} stroke=#b00020 stroke-dasharray=4 />\
         <polyline fill=none stroke=#1f5fbf stroke-width=2 points=\"{}\" />{}\
         <text x=4 y={} font-size=11>24 h ago</text><text x={} y={} font-size=11>now</text>\
         <text x=4 y=12 font-size=11>{}</text></svg>",
        h + 16.0,
        h + 16.0,
        pts.join(" "),
        history.last().map_or(String::new(), |&(t, r)| format!(
            "<circle cx={:.1} cy={:.1} r=3 fill=#1f5fbf />",
            x(t),
            y(r)
        )),
        h + 13.0,
        w - 24.0,
        h + 13.0,
        escape(&format!("max {} · threshold {}", age(top), age(warn as f64))),
        ty = y(warn as f64),
    )
}

/// The page of one disk: its row, its points (newest first), its chart.
pub fn disk(v: &FleetView, id: &Uuid, points: &[(u64, String, u64)], history: &[(u64, f64)]) -> Option<String> {
    let (m, d) = v.disk(id)?;
    let mut o = head(&format!("hrl disk {}", d.label));
    let _ = write!(
        o,
        "<p><a href=\"/\">fleet</a></p><h1>{}</h1><p>machine {} · disk id {} · mode {} · published point {}</p>",
        escape(&d.label),
        escape(&m.name),
        d.id,
        escape(&d.mode),
        d.published.map_or("none".into(), |p| p.to_string()),
    );
    let _ = write!(
        o,
        "<table id=disk><tr><th>RPO</th><th>backlog</th><th>losses</th></tr><tr>{}<td>{}</td><td>{}</td></tr></table>",
        rpo_cell(d, v.rpo_warn_seconds),
        bytes(d.backlog_bytes as f64),
        d.losses
    );
    let mine: Vec<Alert> = v.alerts.iter().filter(|a| a.disk == Some(*id)).cloned().collect();
    o.push_str("<h2>Alerts</h2>");
    alerts_table(&mut o, &mine);
    o.push_str("<h2>RPO, last 24 h (one sample a minute)</h2>");
    o.push_str(&chart(history, v.time_ns, d.rpo_warn_seconds));
    let _ = write!(
        o,
        "<h2>Published points ({})</h2><table id=points><tr><th>point</th><th>kind</th><th>taken</th></tr>",
        points.len()
    );
    for (seq, kind, t) in points.iter().rev().take(100) {
        let _ = write!(
            o,
            "<tr><td>{seq}</td><td>{}</td><td>{}</td></tr>",
            escape(kind),
            ago(v.time_ns, Some(*t))
        );
    }
    o.push_str("</table></body></html>");
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_text_is_escaped_and_the_chart_is_bounded() {
        assert_eq!(escape("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
        let now = 100 * 86_400_000_000_000u64;
        let c = chart(&[(now - 3_600_000_000_000, 30.0), (now, 900.0)], now, 300);
        assert!(c.contains("<polyline") && c.contains("720.0,"), "{c}");
        assert!(!c.contains("NaN"));
        assert!(chart(&[], now, 0).contains("<svg"));
    }
}
