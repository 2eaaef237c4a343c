//! [`ByteSize`] and [`HumanDuration`]: parsed from text (`FromStr`, so clap
//! takes them as flag values), from TOML/JSON (a string, or a bare number:
//! bytes or seconds), printed back in the same grammar, with checked
//! arithmetic (a value that does not fit is an error, never a wrap).
//!
//! Sizes: a whole number with an optional unit, case-insensitive:
//! `B`; `K`, `KB`, `KiB` = 1024; `M`, `MB`, `MiB` = 1024²; `G`, `GB`, `GiB`
//! = 1024³; `T`, `TB`, `TiB` = 1024⁴. Every multiple is binary: `MB` means
//! MiB here, as in fio, so a size never changes meaning between options.
//! A rate is a size per second; a trailing `/s` is allowed.
//!
//! Durations: a number (decimals allowed) with a unit `ms`, `s`, `m`
//! (or `min`), `h`, `d`, `w`; a bare number is seconds. At most 100 years.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a size or duration was refused; the message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

impl UnitError {
    pub fn new(msg: String) -> Self {
        UnitError(msg)
    }
}

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A length of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

const SIZE_UNITS: [(&str, u64); 4] = [("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];

/// The longest duration accepted: 100 years, in nanoseconds.
const MAX_NANOS: u128 = 100 * 365 * 86_400 * 1_000_000_000;

fn split_number(t: &str, decimals: bool) -> (&str, &str) {
    let at = t
        .find(|c: char| !(c.is_ascii_digit() || (decimals && c == '.')))
        .unwrap_or(t.len());
    let (n, u) = t.split_at(at);
    (n, u.trim())
}

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn checked_mul(self, n: u64) -> Option<ByteSize> {
        self.0.checked_mul(n).map(ByteSize)
    }

    pub fn checked_add(self, o: ByteSize) -> Option<ByteSize> {
        self.0.checked_add(o.0).map(ByteSize)
    }

    /// The size as a u32 (chunk sizes), or an error naming it.
    pub fn to_u32(self) -> Result<u32, UnitError> {
        u32::try_from(self.0).map_err(|_| UnitError(format!("{self} is too large here (at most 4 GiB - 1)")))
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        let t = s.trim();
        let t = t.strip_suffix("/s").unwrap_or(t);
        let (num, unit) = split_number(t, false);
        let n: u64 = num.parse().map_err(|_| {
            UnitError(format!(
                "bad size {s:?}: expected a whole number with an optional unit (64K, 1MiB, 2G)"
            ))
        })?;
        let u = unit.to_ascii_uppercase();
        let mult = match u.as_str() {
            "" | "B" => 1,
            _ => {
                let base = u.strip_suffix("IB").or_else(|| u.strip_suffix('B')).unwrap_or(&u);
                SIZE_UNITS
                    .iter()
                    .find(|(name, _)| *name == base)
                    .map(|(_, m)| *m)
                    .ok_or_else(|| {
                        UnitError(format!(
                            "bad size {s:?}: unknown unit {unit:?} (B, K, M, G, T; KiB = KB = K = 1024)"
                        ))
                    })?
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| UnitError(format!("size {s:?} is too large")))
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that divides the size exactly: `64KiB`, `3GiB`, `1000B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, m) in SIZE_UNITS {
            if self.0 >= m && self.0 % m == 0 {
                return write!(f, "{}{name}iB", self.0 / m);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl HumanDuration {
    pub fn duration(self) -> Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        let t = s.trim();
        let (num, unit) = split_number(t, true);
        let bad = || {
            UnitError(format!(
                "bad duration {s:?}: expected a number with a unit (500ms, 10s, 15m, 24h, 7d)"
            ))
        };
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let frac_n: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        // nanoseconds per unit: exact integer arithmetic, no rounding
        let per: u128 = match unit {
            "ms" => 1_000_000,
            "" | "s" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 604_800_000_000_000,
            u => {
                return Err(UnitError(format!(
                    "bad duration {s:?}: unknown unit {u:?} (ms, s, m, h, d, w)"
                )))
            }
        };
        let too_long = || UnitError(format!("duration {s:?} is too long (at most 100 years)"));
        let ns = whole
            .checked_mul(per)
            .and_then(|w| w.checked_add(frac_n * per / 10u128.pow(frac.len() as u32)))
            .ok_or_else(too_long)?;
        if ns > MAX_NANOS {
            return Err(too_long());
        }
        Ok(HumanDuration(Duration::from_nanos(ns as u64)))
    }
}

impl fmt::Display for HumanDuration {
    /// The largest unit that divides the duration exactly: `500ms`, `90s`, `15m`, `7d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 || ms % 1000 != 0 {
            return write!(f, "{ms}ms");
        }
        let s = ms / 1000;
        for (name, per) in [("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)] {
            if s % per == 0 {
                return write!(f, "{}{name}", s / per);
            }
        }
        write!(f, "{s}s")
    }
}

/// A config value: text in the grammar above, or a bare number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    N(u64),
    F(f64),
    S(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::F(_) => Err(serde::de::Error::custom(
                "a size is a whole number of bytes or text like 64MiB",
            )),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Raw::deserialize(d)? {
            Raw::N(n) => format!("{n}s").parse().map_err(serde::de::Error::custom),
            Raw::F(x) => format!("{x}s").parse().map_err(serde::de::Error::custom),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn size(s: &str) -> Result<u64, UnitError> {
        s.parse::<ByteSize>().map(|b| b.0)
    }

    fn dur(s: &str) -> Result<Duration, UnitError> {
        s.parse::<HumanDuration>().map(|d| d.0)
    }

    #[test]
    fn every_multiple_is_binary() {
        assert_eq!(size("65536").unwrap(), 65536);
        for k in ["64K", "64k", "64KB", "64KiB", "64 kib"] {
            assert_eq!(size(k).unwrap(), 64 << 10, "{k}");
        }
        for m in ["20M", "20MB", "20MiB", "20MiB/s", "20mb/s"] {
            assert_eq!(size(m).unwrap(), 20 << 20, "{m}");
        }
        assert_eq!(size("2GiB").unwrap(), 2 << 30);
        assert_eq!(size("1T").unwrap(), 1 << 40);
        assert!(size("1.5M").unwrap_err().to_string().contains("\"1.5M\""));
        assert!(size("5X").unwrap_err().to_string().contains("unknown unit"));
        assert!(size("99999999999T").unwrap_err().to_string().contains("too large"));
        assert!(size("").is_err());
    }

    #[test]
    fn durations_have_one_grammar() {
        assert_eq!(dur("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(dur("10").unwrap(), Duration::from_secs(10));
        assert_eq!(dur("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(dur("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(dur("2min").unwrap(), Duration::from_secs(120));
        assert_eq!(dur("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(dur("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(dur("2w").unwrap(), Duration::from_secs(14 * 86400));
        // the overflow the fuzzer found in one of the three old parsers
        assert!(dur("9999999999999d").unwrap_err().to_string().contains("too long"));
        assert!(dur("-1s").is_err());
        assert!(dur("1y").unwrap_err().to_string().contains("unknown unit"));
        assert!(dur("NaNs").is_err());
    }

    #[test]
    fn config_values_may_be_numbers_or_text() {
        #[derive(Deserialize, Serialize, Debug, PartialEq)]
        struct C {
            a: ByteSize,
            b: HumanDuration,
        }
        let c: C = toml::from_str("a = \"64M\"\nb = \"15m\"").unwrap();
        assert_eq!(
            c,
            C {
                a: ByteSize(64 << 20),
                b: HumanDuration(Duration::from_secs(900))
            }
        );
        let c: C = toml::from_str("a = 4096\nb = 30").unwrap();
        assert_eq!(
            c,
            C {
                a: ByteSize(4096),
                b: HumanDuration(Duration::from_secs(30))
            }
        );
        let e = toml::from_str::<C>("a = \"4Q\"\nb = 1").unwrap_err().to_string();
        assert!(e.contains("unknown unit"), "{e}");
        let back: C = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    proptest! {
        #[test]
        fn printing_then_parsing_gives_the_value_back(n in 0u64..(1 << 50), ms in 0u64..(10 * 365 * 86_400_000)) {
            let b = ByteSize(n);
            prop_assert_eq!(b.to_string().parse::<ByteSize>().unwrap(), b);
            let d = HumanDuration(Duration::from_millis(ms));
            prop_assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }

        #[test]
        fn no_input_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<ByteSize>();
            let _ = s.parse::<HumanDuration>();
        }
    }
}
