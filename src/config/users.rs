//! `user` and `group`: who a group's children run as, resolved from the
//! user and group databases (`getpwnam`, `getgrnam`, `getgrouplist`) when
//! the config is loaded, so that a typo is a located error and not a start
//! that fails later.

use std::ffi::CString;
use std::ops::Range;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};
use toml::de::DeValue;

use super::fields::{Cx, Value, shown};
use super::host::Host;
use super::model::RunAs;

/// A `user` or `group` value: a name, or a number (an integer, or a string
/// of digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Id {
    Name(String),
    Number(u32),
}

/// Reads `user` or `group` (`label`), with the span of its value.
pub(crate) fn id(cx: &mut Cx<'_>, label: &str, value: &Value<'_>) -> Option<(Id, Range<usize>)> {
    let id = match value.get_ref() {
        // u32::MAX is (uid_t)-1, "no change" to the set*id calls.
        DeValue::Integer(_) => Id::Number(cx.int(label, value, 0, i64::from(u32::MAX) - 1)? as u32),
        DeValue::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<u32>() {
                Ok(n) if n != u32::MAX => Id::Number(n),
                _ => {
                    let message = format!("{} `{}` is not a valid id", cx.key(label), shown(s));
                    cx.error(value.span(), message, None);
                    return None;
                }
            }
        }
        DeValue::String(s) if !s.is_empty() && !s.contains('\0') => Id::Name(s.to_string()),
        DeValue::String(_) => {
            let message = format!("{} cannot be empty or contain a NUL byte", cx.key(label));
            cx.error(value.span(), message, None);
            return None;
        }
        _ => {
            cx.type_error(label, value, "a name or a numeric id");
            return None;
        }
    };
    Some((id, value.span()))
}

/// Resolves `user` and `group` into who the children run as. `group`
/// without `user` is an error (children run as drover does).
pub(crate) fn resolve(
    cx: &mut Cx<'_>,
    host: &Host,
    user: Option<(Id, Range<usize>)>,
    group: Option<(Id, Range<usize>)>,
) -> Option<RunAs> {
    let Some((user, user_span)) = user else {
        if let Some((_, span)) = group {
            let message = format!("`group` is set without `user`{}", cx.place());
            let help = "set `user` too: without it children run as drover's own user and group";
            cx.error(span, message, Some(help.into()));
        }
        return None;
    };
    let entry = match &user {
        Id::Name(name) => User::from_name(name),
        Id::Number(uid) => User::from_uid(Uid::from_raw(*uid)),
    };
    let entry = match entry {
        Ok(entry) => entry,
        Err(e) => {
            let message = format!("cannot look up {}{}: {e}", cx.key("user"), cx.place());
            cx.error(user_span, message, None);
            return None;
        }
    };
    let gid = match group {
        Some((group, span)) => group_id(cx, &group, span)?,
        None => match &entry {
            Some(entry) => entry.gid.as_raw(),
            None => {
                let Id::Number(uid) = user else {
                    unknown_user(cx, &user, user_span);
                    return None;
                };
                let message = format!("uid {uid} has no entry in the user database{}", cx.place());
                let help = "set `group` too: without a user entry there is no primary group";
                cx.error(user_span, message, Some(help.into()));
                return None;
            }
        },
    };
    let run_as = match entry {
        Some(entry) => {
            let name = CString::new(entry.name.as_bytes()).ok()?;
            let groups = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
                .unwrap_or_else(|_| vec![gid]);
            RunAs {
                name: entry.name,
                uid: entry.uid.as_raw(),
                gid,
                groups,
                home: entry.dir,
                switch: true,
            }
        }
        // A numeric uid without a user entry (allowed, as systemd's
        // `User=` does): no name but the number, no home, no groups.
        None => {
            let Id::Number(uid) = user else {
                unknown_user(cx, &user, user_span);
                return None;
            };
            RunAs {
                name: uid.to_string(),
                uid,
                gid,
                groups: vec![gid],
                home: PathBuf::from("/"),
                switch: true,
            }
        }
    };
    if host.is_root {
        return Some(run_as);
    }
    if run_as.uid == host.uid && run_as.gid == host.gid {
        return Some(RunAs {
            switch: false,
            ..run_as
        });
    }
    let message = format!(
        "cannot run group children as user `{}`{}: only drover running as root can switch users",
        shown(&run_as.name),
        cx.place()
    );
    let help = format!(
        "run drover as root, or remove `user` (children then run as drover's own uid {})",
        host.uid
    );
    cx.error(user_span, message, Some(help));
    None
}

fn unknown_user(cx: &mut Cx<'_>, user: &Id, span: Range<usize>) {
    let name = match user {
        Id::Name(name) => name.clone(),
        Id::Number(n) => n.to_string(),
    };
    let message = format!("unknown user `{}`{}", shown(&name), cx.place());
    let help = "a user name from the user database (/etc/passwd), or a numeric uid";
    cx.error(span, message, Some(help.into()));
}

/// `group` as a gid: a name must exist; a number need not.
fn group_id(cx: &mut Cx<'_>, group: &Id, span: Range<usize>) -> Option<u32> {
    let name = match group {
        Id::Number(gid) => return Some(*gid),
        Id::Name(name) => name,
    };
    match Group::from_name(name) {
        Ok(Some(entry)) => Some(entry.gid.as_raw()),
        Ok(None) => {
            let message = format!("unknown group `{}`{}", shown(name), cx.place());
            let help = "a group name from the group database (/etc/group), or a numeric gid";
            cx.error(span, message, Some(help.into()));
            None
        }
        Err(e) => {
            let message = format!("cannot look up {}{}: {e}", cx.key("group"), cx.place());
            cx.error(span, message, None);
            None
        }
    }
}
