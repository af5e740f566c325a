//! Configs with tens of thousands of queues, validated in memory through
//! [`load_files`]. Regression: `check` was quadratic in the number of
//! queues a group names (40,000 took 9 s). These assert the results, not
//! the time; the README's configuration section gives measured times.

use std::path::PathBuf;

use super::*;

const QUEUES: usize = 40_000;

fn queue_names(prefix: &str) -> Vec<String> {
    (0..QUEUES).map(|i| format!("{prefix}{i:06}")).collect()
}

/// `["a", "b", ...]`
fn list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A `[queue.NAME]` table for each name, then `groups`.
fn config(queues: &[String], groups: &str) -> Result<Loaded, Failed> {
    let mut text: String = queues.iter().map(|q| format!("[queue.{q}]\n")).collect();
    text += groups;
    load_files(vec![(PathBuf::from("/cfg/big.toml"), text.into_bytes())])
}

#[test]
fn forty_thousand_queues_validate() {
    let names = queue_names("q");
    let groups = format!(
        "[group.producer]\npython = \"m:f\"\noutputs = {}\n\
         [group.consumer]\npython = \"m:f\"\ninputs = {}\n",
        list(&names),
        list(&names)
    );
    let loaded = config(&names, &groups).unwrap_or_else(|failed| panic!("{failed}"));
    assert!(loaded.warnings.is_empty());
    let config = loaded.config;
    assert_eq!(config.queues.len(), QUEUES);
    let consumer = &config.groups[&GroupName::new("consumer").unwrap()];
    assert_eq!(consumer.inputs.len(), QUEUES);
    assert_eq!(
        consumer.inputs.last().map(QueueName::as_str),
        Some("q039999")
    );
}

#[test]
fn forty_thousand_unused_queues_are_warned_about_once_each() {
    let names = queue_names("q");
    let loaded = config(&names, "").unwrap();
    assert_eq!(loaded.warnings.len(), QUEUES);
    assert!(loaded.warnings.iter().all(|w| {
        w.message()
            .ends_with("is not used: no group lists it in `inputs` or `outputs`")
    }));
}

#[test]
fn forty_thousand_queues_listed_twice_are_each_reported() {
    let names = queue_names("q");
    let twice: Vec<String> = names.iter().chain(&names).cloned().collect();
    let groups = format!(
        "[group.w]\npython = \"m:f\"\ninputs = {}\noutputs = {}\n",
        list(&twice),
        list(&names)
    );
    let failed = config(&names, &groups).unwrap_err();
    assert_eq!(failed.diagnostics.len(), QUEUES);
    assert_eq!(
        failed.diagnostics[0].message(),
        "queue `q000000` is listed twice in `inputs` in [group.w]"
    );
}

#[test]
fn forty_thousand_undefined_queues_are_each_reported() {
    let defined = queue_names("q");
    let misspelt: Vec<String> = defined.iter().map(|q| format!("{q}x")).collect();
    let groups = format!(
        "[group.w]\npython = \"m:f\"\ninputs = {}\noutputs = {}\n",
        list(&misspelt),
        list(&defined)
    );
    let failed = config(&defined, &groups).unwrap_err();
    assert_eq!(failed.diagnostics.len(), QUEUES);
    let first = &failed.diagnostics[0];
    assert_eq!(
        first.message(),
        "undefined queue `q000000x` in `inputs` of group `w`"
    );
    assert_eq!(first.help(), Some("did you mean `q000000`?"));
    // Past the suggestion budget, the help still says what to do.
    let last = failed.diagnostics.last().and_then(Diagnostic::help);
    assert!(
        matches!(
            last,
            Some("did you mean `q039999`?" | "define it with a `[queue.q039999x]` table")
        ),
        "{last:?}"
    );
}
