//! Redis URLs: which ones drover takes, and how they are shown.

use std::fmt;

use redis::{ConnectionAddr, IntoConnectionInfo};

/// The schemes a queue's `url` may have.
pub const SCHEMES: [&str; 4] = ["redis", "rediss", "unix", "redis+unix"];

/// A checked Redis URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (with its password): only ever handed to the client.
    url: String,
    /// The URL with its password replaced by `***`: what drover prints.
    shown: String,
    /// The server and database it names, for telling two queues on the same
    /// stream apart from two on different servers.
    server: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password, not even in debug output.
        f.debug_tuple("Target").field(&self.shown).finish()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    /// Checks `url`: a known scheme, a host or socket path, a port number,
    /// a database number. The error says what is wrong, never showing the
    /// password.
    pub fn parse(url: &str) -> Result<Target, String> {
        let shown = redact(url);
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(format!(
                "`{shown}` is not a URL: expected redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///PATH"
            ));
        };
        if !SCHEMES.contains(&scheme) {
            return Err(format!(
                "unknown scheme `{scheme}` in `{shown}`: expected one of redis, rediss, unix, redis+unix"
            ));
        }
        if let Some(problem) = authority_problem(scheme, &url[scheme.len() + 3..]) {
            return Err(format!("`{shown}`: {problem}"));
        }
        let info = url.into_connection_info().map_err(|e| {
            format!(
                "`{shown}` is not a valid Redis URL: {}",
                redact(&e.to_string())
            )
        })?;
        let server = match info.addr() {
            ConnectionAddr::Tcp(host, port) => format!("tcp {host}:{port}"),
            ConnectionAddr::TcpTls { host, port, .. } => format!("tcp {host}:{port}"),
            ConnectionAddr::Unix(path) => {
                if path.as_os_str().is_empty() {
                    return Err(format!("`{shown}` names no socket path"));
                }
                format!("unix {}", path.display())
            }
            // The client knows more kinds than drover builds it for.
            #[allow(unreachable_patterns)]
            _ => return Err(format!("`{shown}`: this kind of address is not supported")),
        };
        if let ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } = info.addr()
            && host.is_empty()
        {
            return Err(format!("`{shown}` names no host"));
        }
        let db = info.redis_settings().db();
        Ok(Target {
            url: url.to_owned(),
            shown,
            server: format!("{server} db {db}"),
        })
    }

    /// The URL with its password (for the client only).
    pub fn secret(&self) -> &str {
        &self.url
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The server and database (no user, no password).
    pub fn server(&self) -> &str {
        &self.server
    }
}

/// What is wrong with the part after `scheme://`, said plainly (the
/// client's own parser only says that it failed).
fn authority_problem(scheme: &str, rest: &str) -> Option<String> {
    if scheme.contains("unix") {
        return (!rest.starts_with('/'))
            .then(|| "a Unix socket URL needs an absolute path: unix:///PATH".to_owned());
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((_, after)) => after.strip_prefix(':'),
            None => return Some("an IPv6 address needs a closing `]`".into()),
        }
    } else {
        hostport.split_once(':').map(|(_, p)| p)
    };
    if hostport.is_empty() || hostport.starts_with(':') {
        return Some("no host".into());
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Some(format!("`{port}` is not a port number (1 to 65535)"));
    }
    let path = rest[end..].split(['?', '#']).next().unwrap_or("");
    let db = path.trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Some(format!("`{db}` is not a database number"));
    }
    None
}

/// `text` with the password of any URL in it replaced by `***`: the part
/// between `user:` and the last `@` of the authority.
pub fn redact(text: &str) -> String {
    hide(text, |_| "***".into())
}

/// [`redact`] that keeps every column in place: each character of a
/// password becomes `*` (for a quoted source line with a caret under it).
pub fn mask(text: &str) -> String {
    hide(text, |pw| "*".repeat(pw.chars().count()))
}

fn hide(text: &str, cover: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail.find(['/', '?', '#', ' ']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str(&cover(&userinfo[colon + 1..]));
                    }
                    // `redis://password@host` is a password alone.
                    None if !userinfo.is_empty() => out.push_str(&cover(userinfo)),
                    None => {}
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://alice:s3cret@db.example:6380/2"),
            "redis://alice:***@db.example:6380/2"
        );
        assert_eq!(redact("rediss://:pw@h/0"), "rediss://:***@h/0");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        assert_eq!(redact("unix:///run/redis.sock"), "unix:///run/redis.sock");
        assert_eq!(mask("url = \"redis://u:pw@h\""), "url = \"redis://u:**@h\"");
        assert_eq!(
            redact("cannot reach redis://u:p@h:1/0 and redis://v:q@g"),
            "cannot reach redis://u:***@h:1/0 and redis://v:***@g"
        );
        let t = Target::parse("redis://alice:s3cret@db.example:6380/2").unwrap();
        assert!(!format!("{t:?} {t}").contains("s3cret"));
        assert_eq!(t.server(), "tcp db.example:6380 db 2");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let e = Target::parse("http://localhost:6379").unwrap_err();
        assert!(e.contains("unknown scheme `http`"), "{e}");
        let e = Target::parse("localhost:6379").unwrap_err();
        assert!(e.contains("is not a URL"), "{e}");
        let e = Target::parse("redis://u:pw@host:notaport").unwrap_err();
        assert!(
            e.contains("`notaport` is not a port number") && !e.contains("pw@"),
            "{e}"
        );
        let e = Target::parse("redis://h:6379/x").unwrap_err();
        assert!(e.contains("`x` is not a database number"), "{e}");
        let e = Target::parse("unix://relative.sock").unwrap_err();
        assert!(e.contains("absolute path"), "{e}");
        assert!(Target::parse("redis://[::1]:6379/0").is_ok());
        assert!(Target::parse("unix:///tmp/r.sock").is_ok());
        assert!(Target::parse("redis://127.0.0.1:6379/0").is_ok());
        assert!(Target::parse("rediss://127.0.0.1/0").is_ok());
    }

    #[test]
    fn the_same_server_is_seen_through_different_spellings_of_credentials() {
        let a = Target::parse("redis://a:x@h:1/0").unwrap();
        let b = Target::parse("redis://h:1/0").unwrap();
        let c = Target::parse("redis://h:1/1").unwrap();
        assert_eq!(a.server(), b.server());
        assert_ne!(a.server(), c.server());
    }
}
