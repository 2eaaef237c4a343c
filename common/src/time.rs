//! Times as operators read and type them: RFC 3339 in UTC
//! (`2026-11-28T16:21:40Z`) with an age (`3 min ago`), and `--before`
//! values: an RFC 3339 time (`Z` or an offset) or an age (`10 min ago`,
//! `2h ago`, any `HumanDuration` followed by `ago`). No time zone database
//! is needed: everything is UTC or an explicit offset.

use crate::units::{HumanDuration, UnitError};

const NS: u64 = 1_000_000_000;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `ns` since the Unix epoch as RFC 3339 UTC, to the second.
pub fn rfc3339(ns: u64) -> String {
    let s = (ns / NS) as i64;
    let (y, m, d) = civil_from_days(s.div_euclid(86_400));
    let r = s.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", r / 3600, r / 60 % 60, r % 60)
}

/// How long before `now_ns` the time `ns` was: `12 s ago`, `3 min ago`,
/// `5 h ago`, `2 d ago` (`in the future` for a clock ahead of ours).
pub fn age(ns: u64, now_ns: u64) -> String {
    if ns > now_ns + NS {
        return "in the future".into();
    }
    let s = now_ns.saturating_sub(ns) / NS;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// RFC 3339 with its age: `2026-11-28T16:21:40Z, 3 min ago`.
pub fn when(ns: u64, now_ns: u64) -> String {
    format!("{}, {}", rfc3339(ns), age(ns, now_ns))
}

/// Parses a `--before` value into ns since the epoch: RFC 3339 or an age
/// ending in `ago`, relative to `now_ns`.
pub fn parse_time(s: &str, now_ns: u64) -> Result<u64, UnitError> {
    let t = s.trim();
    if let Some(d) = t.strip_suffix("ago") {
        let d: HumanDuration = d
            .trim()
            .replace(' ', "")
            .replace("mins", "m")
            .replace("min", "m")
            .parse()?;
        return Ok(now_ns.saturating_sub(d.0.as_nanos() as u64));
    }
    parse_rfc3339(t).ok_or_else(|| {
        UnitError::new(format!(
            "bad time {s:?}: expected RFC 3339 (2026-11-28T16:21:40Z, or with an offset like +01:00) or an age (10 min ago)"
        ))
    })
}

fn parse_rfc3339(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<u32>().ok();
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut frac_ns = 0u64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
        let (fd, after) = f.split_at(digits);
        let fd = &fd[..fd.len().min(9)];
        frac_ns = fd.parse::<u64>().ok()? * 10u64.pow(9 - fd.len() as u32);
        rest = after;
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let h: i64 = o[1..3].parse().ok()?;
            let m: i64 = o[4..6].parse().ok()?;
            let v = h * 3600 + m * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y as i64, mo, d);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64 - offset_s;
    u64::try_from(secs).ok()?.checked_mul(NS)?.checked_add(frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_and_parse_as_rfc3339_and_ages() {
        // 2026-11-28T16:21:40Z
        let t = 1_795_882_900 * NS;
        assert_eq!(rfc3339(t), "2026-11-28T16:21:40Z");
        assert_eq!(parse_time("2026-11-28T16:21:40Z", 0).unwrap(), t);
        assert_eq!(parse_time("2026-11-28T17:21:40+01:00", 0).unwrap(), t);
        assert_eq!(parse_time("2026-11-28T16:21:40.5Z", 0).unwrap(), t + NS / 2);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 * NS), "2000-02-29T00:00:00Z");
        assert_eq!(age(t, t + 180 * NS), "3 min ago");
        assert_eq!(age(t, t + 5 * NS), "5 s ago");
        assert_eq!(age(t, t + 3 * 86_400 * NS), "3 d ago");
        assert_eq!(when(t, t + 180 * NS), "2026-11-28T16:21:40Z, 3 min ago");
        assert_eq!(parse_time("10 min ago", t).unwrap(), t - 600 * NS);
        assert_eq!(parse_time("2h ago", t).unwrap(), t - 7200 * NS);
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-28 16:21",
            "2026-11-28T16:21:40",
            "ago",
        ] {
            let e = parse_time(bad, t).unwrap_err().to_string();
            assert!(e.contains("bad") || e.contains("expected"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_second_of_four_centuries_round_trips() {
        let mut s = 0u64;
        while s < 400 * 366 * 86_400 {
            assert_eq!(parse_time(&rfc3339(s * NS), 0).unwrap(), s * NS);
            s += 86_400 * 7 + 3_607;
        }
    }
}
