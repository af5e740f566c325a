//! One config file: TOML syntax, then the top level (`[supervisor]`,
//! `[group.NAME]`, `[queue.NAME]`), dispatched to the table readers.

use toml::de::DeTable;

use super::diag::Diagnostic;
use super::fields::{self, Cx, Key, Value};
use super::group::{self, GroupDraft};
use super::host::Host;
use super::queue::{self, QueueDraft};
use super::source::SourceFile;
use super::supervisor::{self, SupervisorDraft};
use crate::config::names::{GroupName, QueueName};

const TOP_KEYS: [&str; 3] = ["supervisor", "group", "queue"];

/// What one file defines, read and checked on its own.
#[derive(Debug, Default)]
pub(crate) struct FileDraft {
    pub supervisor: Option<SupervisorDraft>,
    pub groups: Vec<GroupDraft>,
    pub queues: Vec<QueueDraft>,
}

/// Parses and reads `file`. A TOML syntax error is one diagnostic and
/// yields `None`: nothing else in the file can be trusted.
pub(crate) fn read(
    file: &SourceFile,
    host: &Host,
    diags: &mut Vec<Diagnostic>,
) -> Option<FileDraft> {
    let root = match DeTable::parse(&file.text) {
        Ok(root) => root,
        Err(e) => {
            let location = match e.span() {
                Some(span) => file.at(span),
                None => file.whole(),
            };
            diags.push(Diagnostic::error(format!("invalid TOML: {}", e.message())).at(location));
            return None;
        }
    };
    let mut cx = Cx::new(file, diags);
    let mut draft = FileDraft::default();
    for (key, value) in root.get_ref().iter() {
        match key.get_ref().as_ref() {
            "supervisor" => {
                if let Some(table) = cx.table("supervisor", value) {
                    draft.supervisor = Some(supervisor::read(&mut cx, key.span(), table));
                }
            }
            "group" => read_groups(&mut cx, host, value, &mut draft.groups),
            "queue" => read_queues(&mut cx, value, &mut draft.queues),
            _ => {
                let group_keys = group::ALL_KEYS.as_slice();
                cx.unknown_key(
                    key,
                    "at the top level",
                    &TOP_KEYS,
                    Some(("[group.NAME]", group_keys)),
                );
            }
        }
    }
    Some(draft)
}

fn read_groups(cx: &mut Cx<'_>, host: &Host, value: &Value<'_>, out: &mut Vec<GroupDraft>) {
    for (key, body, table) in named_tables(cx, "group", value) {
        let raw: &str = key.get_ref();
        let name = fields::name(cx, ("group", ""), raw, key.span(), GroupName::new);
        let draft = group::read(cx, host, name, (raw, key.span()), body.span(), table);
        out.extend(draft);
    }
}

fn read_queues(cx: &mut Cx<'_>, value: &Value<'_>, out: &mut Vec<QueueDraft>) {
    for (key, _, table) in named_tables(cx, "queue", value) {
        let raw: &str = key.get_ref();
        let name = fields::name(cx, ("queue", ""), raw, key.span(), QueueName::new);
        out.extend(queue::read(cx, name, (raw, key.span()), table));
    }
}

/// The `[KIND.NAME]` tables under `value`, reporting anything that is not a
/// table (such as `[[group]]`, or `[group]` with keys directly in it).
fn named_tables<'v, 'i>(
    cx: &mut Cx<'_>,
    kind: &str,
    value: &'v Value<'i>,
) -> Vec<(&'v Key<'i>, &'v Value<'i>, &'v DeTable<'i>)> {
    let Some(table) = value.get_ref().as_table() else {
        not_a_table(cx, kind, value, kind);
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, body) in table.iter() {
        match body.get_ref().as_table() {
            Some(t) => out.push((key, body, t)),
            None => not_a_table(cx, &format!("{kind}.{}", key.get_ref()), body, kind),
        }
    }
    out
}

fn not_a_table(cx: &mut Cx<'_>, label: &str, value: &Value<'_>, kind: &str) {
    let message = format!(
        "invalid type for `{label}`: expected a table, found {}",
        fields::a_type(value.get_ref())
    );
    let help = format!("define each {kind} as a table of its own: `[{kind}.NAME]`");
    cx.error(value.span(), message, Some(help));
}
