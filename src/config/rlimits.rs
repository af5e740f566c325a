//! `rlimits = { nofile = 4096, core = 0, ... }`: per-group resource limits,
//! each setting the soft and the hard limit (as systemd's `LimitNOFILE=N`).
//!
//! What can be known before a start is checked here: the names, the values,
//! `nofile` against the kernel's `fs.nr_open`, and — when drover does not
//! run as root — a hard limit above drover's own, which only root may
//! raise.

use std::collections::BTreeMap;

use super::fields::{Cx, Value, shown};
use super::host::Host;
use super::suggest::{did_you_mean, one_of};
use toml::de::DeValue;

/// A resource `rlimits` can limit: Linux's `RLIMIT_*`, named in lowercase
/// without the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

/// Every resource with its name, in name order.
pub(crate) const RESOURCES: [(&str, Resource); 16] = [
    ("as", Resource::As),
    ("core", Resource::Core),
    ("cpu", Resource::Cpu),
    ("data", Resource::Data),
    ("fsize", Resource::Fsize),
    ("locks", Resource::Locks),
    ("memlock", Resource::Memlock),
    ("msgqueue", Resource::Msgqueue),
    ("nice", Resource::Nice),
    ("nofile", Resource::Nofile),
    ("nproc", Resource::Nproc),
    ("rss", Resource::Rss),
    ("rtprio", Resource::Rtprio),
    ("rttime", Resource::Rttime),
    ("sigpending", Resource::Sigpending),
    ("stack", Resource::Stack),
];

impl Resource {
    /// The name in `rlimits`.
    pub fn as_str(self) -> &'static str {
        RESOURCES
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("", |(name, _)| name)
    }

    /// The `RLIMIT_*` number.
    pub fn raw(self) -> i32 {
        (match self {
            Resource::As => libc::RLIMIT_AS,
            Resource::Core => libc::RLIMIT_CORE,
            Resource::Cpu => libc::RLIMIT_CPU,
            Resource::Data => libc::RLIMIT_DATA,
            Resource::Fsize => libc::RLIMIT_FSIZE,
            Resource::Locks => libc::RLIMIT_LOCKS,
            Resource::Memlock => libc::RLIMIT_MEMLOCK,
            Resource::Msgqueue => libc::RLIMIT_MSGQUEUE,
            Resource::Nice => libc::RLIMIT_NICE,
            Resource::Nofile => libc::RLIMIT_NOFILE,
            Resource::Nproc => libc::RLIMIT_NPROC,
            Resource::Rss => libc::RLIMIT_RSS,
            Resource::Rtprio => libc::RLIMIT_RTPRIO,
            Resource::Rttime => libc::RLIMIT_RTTIME,
            Resource::Sigpending => libc::RLIMIT_SIGPENDING,
            Resource::Stack => libc::RLIMIT_STACK,
        }) as i32
    }
}

/// One limit: a number, or `"infinity"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Value(u64),
    Infinity,
}

impl Limit {
    /// As `rlim_t` (`RLIM_INFINITY` for infinity).
    pub fn raw(self) -> u64 {
        match self {
            Limit::Value(n) => n,
            Limit::Infinity => libc::RLIM_INFINITY,
        }
    }
}

/// `rlimits`: a table of resource names to limits.
pub(crate) fn read(
    cx: &mut Cx<'_>,
    host: &Host,
    value: &Value<'_>,
) -> Option<BTreeMap<Resource, Limit>> {
    let table = cx.table("rlimits", value)?;
    let names: Vec<&str> = RESOURCES.iter().map(|(name, _)| *name).collect();
    let mut limits = BTreeMap::new();
    let mut complete = true;
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let Some(&(_, resource)) = RESOURCES.iter().find(|(n, _)| *n == name) else {
            let message = format!(
                "unknown resource `{}` in `rlimits`{}",
                shown(name),
                cx.place()
            );
            let help = did_you_mean(name, &names)
                .unwrap_or_else(|| format!("expected one of {}", one_of(&names)));
            cx.error(key.span(), message, Some(help));
            complete = false;
            continue;
        };
        match limit(cx, host, resource, value) {
            Some(limit) => {
                limits.insert(resource, limit);
            }
            None => complete = false,
        }
    }
    complete.then_some(limits)
}

/// One resource's value: a non-negative integer or `"infinity"`, checked
/// against what the host allows.
fn limit(cx: &mut Cx<'_>, host: &Host, resource: Resource, value: &Value<'_>) -> Option<Limit> {
    let label = format!("rlimits.{}", resource.as_str());
    let limit = match value.get_ref() {
        DeValue::String(s) if s == "infinity" => Limit::Infinity,
        DeValue::Integer(_) => Limit::Value(cx.int(&label, value, 0, i64::MAX)? as u64),
        _ => {
            cx.type_error(&label, value, "a non-negative integer or \"infinity\"");
            return None;
        }
    };
    if resource == Resource::Nofile {
        // The kernel refuses an open-file limit above fs.nr_open, and
        // infinity is always above it.
        if let Some(nr_open) = host.nr_open.filter(|&max| limit.raw() > max) {
            let message = format!(
                "{} is {}, above the kernel's maximum of {nr_open} open files (fs.nr_open)",
                cx.key(&label),
                shown(cx.raw(value))
            );
            let help = format!("use a number of at most {nr_open}, or raise fs.nr_open");
            cx.error(value.span(), message, Some(help));
            return None;
        }
    }
    if !host.is_root {
        let hard = host.hard_limits.iter().find(|(r, _)| *r == resource);
        if let Some(&(_, hard)) = hard.filter(|(_, hard)| limit.raw() > *hard) {
            let shown_hard = match hard {
                libc::RLIM_INFINITY => "infinity".to_owned(),
                n => n.to_string(),
            };
            let message = format!(
                "{} is {}, above drover's own hard limit ({shown_hard}), which only root can raise",
                cx.key(&label),
                shown(cx.raw(value))
            );
            let help = format!("use at most {shown_hard}, or run drover as root");
            cx.error(value.span(), message, Some(help));
            return None;
        }
    }
    Some(limit)
}

/// drover's own hard limits, for [`Host`].
pub(crate) fn hard_limits() -> Vec<(Resource, u64)> {
    RESOURCES
        .iter()
        .filter_map(|&(_, resource)| {
            let (_, hard) = nix::sys::resource::getrlimit(nix_resource(resource)).ok()?;
            Some((resource, hard))
        })
        .collect()
}

/// The kernel's `fs.nr_open`: the most open files a limit may allow.
pub(crate) fn nr_open() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?;
    text.trim().parse().ok()
}

fn nix_resource(resource: Resource) -> nix::sys::resource::Resource {
    use nix::sys::resource::Resource as R;
    match resource {
        Resource::As => R::RLIMIT_AS,
        Resource::Core => R::RLIMIT_CORE,
        Resource::Cpu => R::RLIMIT_CPU,
        Resource::Data => R::RLIMIT_DATA,
        Resource::Fsize => R::RLIMIT_FSIZE,
        Resource::Locks => R::RLIMIT_LOCKS,
        Resource::Memlock => R::RLIMIT_MEMLOCK,
        Resource::Msgqueue => R::RLIMIT_MSGQUEUE,
        Resource::Nice => R::RLIMIT_NICE,
        Resource::Nofile => R::RLIMIT_NOFILE,
        Resource::Nproc => R::RLIMIT_NPROC,
        Resource::Rss => R::RLIMIT_RSS,
        Resource::Rtprio => R::RLIMIT_RTPRIO,
        Resource::Rttime => R::RLIMIT_RTTIME,
        Resource::Sigpending => R::RLIMIT_SIGPENDING,
        Resource::Stack => R::RLIMIT_STACK,
    }
}
