//! Durations as written in config files: a number and a unit, `"250ms"`, `"1.5s"`.

use std::time::Duration;

use super::fields::shown;

/// The units a duration may use, with their length in nanoseconds.
const UNITS: [(&str, u128); 4] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3600 * 1_000_000_000),
];

/// More fraction digits than this cannot change a nanosecond count.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses `"250ms"`, `"10s"`, `"5m"`, `"1h"` or `"1.5s"`. The unit is
/// required; negative, empty and overflowing durations are rejected. The
/// error is the problem alone, for the caller to put in context.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("a duration cannot be empty; write e.g. `10s`".to_owned());
    }
    if s.starts_with('-') {
        return Err("a duration cannot be negative".to_owned());
    }
    if s.contains(char::is_whitespace) {
        return Err("remove the spaces; write e.g. `10s`".to_owned());
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    check_number(number)?;
    let nanos = scale(number, unit_nanos(unit)?)?;
    let too_long = |_| "the duration is too long".to_owned();
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(too_long)?;
    // Below 10^9, so it always fits.
    let subsec = u32::try_from(nanos % 1_000_000_000).map_err(too_long)?;
    Ok(Duration::new(secs, subsec))
}

fn unit_nanos(unit: &str) -> Result<u128, String> {
    if unit.is_empty() {
        return Err("missing unit; add one of `ms`, `s`, `m`, `h` (e.g. `10s`)".to_owned());
    }
    UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, nanos)| *nanos)
        .ok_or_else(|| {
            format!(
                "unknown unit `{}`; expected one of `ms`, `s`, `m`, `h`",
                shown(unit)
            )
        })
}

/// Accepts digits, optionally followed by `.` and more digits.
fn check_number(number: &str) -> Result<(), String> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(whole) && digits(fraction) {
        Ok(())
    } else {
        Err("expected a number followed by a unit, e.g. `10s` or `1.5s`".to_owned())
    }
}

/// `number` (already checked) times `nanos_per_unit`.
fn scale(number: &str, nanos_per_unit: u128) -> Result<u128, String> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let too_long = || "the duration is too long".to_owned();
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    // Only ASCII digits (see `check_number`), so any index is a boundary.
    let fraction = fraction.get(..MAX_FRACTION_DIGITS).unwrap_or(fraction);
    let fraction_nanos = match fraction.len() {
        0 => 0,
        len => {
            let digits: u128 = fraction.parse().map_err(|_| too_long())?;
            digits * nanos_per_unit / 10u128.pow(len as u32)
        }
    };
    whole
        .checked_mul(nanos_per_unit)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(too_long)
}

/// The shortest exact spelling of `d` in config syntax, for messages
/// (`100ms`, `30s`, `1.5s`).
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (name, unit) in UNITS.iter().rev() {
        if nanos >= *unit && nanos.is_multiple_of(*unit) {
            return format!("{}{name}", nanos / unit);
        }
    }
    if nanos.is_multiple_of(1_000_000) {
        return format!("{}ms", nanos / 1_000_000);
    }
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn parses_fractions_exactly() {
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("1.5ms"), Duration::from_micros(1500));
        assert_eq!(ok("0.25h"), Duration::from_secs(900));
    }

    #[test]
    fn requires_a_unit() {
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("1.5").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("10 s").unwrap_err().contains("spaces"));
        assert!(
            parse_duration("10sec")
                .unwrap_err()
                .contains("unknown unit `sec`")
        );
        assert!(parse_duration("s").unwrap_err().contains("number"));
        assert!(parse_duration(".5s").unwrap_err().contains("number"));
        assert!(parse_duration("1.s").unwrap_err().contains("number"));
        assert!(parse_duration("1.2.3s").unwrap_err().contains("number"));
        assert!(parse_duration("+1s").unwrap_err().contains("number"));
        assert!(parse_duration("fast").unwrap_err().contains("number"));
    }

    #[test]
    fn rejects_overflow() {
        let huge = format!("{}h", u128::MAX);
        assert!(parse_duration(&huge).unwrap_err().contains("too long"));
        assert!(
            parse_duration("99999999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn formats_like_config_syntax() {
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
