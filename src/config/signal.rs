//! drover's own signal type, keeping `nix` at the edge.
//!
//! Config files name signals as `"SIGTERM"` or `"TERM"`; [`Signal::parse`]
//! accepts both and rejects anything else with the list of valid names.

use std::fmt;

/// The signals a user may name in a config (`stop_signal`) or that drover
/// forwards. Real-time signals are deliberately not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Hup,
    Int,
    Quit,
    Kill,
    Usr1,
    Usr2,
    Term,
    Cont,
    Stop,
    Tstp,
    Winch,
    Alrm,
    Abrt,
}

const ALL: [(Signal, &str); 13] = [
    (Signal::Hup, "SIGHUP"),
    (Signal::Int, "SIGINT"),
    (Signal::Quit, "SIGQUIT"),
    (Signal::Kill, "SIGKILL"),
    (Signal::Usr1, "SIGUSR1"),
    (Signal::Usr2, "SIGUSR2"),
    (Signal::Term, "SIGTERM"),
    (Signal::Cont, "SIGCONT"),
    (Signal::Stop, "SIGSTOP"),
    (Signal::Tstp, "SIGTSTP"),
    (Signal::Winch, "SIGWINCH"),
    (Signal::Alrm, "SIGALRM"),
    (Signal::Abrt, "SIGABRT"),
];

impl Signal {
    /// Parses `"SIGTERM"` or `"TERM"` (case-sensitive, as `kill -l` prints them).
    pub fn parse(s: &str) -> Option<Signal> {
        let full = if s.starts_with("SIG") {
            s.to_owned()
        } else {
            format!("SIG{s}")
        };
        ALL.iter().find(|(_, n)| *n == full).map(|(sig, _)| *sig)
    }

    /// Every accepted name, for error messages.
    pub fn valid_names() -> impl Iterator<Item = &'static str> {
        ALL.iter().map(|(_, n)| *n)
    }

    /// The conventional name, e.g. `"SIGTERM"`.
    pub fn name(self) -> &'static str {
        ALL.iter()
            .find(|(sig, _)| *sig == self)
            .map(|(_, n)| *n)
            .expect("every variant is listed in ALL")
    }

    /// The name of a raw signal number, for reporting how a child died.
    pub fn name_of_raw(raw: i32) -> String {
        match nix::sys::signal::Signal::try_from(raw) {
            Ok(s) => s.as_str().to_owned(),
            // As `kill -l` names them.
            Err(_) if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&raw) => {
                format!("SIGRTMIN+{}", raw - libc::SIGRTMIN())
            }
            Err(_) => format!("SIG{raw}"),
        }
    }

    /// The `nix` equivalent, used only where a syscall is made.
    pub fn to_nix(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal as N;
        match self {
            Signal::Hup => N::SIGHUP,
            Signal::Int => N::SIGINT,
            Signal::Quit => N::SIGQUIT,
            Signal::Kill => N::SIGKILL,
            Signal::Usr1 => N::SIGUSR1,
            Signal::Usr2 => N::SIGUSR2,
            Signal::Term => N::SIGTERM,
            Signal::Cont => N::SIGCONT,
            Signal::Stop => N::SIGSTOP,
            Signal::Tstp => N::SIGTSTP,
            Signal::Winch => N::SIGWINCH,
            Signal::Alrm => N::SIGALRM,
            Signal::Abrt => N::SIGABRT,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings() {
        assert_eq!(Signal::parse("SIGTERM"), Some(Signal::Term));
        assert_eq!(Signal::parse("TERM"), Some(Signal::Term));
        assert_eq!(Signal::parse("USR1"), Some(Signal::Usr1));
        assert_eq!(Signal::parse("term"), None);
        assert_eq!(Signal::parse("SIGFOO"), None);
    }

    #[test]
    fn names_round_trip() {
        for name in Signal::valid_names() {
            assert_eq!(Signal::parse(name).unwrap().name(), name);
            assert_eq!(Signal::parse(name).unwrap().to_nix().as_str(), name);
        }
    }
}
