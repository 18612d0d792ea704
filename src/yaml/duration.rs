//! Durations written the Collector's way: Go duration strings (`30s`, `1m30s`, `100ms`, `1.5s`,
//! `500us`) or a bare integer of nanoseconds, as Go's mapstructure hook accepts.

use serde::{de, Deserialize, Deserializer};
use std::time::Duration;

/// Parses a Go duration string. Returns a message naming the value on failure.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("duration `{text}` is negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() {
        return Err("duration is empty".into());
    }
    let mut total_nanos: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("duration `{text}` has a unit without a number"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("duration `{text}` has a malformed number"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "duration `{text}` is missing a unit (ns, us, ms, s, m, h)"
                ))
            }
            unit => return Err(format!("duration `{text}` has an unknown unit `{unit}`")),
        };
        rest = &rest[unit_len..];
        total_nanos += number * unit_nanos;
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

/// Serde adapter: `#[serde(with = "crate::config::duration::go")]`.
pub mod go {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Nanos(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Nanos(n) => Ok(Duration::from_nanos(n)),
            Raw::Text(t) => parse_go_duration(&t).map_err(de::Error::custom),
        }
    }
}

/// Serde adapter for `Option<Duration>`.
pub mod go_opt {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::go::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_strings_parse_like_go() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("30s", ms(30_000)),
            ("1m30s", ms(90_000)),
            ("100ms", ms(100)),
            ("1.5s", ms(1_500)),
            ("500us", Duration::from_micros(500)),
            ("2h", ms(7_200_000)),
            ("0", Duration::ZERO),
            ("10ns", Duration::from_nanos(10)),
        ] {
            assert_eq!(parse_go_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_name_the_value() {
        for text in ["30", "5 seconds", "-1s", "s", "1x"] {
            let err = parse_go_duration(text).unwrap_err();
            assert!(err.contains(text.trim()), "{err}");
        }
    }
}
