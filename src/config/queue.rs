//! `[queue.NAME]`: one queue, and references to queues from elsewhere.

use std::ops::Range;
use std::time::Duration;

use toml::de::DeTable;

use super::diag::Diagnostic;
use super::fields::{self, Cx};
use super::limits::{MAX_CAPACITY, MAX_DELIVERIES, MAX_MESSAGE_BYTES, MAX_PREFETCH};
use super::model::{Delivery, QueueSpec};
use crate::config::names::QueueName;

pub(crate) const KEYS: [&str; 9] = [
    "capacity",
    "max_message_bytes",
    "delivery",
    "prefetch",
    "max_deliveries",
    "dead_letter",
    "ack_timeout",
    "durable",
    "confirm",
];

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
    let mut durable = false;
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
            "durable" => durable = cx.bool("durable", value).unwrap_or(false),
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
    if let Some((true, span)) = confirm.clone()
        && !durable
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
        file: cx.file.path.clone(),
    };
    Some(QueueDraft {
        spec,
        span,
        dead_letter,
        wiring_complete,
    })
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
    fn unknown_keys_say_where_they_belong() {
        let (_, msgs) = read_queue("capacityy = 1\nprocesses = 2\nfoo = 1");
        assert_eq!(
            msgs[0],
            "unknown key `capacityy` in [queue.jobs]|did you mean `capacity`?"
        );
        assert_eq!(
            msgs[1],
            "unknown key `foo` in [queue.jobs]|expected one of `capacity`, `max_message_bytes`, `delivery`, `prefetch`, `max_deliveries`, `dead_letter`, `ack_timeout`, `durable`, `confirm`"
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
