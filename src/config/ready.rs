//! `ready`, `ready_timeout` and `health` of a group: when a started child
//! counts as running, and how a running child is checked. Part of the
//! group's [`Policy`](super::model::Policy): a reload takes them in place.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use super::fields::{Cx, Key, Value, shown};
use super::model::{HealthCheck, Readiness};
use super::suggest::{did_you_mean, one_of};

pub(crate) const KEYS: [&str; 3] = ["ready", "ready_timeout", "health"];

/// The keys of a `health` table.
const HEALTH_KEYS: [&str; 4] = ["command", "interval", "timeout", "retries"];

/// The kinds of `ready`: two strings and two one-key tables.
const KINDS: [&str; 4] = ["started", "notify", "tcp", "command"];

/// The shortest `ready_timeout` and health `interval`: a probe runs every
/// 100 ms, and no check may run back to back.
pub(crate) const MIN_PROBE_PERIOD: Duration = Duration::from_millis(100);

/// At most this many consecutive failed health checks before a restart.
const MAX_RETRIES: u32 = 1000;

/// Reads one of [`KEYS`] into `ready`, `ready_timeout` or `health`.
pub(crate) fn read(
    cx: &mut Cx<'_>,
    key: &Key<'_>,
    value: &Value<'_>,
    (ready, ready_timeout, health): (&mut Readiness, &mut Duration, &mut Option<HealthCheck>),
) {
    match key.get_ref().as_ref() {
        "ready" => {
            if let Some(r) = readiness(cx, value) {
                *ready = r;
            }
        }
        "ready_timeout" => {
            if let Some(d) = at_least(cx, "ready_timeout", value, MIN_PROBE_PERIOD) {
                *ready_timeout = d;
            }
        }
        _ => *health = health_check(cx, value),
    }
}

/// A duration of at least `min`.
fn at_least(cx: &mut Cx<'_>, label: &str, value: &Value<'_>, min: Duration) -> Option<Duration> {
    let d = cx.duration(label, value)?;
    if d < min {
        let message = format!(
            "{} is too short: `{}` (the minimum is {}ms)",
            cx.key(label),
            shown(cx.raw(value)),
            min.as_millis()
        );
        cx.error(value.span(), message, None);
        return None;
    }
    Some(d)
}

fn readiness(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<Readiness> {
    const HELP: &str = "use `ready = \"started\"`, `ready = \"notify\"`, \
                        `ready = { tcp = \"127.0.0.1:8080\" }` or `ready = { command = [\"prog\", \"arg\"] }`";
    if let Some(s) = value.get_ref().as_str() {
        return match s {
            "started" => Some(Readiness::Started),
            "notify" => Some(Readiness::Notify),
            _ => {
                let message = format!(
                    "unknown readiness `{}`{}; expected one of {}",
                    shown(s),
                    cx.place(),
                    one_of(&KINDS)
                );
                let help =
                    did_you_mean(s, &["started", "notify"]).or_else(|| Some(HELP.to_string()));
                cx.error(value.span(), message, help);
                None
            }
        };
    }
    let Some(table) = value.get_ref().as_table() else {
        cx.type_error(
            "ready",
            value,
            "\"started\", \"notify\", or a table `{ tcp = ... }` / `{ command = [...] }`",
        );
        return None;
    };
    let mut entries = table.iter();
    let (Some((key, inner)), None) = (entries.next(), entries.next()) else {
        let message = format!(
            "{} must be a table with exactly one key, `tcp` or `command`",
            cx.key("ready")
        );
        cx.error(value.span(), message, Some(HELP.into()));
        return None;
    };
    match key.get_ref().as_ref() {
        "tcp" => tcp_address(cx, inner).map(Readiness::Tcp),
        "command" => command(cx, "ready.command", inner).map(Readiness::Command),
        other => {
            let message = format!("unknown readiness `{}`{}", shown(other), cx.place());
            let help = did_you_mean(other, &["tcp", "command"]).or_else(|| Some(HELP.into()));
            cx.error(key.span(), message, help);
            None
        }
    }
}

/// `HOST:PORT` with an IP literal (`[::1]:80` for IPv6) or `localhost`:
/// no name is looked up, since a reload reads the config on the event loop.
fn tcp_address(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<SocketAddr> {
    let s = cx.string("ready.tcp", value)?;
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() != 0 {
            return Some(addr);
        }
    } else if let Some(port) = s.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
        && port != 0
    {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    let message = format!("{} is not HOST:PORT: `{}`", cx.key("ready.tcp"), shown(s));
    let help = "give an IP address or `localhost` and a port from 1 to 65535, e.g. \
                `127.0.0.1:8080` or `[::1]:8080` (host names are not looked up)";
    cx.error(value.span(), message, Some(help.into()));
    None
}

/// A probe's argv: a non-empty array of strings, none empty at [0], no NUL.
fn command(cx: &mut Cx<'_>, label: &str, value: &Value<'_>) -> Option<Vec<OsString>> {
    let args = cx.strings(label, value)?;
    let Some((program, _)) = args.first() else {
        let message = format!("{} cannot be empty", cx.key(label));
        let help = "give the program and its arguments, e.g. `[\"curl\", \"-sf\", \"http://127.0.0.1:8080/health\"]`";
        cx.error(value.span(), message, Some(help.into()));
        return None;
    };
    if program.is_empty() {
        let message = format!(
            "{} cannot be empty: it is the program to run",
            cx.key(&format!("{label}[0]"))
        );
        cx.error(args[0].1.clone(), message, None);
        return None;
    }
    let mut ok = true;
    for (i, (arg, span)) in args.iter().enumerate() {
        let label = format!("{label}[{i}]");
        if arg.contains('\0') {
            let message = format!("{} cannot contain a NUL byte", cx.key(&label));
            cx.error(span.clone(), message, None);
            ok = false;
        } else {
            ok &= cx.fits_exec(&label, arg.len(), span.clone());
        }
    }
    ok.then(|| args.iter().map(|(a, _)| OsString::from(a)).collect())
}

/// `health = { command = [...], interval, timeout, retries }`.
fn health_check(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<HealthCheck> {
    let table = cx.table("health", value)?;
    let mut check = HealthCheck {
        command: Vec::new(),
        ..HealthCheck::default()
    };
    let mut command_span: Option<Range<usize>> = None;
    let mut ok = true;
    for (key, inner) in table.iter() {
        match key.get_ref().as_ref() {
            "command" => {
                command_span = Some(inner.span());
                match command(cx, "health.command", inner) {
                    Some(argv) => check.command = argv,
                    None => ok = false,
                }
            }
            "interval" => match at_least(cx, "health.interval", inner, MIN_PROBE_PERIOD) {
                Some(d) => check.interval = d,
                None => ok = false,
            },
            "timeout" => match at_least(cx, "health.timeout", inner, Duration::from_millis(10)) {
                Some(d) => check.timeout = d,
                None => ok = false,
            },
            "retries" => match cx.u32("health.retries", inner, 1, MAX_RETRIES) {
                Some(n) => check.retries = n,
                None => ok = false,
            },
            _ => {
                let place = format!("in `health`{}", cx.place());
                cx.unknown_key(key, place.trim_end(), &HEALTH_KEYS, None);
                ok = false;
            }
        }
    }
    if command_span.is_none() {
        let message = format!("{} has no `command`", cx.key("health"));
        let help = "add the check to run, e.g. `health = { command = [\"curl\", \"-sf\", \"http://127.0.0.1:8080/health\"] }`";
        cx.error(value.span(), message, Some(help.into()));
        return None;
    }
    ok.then_some(check)
}
