//! `sockets = [{ name, listen, mode }]` of a group: listening sockets drover
//! binds and passes to the group's children (systemd's socket activation).
//!
//! Addresses are read without DNS (configs are also loaded by the event
//! loop on reload): an IP literal or `localhost`. A unix socket's path must
//! be absolute, as systemd's `ListenStream=` requires: a socket is an
//! address other programs connect to, so it is named the same way from
//! everywhere.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use super::fields::{Cx, Value, shown};
use super::model::{ListenAddr, SocketSpec};

/// The keys of one entry of `sockets`.
const ENTRY_KEYS: [&str; 3] = ["name", "listen", "mode"];

/// systemd's bound on one `LISTEN_FDNAMES` entry.
const MAX_SOCKET_NAME: usize = 255;

/// `sun_path` holds 108 bytes, NUL included.
const MAX_UNIX_PATH: usize = 107;

/// The most sockets one group may have: with stdio and queue fds, a start
/// stays within the spawn path's 64 fds.
pub(crate) const MAX_SOCKETS: usize = 32;

/// A read `sockets` entry, with the span of its `listen` value (for errors
/// about the same address elsewhere).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SocketDraft {
    pub spec: SocketSpec,
    pub span: Range<usize>,
}

/// Reads `sockets`: every entry checked, names and addresses unique.
pub(crate) fn read(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<Vec<SocketDraft>> {
    let items = cx.array("sockets", value, "an array of tables")?;
    if !cx.within(value.span(), "sockets", items.len(), "sockets", MAX_SOCKETS) {
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut complete = true;
    let (mut names, mut addrs) = (HashSet::new(), HashSet::new());
    for (i, item) in items.iter().enumerate() {
        let Some(draft) = entry(cx, i, item) else {
            complete = false;
            continue;
        };
        if !names.insert(draft.spec.name.clone()) {
            let message = format!(
                "socket name `{}` is used twice in {}",
                shown(&draft.spec.name),
                cx.key("sockets")
            );
            let help = "each socket of a group needs its own name (LISTEN_FDNAMES)";
            cx.error(item.span(), message, Some(help.into()));
            complete = false;
            continue;
        }
        if !addrs.insert(draft.spec.listen.clone()) {
            let message = format!(
                "address `{}` is listed twice in {}",
                draft.spec.listen,
                cx.key("sockets")
            );
            cx.error(
                draft.span.clone(),
                message,
                Some("remove one of them".into()),
            );
            complete = false;
            continue;
        }
        out.push(draft);
    }
    complete.then_some(out)
}

/// One `{ name, listen, mode }` table.
fn entry(cx: &mut Cx<'_>, i: usize, item: &Value<'_>) -> Option<SocketDraft> {
    let label = format!("sockets[{i}]");
    let table = cx.table(&label, item)?;
    let place = format!("in `{label}`{}", cx.place());
    let (mut name, mut listen, mut mode) = (None, None, None);
    let mut complete = true;
    for (key, value) in table.iter() {
        let k: &str = key.get_ref();
        match k {
            "name" => {
                name = socket_name(cx, &format!("{label}.name"), value);
                complete &= name.is_some();
            }
            "listen" => {
                listen = address(cx, &format!("{label}.listen"), value).map(|a| (a, value.span()));
                complete &= listen.is_some();
            }
            "mode" => {
                mode = file_mode(cx, &format!("{label}.mode"), value).map(|m| (m, value.span()));
                complete &= mode.is_some();
            }
            _ => {
                cx.unknown_key(key, &place, &ENTRY_KEYS, None);
                complete = false;
            }
        }
    }
    for (missing, what) in [
        (table.get("name").is_none(), "`name`"),
        (table.get("listen").is_none(), "`listen`"),
    ] {
        if missing {
            let message = format!("{} has no {what}", cx.key(&label));
            let help = "write it as `{ name = \"http\", listen = \"tcp://0.0.0.0:8080\" }`";
            cx.error(item.span(), message, Some(help.into()));
            complete = false;
        }
    }
    if let (Some((ListenAddr::Tcp(_), _)), Some((_, span))) = (&listen, &mode) {
        let message = format!(
            "{} applies only to unix sockets",
            cx.key(&format!("{label}.mode"))
        );
        cx.error(
            span.clone(),
            message,
            Some("remove `mode` for a tcp socket".into()),
        );
        complete = false;
    }
    let ((listen, span), name) = (listen?, name?);
    complete.then_some(SocketDraft {
        spec: SocketSpec {
            name,
            listen,
            mode: mode.map(|(m, _)| m),
        },
        span,
    })
}

/// A `LISTEN_FDNAMES` entry: non-empty, at most 255 bytes, printable ASCII
/// without `:` (the separator).
fn socket_name(cx: &mut Cx<'_>, label: &str, value: &Value<'_>) -> Option<String> {
    let s = cx.string(label, value)?;
    let problem = if s.is_empty() {
        Some("cannot be empty".to_owned())
    } else if s.len() > MAX_SOCKET_NAME {
        Some(format!(
            "is {} bytes long (the maximum is {MAX_SOCKET_NAME})",
            s.len()
        ))
    } else if s.contains(':') {
        Some("cannot contain `:` (it separates the names in LISTEN_FDNAMES)".to_owned())
    } else if !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        Some("must be printable ASCII".to_owned())
    } else {
        None
    };
    match problem {
        None => Some(s.to_owned()),
        Some(problem) => {
            let message = format!("{} {problem}", cx.key(label));
            let help = "children see it in LISTEN_FDNAMES, as systemd's FileDescriptorName=";
            cx.error(value.span(), message, Some(help.into()));
            None
        }
    }
}

/// `tcp://HOST:PORT` or `unix:///path`.
fn address(cx: &mut Cx<'_>, label: &str, value: &Value<'_>) -> Option<ListenAddr> {
    let s = cx.string(label, value)?;
    let parsed = match (s.strip_prefix("tcp://"), s.strip_prefix("unix://")) {
        (Some(rest), _) => tcp(rest).map(ListenAddr::Tcp),
        (_, Some(rest)) => unix(rest).map(ListenAddr::Unix),
        _ => Err((
            "is not a listen address".to_owned(),
            "write `tcp://HOST:PORT` (`tcp://0.0.0.0:8080`, `tcp://[::]:80`) or `unix:///absolute/path`"
                .to_owned(),
        )),
    };
    match parsed {
        Ok(addr) => Some(addr),
        Err((problem, help)) => {
            let message = format!("{} `{}` {problem}", cx.key(label), shown(s));
            cx.error(value.span(), message, Some(help));
            None
        }
    }
}

type Problem = (String, String);

fn tcp(rest: &str) -> Result<SocketAddr, Problem> {
    let addr = match rest.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
            .map_err(|_| {
                (
                    "has an invalid port".to_owned(),
                    "a port is 1 to 65535".to_owned(),
                )
            }),
        None => rest.parse::<SocketAddr>().map_err(|_| {
            (
                "is not `tcp://HOST:PORT` with an IP address or `localhost` as HOST".to_owned(),
                "host names are not looked up; IPv6 goes in brackets: `tcp://[::1]:8080`"
                    .to_owned(),
            )
        }),
    }?;
    if addr.port() == 0 {
        return Err((
            "has port 0".to_owned(),
            "name the port the children should be reached at (1 to 65535)".to_owned(),
        ));
    }
    Ok(addr)
}

fn unix(rest: &str) -> Result<PathBuf, Problem> {
    if !rest.starts_with('/') {
        return Err((
            "is not an absolute path".to_owned(),
            "write three slashes and an absolute path: `unix:///run/app.sock`".to_owned(),
        ));
    }
    if rest.contains('\0') || rest.ends_with('/') {
        return Err((
            "is not a file path".to_owned(),
            "name the socket file: `unix:///run/app.sock`".to_owned(),
        ));
    }
    if rest.len() > MAX_UNIX_PATH {
        return Err((
            format!(
                "has a path of {} bytes (the maximum is {MAX_UNIX_PATH})",
                rest.len()
            ),
            "the kernel limits unix socket paths to 108 bytes; use a shorter path".to_owned(),
        ));
    }
    Ok(PathBuf::from(rest))
}

/// `mode`: an octal string, `"0660"` or `"660"`, at most `7777`.
fn file_mode(cx: &mut Cx<'_>, label: &str, value: &Value<'_>) -> Option<u32> {
    let s = cx.string(label, value)?;
    match u32::from_str_radix(s, 8) {
        Ok(mode) if mode <= 0o7777 && !s.is_empty() && !s.starts_with('+') => Some(mode),
        _ => {
            let message = format!("{} `{}` is not an octal file mode", cx.key(label), shown(s));
            cx.error(
                value.span(),
                message,
                Some("write it like `\"0660\"`".into()),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses() {
        assert_eq!(tcp("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(tcp("[::]:80").unwrap().to_string(), "[::]:80");
        assert_eq!(tcp("localhost:8080").unwrap().to_string(), "127.0.0.1:8080");
        for bad in [
            "example.com:80",
            "0.0.0.0",
            ":::80",
            "1.2.3.4:0",
            "1.2.3.4:70000",
            "localhost:",
        ] {
            assert!(tcp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_paths() {
        assert_eq!(unix("/run/a.sock").unwrap(), PathBuf::from("/run/a.sock"));
        assert!(unix("run/a.sock").is_err());
        assert!(unix("/run/").is_err());
        assert!(unix(&format!("/{}", "a".repeat(107))).is_err());
    }
}
