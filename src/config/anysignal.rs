//! Any signal a person may send with `drover signal`: a name as `kill -l`
//! prints it (`TERM`, `SIGTERM`, any case), a real-time signal as
//! `RTMIN+N` / `RTMAX-N`, or a number.

/// The standard signals by number (Linux, x86 and arm numbering).
const NAMES: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// Parses `text` into a signal number within `1..=31` or `realtime`.
pub fn parse(text: &str, realtime: std::ops::RangeInclusive<i32>) -> Result<i32, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let bad = || {
        format!(
            "unknown signal `{text}`: expected a name such as TERM or SIGHUP, RTMIN+N, RTMAX-N, \
             or a number from 1 to {}",
            realtime.end()
        )
    };
    let number = if let Ok(n) = name.parse::<i32>() {
        n
    } else if let Some(pos) = NAMES.iter().position(|n| *n == name) {
        pos as i32 + 1
    } else if let Some(rest) = name.strip_prefix("RTMIN") {
        let offset = offset(rest, '+').ok_or_else(bad)?;
        realtime.start().checked_add(offset).ok_or_else(bad)?
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        let offset = offset(rest, '-').ok_or_else(bad)?;
        realtime.end().checked_sub(offset).ok_or_else(bad)?
    } else {
        return Err(bad());
    };
    if (1..=31).contains(&number) || realtime.contains(&number) {
        Ok(number)
    } else {
        Err(bad())
    }
}

/// `""` → 0, `"+3"` → 3 (with `sign` `+`).
fn offset(rest: &str, sign: char) -> Option<i32> {
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix(sign)?.parse().ok()
}

/// The name of signal `number` (`SIGTERM`, `SIGRTMIN+2`), for messages.
pub fn name(number: i32, realtime: std::ops::RangeInclusive<i32>) -> String {
    match usize::try_from(number - 1).ok().and_then(|i| NAMES.get(i)) {
        Some(n) => format!("SIG{n}"),
        None if realtime.contains(&number) => format!("SIGRTMIN+{}", number - realtime.start()),
        None => format!("signal {number}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RT: std::ops::RangeInclusive<i32> = 34..=64;

    #[test]
    fn names_numbers_and_realtime_signals() {
        assert_eq!(parse("TERM", RT), Ok(15));
        assert_eq!(parse("sigterm", RT), Ok(15));
        assert_eq!(parse("SIGHUP", RT), Ok(1));
        assert_eq!(parse("usr1", RT), Ok(10));
        assert_eq!(parse("9", RT), Ok(9));
        assert_eq!(parse("SYS", RT), Ok(31));
        assert_eq!(parse("RTMIN", RT), Ok(34));
        assert_eq!(parse("SIGRTMIN+2", RT), Ok(36));
        assert_eq!(parse("RTMAX-1", RT), Ok(63));
        assert_eq!(parse("40", RT), Ok(40));
        for bad in [
            "0", "32", "65", "-1", "", "TERMS", "RTMIN+40", "RTMIN-1", "RTMAX+1", "RTMIN+x",
        ] {
            assert!(parse(bad, RT).is_err(), "{bad}");
        }
        assert_eq!(name(15, RT), "SIGTERM");
        assert_eq!(name(36, RT), "SIGRTMIN+2");
    }
}
