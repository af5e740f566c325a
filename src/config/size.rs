//! Sizes as written in config files: a whole number and a binary unit,
//! `"512KiB"`, `"64MiB"`, `"1GiB"`.

use super::fields::shown;

/// The units a size may use, with their length in bytes, smallest first.
const UNITS: [(&str, u64); 5] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// "`B`, `KiB`, ...": the units for messages.
fn unit_list() -> String {
    let names: Vec<&str> = UNITS.iter().map(|(name, _)| *name).collect();
    super::suggest::one_of(&names)
}

/// Parses `"4096B"`, `"512KiB"`, `"64MiB"`, `"1GiB"` or `"1TiB"`. The unit
/// is required and case-sensitive; fractions, signs and overflowing sizes
/// are rejected. The error is the problem alone, with a suggested unit if
/// one is close, for the caller to put in context.
pub(crate) fn parse_size(s: &str) -> Result<u64, (String, Option<String>)> {
    if s.is_empty() {
        return Err(("a size cannot be empty; write e.g. `64MiB`".into(), None));
    }
    if s.starts_with('-') {
        return Err(("a size cannot be negative".into(), None));
    }
    if s.contains(char::is_whitespace) {
        return Err(("remove the spaces; write e.g. `64MiB`".into(), None));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() || unit.starts_with(['.', ',', '_']) {
        let problem = "expected a whole number followed by a unit, e.g. `64MiB`";
        return Err((problem.into(), None));
    }
    let Some(&(_, bytes)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        let problem = if unit.is_empty() {
            format!("missing unit; add one of {} (e.g. `64MiB`)", unit_list())
        } else {
            format!(
                "unknown unit `{}`; expected one of {}",
                shown(unit),
                unit_list()
            )
        };
        return Err((problem, unit_help(unit)));
    };
    let too_large = || ("the size is too large".to_owned(), None);
    let n: u64 = number.parse().map_err(|_| too_large())?;
    n.checked_mul(bytes).ok_or_else(too_large)
}

/// `did you mean `MiB`?` for `MB`, `mb` or `mib`: drover's units are
/// binary, spelled as the IEC writes them.
fn unit_help(unit: &str) -> Option<String> {
    let lower = unit.to_ascii_lowercase();
    let prefix = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))?;
    let (name, bytes) = UNITS.iter().find(|(name, _)| {
        name.strip_suffix("iB")
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    })?;
    Some(format!(
        "did you mean `{name}`? (units are binary: 1{name} is {bytes} bytes)"
    ))
}

/// The shortest exact spelling of `bytes` in config syntax (`4KiB`, `1TiB`,
/// `1000B`), for messages.
pub(crate) fn format_size(bytes: u64) -> String {
    for (name, unit) in UNITS.iter().rev() {
        if bytes >= *unit && bytes.is_multiple_of(*unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse_size(s).unwrap_err().0
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("0B"), Ok(0));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(err("").contains("empty"));
        assert!(err("-1GiB").contains("negative"));
        assert!(err("1 GiB").contains("spaces"));
        assert!(err("GiB").contains("whole number"));
        assert!(err("1.5GiB").contains("whole number"));
        assert!(err("+1GiB").contains("whole number"));
        assert!(err("1024").contains("missing unit"));
        assert_eq!(
            parse_size("64MB").unwrap_err(),
            (
                "unknown unit `MB`; expected one of `B`, `KiB`, `MiB`, `GiB`, `TiB`".to_owned(),
                Some("did you mean `MiB`? (units are binary: 1MiB is 1048576 bytes)".to_owned())
            )
        );
        assert!(err("64mib").contains("unknown unit `mib`"));
        let help = |s: &str| parse_size(s).unwrap_err().1;
        assert!(help("1kb").unwrap().starts_with("did you mean `KiB`?"));
        assert!(help("1Gi").is_none());
        assert!(help("1bytes").is_none());
    }

    #[test]
    fn rejects_overflow() {
        assert!(err("99999999999999999999B").contains("too large"));
        assert!(err("17179869184GiB").contains("too large"));
        assert_eq!(parse_size("16777215TiB"), Ok(16_777_215 << 40));
    }

    #[test]
    fn formats_like_config_syntax() {
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(1 << 40), "1TiB");
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1536 << 20), "1536MiB");
    }
}
