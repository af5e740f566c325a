//! `[queue.NAME]`: one queue, and references to queues from elsewhere.

use std::ops::Range;
use std::time::Duration;

use toml::de::DeTable;

use super::diag::Diagnostic;
use super::fields::{self, Cx};
use super::limits::{MAX_CAPACITY, MAX_DELIVERIES, MAX_MESSAGE_BYTES, MAX_PREFETCH};
use super::model::{Delivery, QueueSpec, RedisQueue};
use crate::config::names::QueueName;

pub(crate) const KEYS: [&str; 13] = [
    "capacity",
    "max_message_bytes",
    "delivery",
    "prefetch",
    "max_deliveries",
    "dead_letter",
    "ack_timeout",
    "durable",
    "confirm",
    "backend",
    "url",
    "stream",
    "claim_idle",
];

const BACKENDS: [(&str, bool); 2] = [("local", false), ("redis", true)];

/// `claim_idle`'s default and lower bound.
const CLAIM_IDLE: Duration = Duration::from_secs(30);
const MIN_CLAIM_IDLE: Duration = Duration::from_millis(100);

/// The integer keys: each with its default and its bounds.
const COUNTS: [(&str, u32, u32); 4] = [
    ("capacity", 10_000, MAX_CAPACITY),
    ("max_message_bytes", 65_536, MAX_MESSAGE_BYTES),
    ("prefetch", 1, MAX_PREFETCH),
    ("max_deliveries", 5, MAX_DELIVERIES),
];

const DELIVERY: [(&str, Delivery); 2] = [
    ("at-least-once", Delivery::AtLeastOnce),
    ("at-most-once", Delivery::AtMostOnce),
];

/// A queue named somewhere (`inputs`, `outputs`, `dead_letter`), with the
/// span of the name, so that an undefined one can be pointed at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueRef {
    pub name: QueueName,
    pub span: Range<usize>,
}

/// One `[queue.NAME]` table, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueDraft {
    pub spec: QueueSpec,
    /// The span of NAME in the header.
    pub span: Range<usize>,
    pub dead_letter: Option<QueueRef>,
    /// False when `dead_letter` was present but unreadable: the producers of
    /// queues are then not fully known.
    pub wiring_complete: bool,
}

/// Reads a queue's table. Every key is checked even when the name is
/// invalid (`name` is `None`); only a valid name yields a draft.
pub(crate) fn read(
    cx: &mut Cx<'_>,
    name: Option<QueueName>,
    (raw, span): (&str, Range<usize>),
    table: &DeTable<'_>,
) -> Option<QueueDraft> {
    let mut counts = COUNTS.map(|(_, default, _)| default);
    let mut delivery = Delivery::default();
    let mut ack_timeout = Duration::ZERO;
    let mut dead_letter = None;
    let mut wiring_complete = true;
    let mut confirm = None;
    let mut durable = None;
    let mut redis = None;
    let mut url = None;
    let mut url_given = false;
    let mut stream = None;
    let mut claim_idle = None;
    let place = format!("in [queue.{}]", fields::shown(raw));
    cx.set_table(Some(format!("[queue.{}]", fields::shown(raw))));
    for (key, value) in table.iter() {
        let key_name: &str = key.get_ref();
        match key_name {
            "delivery" => {
                let read = cx.choice("delivery", value, "delivery mode", &DELIVERY);
                delivery = read.unwrap_or_default();
            }
            "dead_letter" => {
                dead_letter = dead_letter_ref(cx, raw, value);
                wiring_complete = dead_letter.is_some();
            }
            "ack_timeout" => {
                ack_timeout = cx.duration(key_name, value).unwrap_or(ack_timeout);
            }
            "durable" => {
                if let Some(on) = cx.bool("durable", value) {
                    durable = Some((on, value.span()));
                }
            }
            "backend" => {
                if let Some(on) = cx.choice("backend", value, "backend", &BACKENDS) {
                    redis = Some((on, value.span()));
                }
            }
            "url" => {
                url_given = true;
                url = redis_url(cx, value).map(|t| (t, value.span()));
            }
            "stream" => stream = stream_name(cx, value).map(|s| (s, value.span())),
            "claim_idle" => {
                let d = cx.duration(key_name, value);
                if d.is_some_and(|d| d < MIN_CLAIM_IDLE) {
                    let message = format!("{} must be at least 100ms", cx.key("claim_idle"));
                    cx.error(value.span(), message, None);
                } else if let Some(d) = d {
                    claim_idle = Some((d, value.span()));
                }
            }
            "confirm" => {
                if let Some(on) = cx.bool("confirm", value) {
                    confirm = Some((on, value.span()));
                }
            }
            _ => {
                let mut slots = COUNTS.iter().zip(counts.iter_mut());
                match slots.find(|((name, ..), _)| *name == key_name) {
                    Some(((_, _, max), slot)) => {
                        *slot = cx.u32(key_name, value, 1, *max).unwrap_or(*slot);
                    }
                    None => {
                        let group_keys = super::group::ALL_KEYS.as_slice();
                        cx.unknown_key(key, &place, &KEYS, Some(("[group.NAME]", group_keys)));
                    }
                }
            }
        }
    }
    let on_redis = redis.as_ref().is_some_and(|(on, _)| *on);
    let durable_set = durable.clone().filter(|(on, _)| *on);
    let redis_spec = redis_settings(
        cx,
        (raw, span.clone()),
        on_redis,
        durable_set,
        (url, url_given),
        stream,
        claim_idle,
    );
    let durable = durable.is_some_and(|(on, _)| on);
    if let Some((true, span)) = confirm.clone()
        && !durable
        && !on_redis
    {
        confirm_in_memory(cx, span);
    }
    cx.set_table(None);
    let [capacity, max_message_bytes, prefetch, max_deliveries] = counts;
    let spec = QueueSpec {
        name: name?,
        capacity,
        max_message_bytes,
        delivery,
        prefetch,
        max_deliveries,
        dead_letter: dead_letter.as_ref().map(|r: &QueueRef| r.name.clone()),
        ack_timeout,
        confirm: confirm.is_some_and(|(on, _)| on),
        durable,
        redis: redis_spec.flatten(),
        file: cx.file.path.clone(),
    };
    Some(QueueDraft {
        spec,
        span,
        dead_letter,
        wiring_complete,
    })
}

/// The Redis keys together: `url` needed with `backend = "redis"`, the
/// others only allowed with it; `durable` is Redis's job. `None`: an error
/// was reported; `Some(None)`: a local queue.
fn redis_settings(
    cx: &mut Cx<'_>,
    (queue, header): (&str, Range<usize>),
    on: bool,
    durable: Option<(bool, Range<usize>)>,
    (url, url_given): (Option<(drover_redis::Target, Range<usize>)>, bool),
    stream: Option<(String, Range<usize>)>,
    claim_idle: Option<(Duration, Range<usize>)>,
) -> Option<Option<RedisQueue>> {
    if !on {
        let spans = [
            ("url", url.map(|u| u.1)),
            ("stream", stream.map(|s| s.1)),
            ("claim_idle", claim_idle.map(|c| c.1)),
        ];
        let mut ok = true;
        for (key, span) in spans {
            if let Some(span) = span {
                let message = format!("{} applies only to a queue on Redis", cx.key(key));
                let help = "add `backend = \"redis\"`, or remove it";
                cx.error(span, message, Some(help.into()));
                ok = false;
            }
        }
        return ok.then_some(None);
    }
    if let Some((_, span)) = durable {
        let message = format!(
            "{}: a queue with `backend = \"redis\"` cannot also be durable",
            cx.key("durable")
        );
        let help = "Redis keeps the messages (use its persistence: appendonly); remove `durable`";
        cx.error(span, message, Some(help.into()));
        return None;
    }
    let Some((target, _)) = url else {
        if url_given {
            return None; // reported
        }
        let message = format!(
            "[queue.{}] has `backend = \"redis\"` but no `url`",
            fields::shown(queue)
        );
        let help = "add `url = \"redis://HOST:6379/0\"` (or unix:///PATH, rediss://...)";
        cx.error(header, message, Some(help.into()));
        return None;
    };
    Some(Some(RedisQueue {
        target,
        stream: stream.map_or_else(|| format!("drover:{queue}"), |s| s.0),
        claim_idle: claim_idle.map_or(CLAIM_IDLE, |c| c.0),
    }))
}

/// `url`: `${NAME}` expanded from drover's environment, then checked.
fn redis_url(cx: &mut Cx<'_>, value: &fields::Value<'_>) -> Option<drover_redis::Target> {
    let raw = cx.string("url", value)?;
    let expanded = match expand_env(raw) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("{}: {e}", cx.key("url"));
            let help = "set it in drover's environment, or write the URL out";
            cx.error(value.span(), message, Some(help.into()));
            return None;
        }
    };
    match drover_redis::Target::parse(&expanded) {
        Ok(t) => Some(t),
        Err(e) => {
            let message = format!("{}: {e}", cx.key("url"));
            cx.error(value.span(), message, None);
            None
        }
    }
}

/// `${NAME}` replaced by the environment variable NAME; `$$` is `$`.
fn expand_env(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "`${` without a closing `}`".to_owned())?;
            let name = &body[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("`${{{name}}}` is not an environment variable name"));
            }
            let value = std::env::var(name)
                .map_err(|_| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `stream`: a non-empty key name of reasonable length.
fn stream_name(cx: &mut Cx<'_>, value: &fields::Value<'_>) -> Option<String> {
    let s = cx.string("stream", value)?;
    if s.is_empty() || s.len() > 1024 || s.chars().any(char::is_control) {
        let message = format!(
            "{} must be 1 to 1024 characters without control characters",
            cx.key("stream")
        );
        cx.error(value.span(), message, None);
        return None;
    }
    Some(s.to_owned())
}

/// `dead_letter`: a queue name other than the queue's own.
fn dead_letter_ref(cx: &mut Cx<'_>, queue: &str, value: &fields::Value<'_>) -> Option<QueueRef> {
    let s = cx.string("dead_letter", value)?;
    let r = queue_ref(cx, " in `dead_letter`", s, value.span())?;
    if r.name.as_str() == queue {
        let message = format!("queue `{queue}` cannot be its own dead-letter queue");
        let help =
            "name another queue, or remove `dead_letter` to record dead letters under `state_dir`";
        cx.error(value.span(), message, Some(help.into()));
        return None;
    }
    Some(r)
}

/// `confirm = true` on a queue that is not durable: accepted, with a
/// warning that an `ok` is no promise about the disk.
fn confirm_in_memory(cx: &mut Cx<'_>, span: Range<usize>) {
    let message = format!(
        "{}: `confirm = true` without `durable = true`: `ok` means held in drover's memory, not safe on disk",
        cx.key("confirm")
    );
    let help =
        "a message confirmed with `ok` is lost if drover stops before a consumer acknowledges it";
    let diagnostic = Diagnostic::warning(message).at(cx.at(span)).with_help(help);
    cx.report(diagnostic);
}

/// A reference to a queue by name; `place` says where (" in `inputs[0]`").
pub(crate) fn queue_ref(
    cx: &mut Cx<'_>,
    place: &str,
    raw: &str,
    span: Range<usize>,
) -> Option<QueueRef> {
    let name = fields::name(cx, ("queue", place), raw, span.clone(), QueueName::new)?;
    Some(QueueRef { name, span })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::Diagnostic;
    use crate::config::source::SourceFile;
    use std::path::PathBuf;

    fn read_queue(text: &str) -> (Option<QueueDraft>, Vec<String>) {
        let file = SourceFile::new(PathBuf::from("/t/a.toml"), format!("[queue.jobs]\n{text}"));
        let doc = DeTable::parse(&file.text).unwrap();
        let queues = doc
            .get_ref()
            .get("queue")
            .unwrap()
            .get_ref()
            .as_table()
            .unwrap();
        let (key, value) = queues.iter().next().unwrap();
        let mut diags: Vec<Diagnostic> = Vec::new();
        let mut cx = Cx::new(&file, &mut diags);
        let name = QueueName::new(key.get_ref()).ok();
        let draft = read(
            &mut cx,
            name,
            (key.get_ref(), key.span()),
            value.get_ref().as_table().unwrap(),
        );
        (
            draft,
            diags
                .iter()
                .map(|d| format!("{}|{}", d.message(), d.help().unwrap_or("")))
                .collect(),
        )
    }

    #[test]
    fn defaults_match_the_design() {
        let (draft, msgs) = read_queue("");
        assert!(msgs.is_empty());
        let spec = draft.unwrap().spec;
        assert_eq!(
            (
                spec.capacity,
                spec.max_message_bytes,
                spec.delivery,
                spec.prefetch,
                spec.max_deliveries,
                spec.dead_letter
            ),
            (10_000, 65_536, Delivery::AtLeastOnce, 1, 5, None)
        );
        assert_eq!(spec.file, PathBuf::from("/t/a.toml"));
    }

    #[test]
    fn reads_every_key() {
        let (draft, msgs) = read_queue(
            "capacity = 5\nmax_message_bytes = 10\ndelivery = \"at-most-once\"\nprefetch = 2\n\
             max_deliveries = 3\ndead_letter = \"dead\"\ndurable = false",
        );
        assert!(msgs.is_empty(), "{msgs:?}");
        let draft = draft.unwrap();
        let spec = &draft.spec;
        assert_eq!(
            (
                spec.capacity,
                spec.max_message_bytes,
                spec.delivery,
                spec.prefetch,
                spec.max_deliveries
            ),
            (5, 10, Delivery::AtMostOnce, 2, 3)
        );
        assert_eq!(spec.dead_letter, Some(QueueName::new("dead").unwrap()));
        assert_eq!(draft.dead_letter.unwrap().span, 121..127);
    }

    #[test]
    fn rejects_zero_sizes_and_self_dead_letter() {
        let (_, msgs) =
            read_queue("capacity = 0\nprefetch = 0\ndead_letter = \"jobs\"\ndurable = true");
        assert_eq!(
            msgs,
            [
                "`capacity` in [queue.jobs] must be at least 1, found 0|",
                "queue `jobs` cannot be its own dead-letter queue|name another queue, or remove `dead_letter` to record dead letters under `state_dir`",
                "`prefetch` in [queue.jobs] must be at least 1, found 0|",
            ]
        );
    }

    #[test]
    fn confirm_is_read_and_warned_about_without_durable() {
        let (draft, msgs) = read_queue("confirm = false");
        assert!(msgs.is_empty() && !draft.unwrap().spec.confirm, "{msgs:?}");
        let (draft, msgs) = read_queue("confirm = true");
        assert!(draft.unwrap().spec.confirm);
        assert_eq!(
            msgs,
            [
                "`confirm` in [queue.jobs]: `confirm = true` without `durable = true`: `ok` means held in drover's memory, not safe on disk|a message confirmed with `ok` is lost if drover stops before a consumer acknowledges it"
            ]
        );
        let (draft, msgs) = read_queue("confirm = true\ndurable = true");
        let spec = draft.unwrap().spec;
        assert!(msgs.is_empty() && spec.confirm && spec.durable, "{msgs:?}");
        let (_, msgs) = read_queue("confirm = \"yes\"");
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].contains("`confirm`"), "{msgs:?}");
    }

    #[test]
    fn redis_keys_are_read_and_checked_together() {
        let (draft, msgs) = read_queue(
            "backend = \"redis\"\nurl = \"redis://u:pw@h:6379/1\"\nstream = \"s\"\nclaim_idle = \"5s\"",
        );
        assert!(msgs.is_empty(), "{msgs:?}");
        let r = draft.unwrap().spec.redis.unwrap();
        assert_eq!(
            (r.stream.as_str(), r.claim_idle),
            ("s", Duration::from_secs(5))
        );
        assert_eq!(r.target.shown(), "redis://u:***@h:6379/1");
        let (draft, msgs) = read_queue("backend = \"redis\"\nurl = \"unix:///r.sock\"");
        assert!(msgs.is_empty(), "{msgs:?}");
        let r = draft.unwrap().spec.redis.unwrap();
        assert_eq!(
            (r.stream.as_str(), r.claim_idle),
            ("drover:jobs", Duration::from_secs(30))
        );
        let (_, msgs) = read_queue("backend = \"redis\"");
        assert!(msgs[0].contains("no `url`"), "{msgs:?}");
        let (_, msgs) = read_queue("url = \"redis://h\"\nstream = \"s\"");
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].contains("applies only to a queue on Redis"),
            "{msgs:?}"
        );
        let (_, msgs) = read_queue("backend = \"redis\"\nurl = \"redis://h\"\ndurable = true");
        assert!(msgs[0].contains("cannot also be durable"), "{msgs:?}");
        let (_, msgs) = read_queue("backend = \"rediss\"");
        assert!(msgs[0].contains("unknown backend `rediss`"), "{msgs:?}");
        let (_, msgs) =
            read_queue("backend = \"redis\"\nurl = \"redis://h\"\nclaim_idle = \"10ms\"");
        assert!(msgs[0].contains("at least 100ms"), "{msgs:?}");
    }

    #[test]
    fn environment_variables_expand_in_urls() {
        assert_eq!(expand_env("a$$b").unwrap(), "a$b");
        assert_eq!(expand_env("no vars").unwrap(), "no vars");
        let home = std::env::var("PATH").unwrap();
        assert_eq!(expand_env("x${PATH}y").unwrap(), format!("x{home}y"));
        assert!(
            expand_env("${DROVER_SURELY_UNSET_VAR_42}")
                .unwrap_err()
                .contains("is not set")
        );
        assert!(
            expand_env("${BAD-NAME}")
                .unwrap_err()
                .contains("not an environment variable name")
        );
        assert!(expand_env("${OPEN").unwrap_err().contains("closing"));
    }

    #[test]
    fn unknown_keys_say_where_they_belong() {
        let (_, msgs) = read_queue("capacityy = 1\nprocesses = 2\nfoo = 1");
        assert_eq!(
            msgs[0],
            "unknown key `capacityy` in [queue.jobs]|did you mean `capacity`?"
        );
        assert_eq!(
            msgs[1],
            "unknown key `foo` in [queue.jobs]|expected one of `capacity`, `max_message_bytes`, `delivery`, `prefetch`, `max_deliveries`, `dead_letter`, `ack_timeout`, `durable`, `confirm`, `backend`, `url`, `stream`, `claim_idle`"
        );
        assert_eq!(
            msgs[2],
            "unknown key `processes` in [queue.jobs]|`processes` is a key of [group.NAME] tables"
        );
    }

    #[test]
    fn bad_dead_letter_names_are_reported() {
        let (draft, msgs) = read_queue("dead_letter = \"Dead\"");
        assert!(!draft.unwrap().wiring_complete);
        assert_eq!(
            msgs,
            [
                "invalid queue name `Dead` in `dead_letter` in [queue.jobs]: a name must start with a lowercase letter a-z|names match `[a-z][a-z0-9_]*`; try `dead`"
            ]
        );
    }
}
