//! The restart and stop policy of a group: the keys that a reload applies
//! without restarting children.

use std::ops::Range;

use super::diag::Diagnostic;
use super::duration::format_duration;
use super::fields::{Cx, Key, Value, shown};
use super::limits::{MAX_RESTARTS, MIN_START_SECS};
use super::model::{Policy, RestartPolicy};
use super::suggest::{did_you_mean, one_of};
use crate::config::signal::Signal;

pub(crate) const KEYS: [&str; 8] = [
    "restart",
    "success_codes",
    "start_secs",
    "restart_delay",
    "restart_delay_max",
    "max_restarts",
    "stop_signal",
    "stop_timeout",
];

const RESTART: [(&str, RestartPolicy); 3] = [
    ("always", RestartPolicy::Always),
    ("on-failure", RestartPolicy::OnFailure),
    ("never", RestartPolicy::Never),
];

/// A policy being read: defaults until a key overrides them. The spans of
/// the two backoff delays are kept to point at them if they disagree.
#[derive(Default)]
pub(crate) struct PolicyDraft {
    policy: Policy,
    delay: Option<Range<usize>>,
    delay_max: Option<Range<usize>>,
}

impl PolicyDraft {
    /// The policy read so far, for the keys of [`super::ready`].
    pub fn policy_mut(&mut self) -> &mut Policy {
        &mut self.policy
    }

    /// Reads one of [`KEYS`].
    pub fn read(&mut self, cx: &mut Cx<'_>, key: &Key<'_>, value: &Value<'_>) {
        let p = &mut self.policy;
        match key.get_ref().as_ref() {
            "restart" => set(
                &mut p.restart,
                cx.choice("restart", value, "restart policy", &RESTART),
            ),
            "success_codes" => set(&mut p.success_codes, success_codes(cx, value)),
            "start_secs" => set(&mut p.start_secs, start_secs(cx, value)),
            "restart_delay" => {
                if let Some(d) = cx.duration("restart_delay", value) {
                    (p.restart_delay, self.delay) = (d, Some(value.span()));
                }
            }
            "restart_delay_max" => {
                if let Some(d) = cx.duration("restart_delay_max", value) {
                    (p.restart_delay_max, self.delay_max) = (d, Some(value.span()));
                }
            }
            "max_restarts" => set(
                &mut p.max_restarts,
                cx.u32("max_restarts", value, 0, MAX_RESTARTS),
            ),
            "stop_signal" => set(&mut p.stop_signal, signal(cx, value)),
            _ => set(&mut p.stop_timeout, cx.duration("stop_timeout", value)),
        }
    }

    /// Checks that backoff can double from `restart_delay` up to
    /// `restart_delay_max`.
    pub fn finish(self, cx: &mut Cx<'_>) -> Policy {
        let (delay, max) = (self.policy.restart_delay, self.policy.restart_delay_max);
        if max < delay {
            let (d, m) = (format_duration(delay), format_duration(max));
            let (span, message) = match (self.delay, self.delay_max) {
                (Some(_), Some(span)) => (
                    span,
                    format!(
                        "`restart_delay_max` ({m}){} is shorter than `restart_delay` ({d})",
                        cx.place()
                    ),
                ),
                (None, Some(span)) => (
                    span,
                    format!(
                        "`restart_delay_max` ({m}){} is shorter than the default `restart_delay` ({d})",
                        cx.place()
                    ),
                ),
                (Some(span), None) => (
                    span,
                    format!(
                        "`restart_delay` ({d}){} is longer than the default `restart_delay_max` ({m})",
                        cx.place()
                    ),
                ),
                // The defaults are ordered: one of them was set.
                (None, None) => return self.policy,
            };
            let help = "backoff starts at `restart_delay` and doubles up to `restart_delay_max`; \
                        make `restart_delay_max` at least `restart_delay`";
            cx.error(span, message, Some(help.into()));
        }
        self.policy
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// `start_secs`, raised to [`MIN_START_SECS`] with a warning when shorter.
fn start_secs(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<std::time::Duration> {
    let d = cx.duration("start_secs", value)?;
    if d >= MIN_START_SECS {
        return Some(d);
    }
    let min = format_duration(MIN_START_SECS);
    let message = format!(
        "{} is {}, below the minimum of {min}: drover uses {min}",
        cx.key("start_secs"),
        format_duration(d)
    );
    let help = format!(
        "a child that dies within `start_secs` is a failed start and backs off; \
         write `start_secs = \"{min}\"` to say so"
    );
    cx.report(
        Diagnostic::warning(message)
            .at(cx.at(value.span()))
            .with_help(help),
    );
    Some(MIN_START_SECS)
}

/// A non-empty array of exit codes, 0 to 255.
fn success_codes(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<Vec<i32>> {
    let items = cx.array("success_codes", value, "an array of exit codes")?;
    if items.is_empty() {
        let help = "list the exit codes that count as success, e.g. `success_codes = [0]`";
        let message = format!("{} cannot be empty", cx.key("success_codes"));
        cx.error(value.span(), message, Some(help.into()));
        return None;
    }
    let codes: Vec<Option<i32>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| cx.int(&format!("success_codes[{i}]"), item, 0, 255))
        .map(|code| code.and_then(|c| i32::try_from(c).ok()))
        .collect();
    codes.into_iter().collect()
}

/// `"SIGTERM"` or `"TERM"`.
fn signal(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<Signal> {
    let s = cx.string("stop_signal", value)?;
    if let Some(signal) = Signal::parse(s) {
        return Some(signal);
    }
    let names: Vec<&str> = Signal::valid_names().collect();
    let short: Vec<&str> = names.iter().map(|n| n.trim_start_matches("SIG")).collect();
    let candidates: Vec<&str> = names.iter().chain(&short).copied().collect();
    let message = format!(
        "unknown signal `{}` for {}; expected one of {} (the `SIG` prefix is optional)",
        shown(s),
        cx.key("stop_signal"),
        one_of(&names)
    );
    cx.error(value.span(), message, did_you_mean(s, &candidates));
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::Diagnostic;
    use crate::config::source::SourceFile;
    use std::path::PathBuf;
    use std::time::Duration;

    fn read_policy(body: &str) -> (Policy, Vec<String>) {
        let file = SourceFile::new(PathBuf::from("/t/a.toml"), body.to_owned());
        let doc = toml::de::DeTable::parse(&file.text).unwrap();
        let mut diags: Vec<Diagnostic> = Vec::new();
        let mut cx = Cx::new(&file, &mut diags);
        let mut draft = PolicyDraft::default();
        for (key, value) in doc.get_ref().iter() {
            draft.read(&mut cx, key, value);
        }
        let policy = draft.finish(&mut cx);
        (
            policy,
            diags
                .iter()
                .map(|d| format!("{}|{}", d.message(), d.help().unwrap_or("")))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_the_model_defaults() {
        assert_eq!(read_policy(""), (Policy::default(), vec![]));
    }

    #[test]
    fn reads_every_key() {
        let (p, msgs) = read_policy(
            "restart = \"always\"\nsuccess_codes = [0, 3]\nstart_secs = \"2s\"\nrestart_delay = \"1s\"\n\
             restart_delay_max = \"1m\"\nmax_restarts = 0\nstop_signal = \"INT\"\nstop_timeout = \"500ms\"",
        );
        assert!(msgs.is_empty(), "{msgs:?}");
        let expected = Policy {
            restart: RestartPolicy::Always,
            success_codes: vec![0, 3],
            start_secs: Duration::from_secs(2),
            restart_delay: Duration::from_secs(1),
            restart_delay_max: Duration::from_secs(60),
            max_restarts: 0,
            stop_signal: Signal::Int,
            stop_timeout: Duration::from_millis(500),
            ..Policy::default()
        };
        assert_eq!(p, expected);
    }

    #[test]
    fn rejects_bad_success_codes() {
        assert_eq!(
            read_policy("success_codes = []").1[0],
            "`success_codes` cannot be empty|list the exit codes that count as success, e.g. `success_codes = [0]`"
        );
        let (_, msgs) = read_policy("success_codes = [0, 256, -1]");
        assert_eq!(
            msgs,
            [
                "`success_codes[1]` is too large: 256 (the maximum is 255)|",
                "`success_codes[2]` cannot be negative, found -1|",
            ]
        );
    }

    #[test]
    fn rejects_unknown_signals_with_a_suggestion() {
        let (p, msgs) = read_policy("stop_signal = \"SIGTREM\"");
        assert_eq!(p.stop_signal, Signal::Term);
        assert!(
            msgs[0].starts_with(
                "unknown signal `SIGTREM` for `stop_signal`; expected one of `SIGHUP`, `SIGINT`"
            ),
            "{msgs:?}"
        );
        assert!(msgs[0].ends_with("|did you mean `SIGTERM`?"), "{msgs:?}");
        assert!(read_policy("stop_signal = \"term\"").1[0].ends_with("|did you mean `TERM`?"));
    }

    #[test]
    fn restart_delay_max_must_not_be_below_restart_delay() {
        let (_, msgs) = read_policy("restart_delay = \"2s\"\nrestart_delay_max = \"1s\"");
        assert!(
            msgs[0].starts_with("`restart_delay_max` (1s) is shorter than `restart_delay` (2s)|")
        );
        let (_, msgs) = read_policy("restart_delay = \"1m\"");
        assert!(msgs[0].starts_with(
            "`restart_delay` (1m) is longer than the default `restart_delay_max` (30s)|"
        ));
        let (_, msgs) = read_policy("restart_delay_max = \"10ms\"");
        assert!(msgs[0].starts_with(
            "`restart_delay_max` (10ms) is shorter than the default `restart_delay` (100ms)|"
        ));
        assert!(
            read_policy("restart_delay = \"1s\"\nrestart_delay_max = \"1s\"")
                .1
                .is_empty()
        );
    }
}
