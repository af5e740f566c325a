//! `[supervisor]`: settings of drover itself.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::fields::Cx;
use super::limits::{MAX_DEAD_LETTER_BYTES, MIN_DEAD_LETTER_BYTES};
use super::model::{DEFAULT_DEAD_LETTER_MAX_BYTES, DEFAULT_LOG_LINES, LogFormat, MAX_LOG_LINES};
use super::source::resolve;

pub(crate) const KEYS: [&str; 8] = [
    "control_socket",
    "log_format",
    "state_dir",
    "dead_letter_max_bytes",
    "log_lines",
    "log_timestamps",
    "metrics",
    "exit_on_fatal",
];

const LOG_FORMATS: [(&str, LogFormat); 2] = [("text", LogFormat::Text), ("json", LogFormat::Json)];

/// A `[supervisor]` table as read from one file; `state_dir` stays unset
/// when not given, because its default depends on the host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SupervisorDraft {
    /// The span of the table's key (`supervisor` in the header).
    pub span: Range<usize>,
    pub control_socket: Option<PathBuf>,
    pub log_format: LogFormat,
    pub state_dir: Option<PathBuf>,
    pub dead_letter_max_bytes: u64,
    pub log_lines: u32,
    pub log_timestamps: bool,
    pub metrics: Option<std::net::SocketAddr>,
    pub exit_on_fatal: bool,
}

/// Reads `[supervisor]`; `span` is where the table is named.
pub(crate) fn read(cx: &mut Cx<'_>, span: Range<usize>, table: &DeTable<'_>) -> SupervisorDraft {
    let mut draft = SupervisorDraft {
        span,
        control_socket: None,
        log_format: LogFormat::default(),
        state_dir: None,
        dead_letter_max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES,
        log_lines: DEFAULT_LOG_LINES,
        log_timestamps: false,
        metrics: None,
        exit_on_fatal: false,
    };
    cx.set_table(Some("[supervisor]".into()));
    for (key, value) in table.iter() {
        match key.get_ref().as_ref() {
            "control_socket" => draft.control_socket = path(cx, "control_socket", value),
            "state_dir" => draft.state_dir = path(cx, "state_dir", value),
            "log_format" => {
                let format = cx.choice("log_format", value, "log format", &LOG_FORMATS);
                draft.log_format = format.unwrap_or_default();
            }
            "dead_letter_max_bytes" => {
                let (min, max) = (MIN_DEAD_LETTER_BYTES, MAX_DEAD_LETTER_BYTES);
                let bytes = cx.size("dead_letter_max_bytes", value, min, max);
                draft.dead_letter_max_bytes = bytes.unwrap_or(draft.dead_letter_max_bytes);
            }
            "metrics" => draft.metrics = metrics(cx, value),
            "log_timestamps" => {
                let on = cx.bool("log_timestamps", value);
                draft.log_timestamps = on.unwrap_or_default();
            }
            "log_lines" => {
                let lines = cx.u32("log_lines", value, 0, MAX_LOG_LINES);
                draft.log_lines = lines.unwrap_or(draft.log_lines);
            }
            "exit_on_fatal" => {
                draft.exit_on_fatal = cx.bool("exit_on_fatal", value).unwrap_or_default();
            }
            _ => cx.unknown_key(key, "in [supervisor]", &KEYS, None),
        }
    }
    cx.set_table(None);
    draft
}

/// `metrics = "HOST:PORT"`: an IP address (IPv6 in brackets) or
/// `localhost`, and a port (0: any free one). No DNS: configs are read by
/// the event loop too.
fn metrics(cx: &mut Cx<'_>, value: &super::fields::Value<'_>) -> Option<std::net::SocketAddr> {
    let s = cx.string("metrics", value)?;
    let parsed = s.parse::<std::net::SocketAddr>().ok().or_else(|| {
        let port = s.strip_prefix("localhost:")?.parse::<u16>().ok()?;
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    });
    if parsed.is_none() {
        let message = format!(
            "invalid address `{}` for {}: expected HOST:PORT with an IP address or localhost",
            super::fields::shown(s),
            cx.key("metrics")
        );
        let help = "e.g. \"127.0.0.1:9898\", \"0.0.0.0:9898\" or \"[::1]:9898\"".to_owned();
        cx.error(value.span(), message, Some(help));
    }
    parsed
}

/// A non-empty path, made absolute against the file's directory.
fn path(cx: &mut Cx<'_>, label: &str, value: &super::fields::Value<'_>) -> Option<PathBuf> {
    let s = cx.string(label, value)?;
    if s.is_empty() || s.contains('\0') {
        let problem = if s.is_empty() {
            "cannot be empty"
        } else {
            "cannot contain a NUL byte"
        };
        let message = format!("{} {problem}", cx.key(label));
        cx.error(value.span(), message, None);
        return None;
    }
    let path = resolve(&cx.file.dir, Path::new(s));
    let len = path.as_os_str().len();
    cx.fits_exec(label, len, value.span()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::Diagnostic;
    use crate::config::source::SourceFile;

    fn read_str(text: &str) -> (SupervisorDraft, Vec<Diagnostic>) {
        let file = SourceFile::new(PathBuf::from("/etc/drover/a.toml"), text.to_owned());
        let doc = DeTable::parse(&file.text).unwrap();
        let value = doc.get_ref().get("supervisor").unwrap();
        let table = value.get_ref().as_table().unwrap();
        let mut diags = Vec::new();
        let draft = read(&mut Cx::new(&file, &mut diags), value.span(), table);
        (draft, diags)
    }

    #[test]
    fn resolves_paths_against_the_file() {
        let (draft, diags) = read_str(
            "[supervisor]\ncontrol_socket = \"run/d.sock\"\nstate_dir = \"/var/d\"\nlog_format = \"json\"\n\
             dead_letter_max_bytes = \"64MiB\"",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(
            draft.control_socket,
            Some(PathBuf::from("/etc/drover/run/d.sock"))
        );
        assert_eq!(draft.state_dir, Some(PathBuf::from("/var/d")));
        assert_eq!(draft.log_format, LogFormat::Json);
        assert_eq!(draft.dead_letter_max_bytes, 64 << 20);
        assert!(!draft.exit_on_fatal);
    }

    #[test]
    fn reads_exit_on_fatal() {
        let (draft, diags) = read_str("[supervisor]\nexit_on_fatal = true");
        assert!(diags.is_empty(), "{diags:?}");
        assert!(draft.exit_on_fatal);
        let (_, diags) = read_str("[supervisor]\nexit_on_fatal = \"yes\"");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0].message().contains("exit_on_fatal"), "{diags:?}");
    }

    #[test]
    fn defaults_leave_host_dependent_values_unset() {
        let (draft, diags) = read_str("[supervisor]");
        assert!(diags.is_empty());
        assert_eq!(
            (draft.control_socket, draft.state_dir, draft.log_format),
            (None, None, LogFormat::Text)
        );
        assert_eq!(draft.dead_letter_max_bytes, DEFAULT_DEAD_LETTER_MAX_BYTES);
    }

    #[test]
    fn reports_every_bad_key() {
        let (_, diags) =
            read_str("[supervisor]\nlog_format = \"xml\"\nstate_dir = \"\"\nsocket = \"x\"");
        let messages: Vec<&str> = diags.iter().map(Diagnostic::message).collect();
        assert_eq!(
            messages,
            [
                "unknown log format `xml` in [supervisor]; expected one of `text`, `json`",
                "unknown key `socket` in [supervisor]",
                "`state_dir` in [supervisor] cannot be empty",
            ]
        );
    }
}
