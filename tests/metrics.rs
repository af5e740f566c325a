//! `[supervisor] metrics` on the real binary: the page parses under a
//! strict reading of the Prometheus text format (and `promtool check
//! metrics`), its values match `status --json`, counters count exits,
//! restarts and reloads, and idle or hostile connections cannot keep a
//! scrape out.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Drover, TempDir, count, python, wait_until};

/// One sample: its name and labels (sorted), and its value.
type Series = (String, Vec<(String, String)>);

/// Parses a page strictly: every line is `# HELP`, `# TYPE` or a sample of
/// the family just typed; names and labels are valid; a counter's name
/// ends in `_total`; no series appears twice; values are numbers.
fn parse(page: &str) -> BTreeMap<Series, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut samples = BTreeMap::new();
    let mut family: Option<(String, String)> = None;
    let mut helped = None;
    assert!(page.ends_with('\n'), "the page ends with a newline");
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            helped = Some(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(name.starts_with("drover_"), "{line}");
            assert_eq!(helped.as_deref(), Some(name), "HELP before TYPE: {line}");
            assert!(kind == "gauge" || kind == "counter", "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "a counter ends in _total: {line}");
            }
            family = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (family_name, _) = family.as_ref().expect("a sample after its TYPE");
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => (name, labels(rest.strip_suffix('}').expect("}"), line)),
        };
        assert_eq!(name, family_name, "a sample of its family: {line}");
        let mut labels = labels;
        labels.sort();
        let key = (name.to_owned(), labels);
        assert!(
            samples.insert(key, value).is_none(),
            "a series twice: {line}"
        );
    }
    samples
}

/// `a="x",b="y\"z"` → pairs, unescaping `\\`, `\"`, `\n`.
fn labels(text: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name in {line}"
        );
        assert_eq!(chars.next(), Some('"'), "quoted label value in {line}");
        let mut value = String::new();
        loop {
            match chars.next().expect("closing quote") {
                '"' => break,
                '\\' => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line}"),
                },
                c => value.push(c),
            }
        }
        out.push((name, value));
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => panic!("unexpected {c:?} in labels of {line}"),
        }
    }
    out
}

fn get(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics address");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// The page at `addr`, after checking the HTTP head.
fn scrape(addr: &str) -> String {
    let answer = get(addr, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    body.to_owned()
}

fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    *samples
        .get(&(name.to_owned(), l))
        .unwrap_or_else(|| panic!("no {name}{labels:?}"))
}

/// promtool, which CI installs (Debian package `prometheus`).
fn promtool_check(page: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "`promtool` is needed to check the metrics page: install the Debian package \
             `prometheus` (CI installs it in .ci/run)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const PRODUCER: &str = "import os, socket, signal\n\
    out = socket.socket(fileno=int(os.environ['DROVER_OUT_JOBS']))\n\
    for i in range(5):\n    out.send(b'm%d' % i)\nsignal.pause()\n";
const CONSUMER: &str = "import os, socket\n\
    q = socket.socket(fileno=int(os.environ['DROVER_IN_JOBS']))\n\
    while (m := q.recv(100)):\n    q.send(b'ack')\n";

fn config(extra: &str) -> String {
    let py = python();
    format!(
        r#"
[supervisor]
metrics = "127.0.0.1:0"

[queue.jobs]

[group.producer]
command = ["{py}", "producer.py"]
outputs = ["jobs"]
start_secs = "100ms"

[group.consumer]
command = ["{py}", "consumer.py"]
inputs = ["jobs"]
processes = 2
start_secs = "100ms"

[group.bad]
command = ["sh", "-c", "exit 3"]
start_secs = "100ms"
restart_delay = "10ms"
max_restarts = 1
{extra}"#
    )
}

#[test]
fn metrics_parse_strictly_and_match_status() {
    let dir = TempDir::new("metrics");
    dir.write("producer.py", PRODUCER);
    dir.write("consumer.py", CONSUMER);
    dir.write("drover.toml", &config(""));
    let d = Drover::start_in(dir, &[]);
    let addr = metrics_addr(&d);
    let status = d.wait_status("bad fatal, 5 acked, consumers running", |s| {
        Drover::children(s, "bad")[0]["state"] == "fatal"
            && count(s, "jobs", "acked") == 5
            && Drover::children(s, "consumer")
                .iter()
                .all(|c| c["state"] == "running")
    });

    let page = scrape(&addr);
    promtool_check(&page);
    let samples = parse(&page);
    for g in status["groups"].as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        for state in ["starting", "running", "backoff", "fatal", "exited"] {
            let n = g["children"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["state"] == state)
                .count();
            let m = value(
                &samples,
                "drover_children",
                &[("group", name), ("state", state)],
            );
            assert_eq!(m, n as f64, "{name} {state}: {page}");
        }
    }
    let queue = |field: &str| count(&status, "jobs", field) as f64;
    let labels = [("queue", "jobs"), ("backend", "local")];
    assert_eq!(
        value(&samples, "drover_queue_acked_total", &labels),
        queue("acked")
    );
    assert_eq!(
        value(&samples, "drover_queue_delivered_total", &labels),
        queue("delivered")
    );
    assert_eq!(
        value(&samples, "drover_queue_depth", &labels),
        queue("depth")
    );
    assert_eq!(value(&samples, "drover_queue_in_flight", &labels), 0.0);
    assert_eq!(
        value(
            &samples,
            "drover_child_exits_total",
            &[("group", "bad"), ("code", "3")]
        ),
        2.0,
        "the first start and one retry"
    );
    assert_eq!(
        value(&samples, "drover_child_starts_total", &[("group", "bad")]),
        2.0
    );
    assert_eq!(
        value(&samples, "drover_child_restarts_total", &[("group", "bad")]),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "drover_child_starts_total",
            &[("group", "consumer")]
        ),
        2.0
    );
    assert_eq!(
        value(&samples, "drover_children_ready", &[("group", "consumer")]),
        2.0
    );
    assert!(value(&samples, "drover_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&samples, "drover_open_fds", &[]) >= 10.0);
    assert_eq!(value(&samples, "drover_config_error", &[]), 0.0);

    // Reloads, by result.
    assert!(d.cli(&["reload"]).status.success());
    d.dir.write("drover.toml", &config("bogus_key = 1\n"));
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "an invalid config is refused");
    let samples = parse(&scrape(&addr));
    assert_eq!(
        value(&samples, "drover_reloads_total", &[("result", "applied")]),
        1.0
    );
    assert!(value(&samples, "drover_reloads_total", &[("result", "invalid")]) >= 1.0);
    assert_eq!(value(&samples, "drover_config_error", &[]), 1.0);

    // Only GET /metrics.
    assert!(get(&addr, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(get(&addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
}

/// Connections that never send a request do not keep a scrape out, and a
/// client that sends endless headers is answered and closed.
#[test]
fn idle_and_hostile_connections_cannot_keep_a_scrape_out() {
    let dir = TempDir::new("metrics-hostile");
    dir.write(
        "drover.toml",
        "[supervisor]\nmetrics = \"127.0.0.1:0\"\n\n[group.a]\ncommand = [\"sleep\", \"1000\"]\n",
    );
    let d = Drover::start_in(dir, &[]);
    let addr = metrics_addr(&d);
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut flood = TcpStream::connect(&addr).unwrap();
    flood.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let header = format!("X-Junk: {}\r\n", "x".repeat(1000));
    let mut answer = String::new();
    for _ in 0..20 {
        if flood.write_all(header.as_bytes()).is_err() {
            break;
        }
    }
    flood
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = flood.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    wait_until("a scrape through the idle connections", || {
        parse(&scrape(&addr)).contains_key(&("drover_open_fds".to_owned(), Vec::new()))
    });
    drop(idle);
    assert!(d.status()["groups"].is_array());
}

/// The metrics address drover logs at start.
fn metrics_addr(d: &Drover) -> String {
    d.stderr
        .wait_between("the metrics address", "metrics at http://", "/metrics")
}

/// Every exit is counted once, also of a fork server's children that exit
/// before drover has read the fork server's answer about them (those went
/// uncounted, and their pid stayed in the metrics' table); and a group a
/// reload removes leaves the page.
#[test]
fn every_exit_is_counted_and_a_removed_group_leaves_the_page() {
    let dir = TempDir::new("metrics-exits");
    let config = |groups: &str| {
        format!(
            "[supervisor]\nmetrics = \"127.0.0.1:0\"\n\n[group.keep]\ncommand = [\"sleep\", \"1000\"]\n{groups}"
        )
    };
    let quick = "\n[group.quick]\nstart_method = \"forkserver\"\ncommand = [\"true\"]\n\
                 processes = 40\nrestart = \"never\"\nstart_secs = \"0s\"\n";
    // Stops only once the test lets it: its exit comes after the reload
    // that removes it (its exit must not bring its series back).
    let slow = "\n[group.slow]\ncommand = [\"sh\", \"-c\", \"trap 'while [ ! -e gate ]; do \
                sleep 0.01; done; exit 0' TERM; while :; do sleep 0.05; done\"]\n";
    dir.write("drover.toml", &config(&format!("{quick}{slow}")));
    let d = Drover::start_in(dir, &[]);
    let addr = metrics_addr(&d);
    d.wait_status("every quick child exited", |s| {
        Drover::children(s, "quick")
            .iter()
            .all(|c| c["state"] == "exited")
    });
    let samples = parse(&scrape(&addr));
    let quick_group = [("group", "quick")];
    assert_eq!(
        value(&samples, "drover_child_starts_total", &quick_group),
        40.0
    );
    assert_eq!(
        value(
            &samples,
            "drover_child_exits_total",
            &[("group", "quick"), ("code", "0")]
        ),
        40.0,
        "one exit counted per start"
    );

    let slow_pid = d.wait_group_state("slow", "running")[0];
    d.dir.write("drover.toml", &config(""));
    assert!(d.cli(&["reload"]).status.success());
    let page = scrape(&addr);
    assert!(!page.contains("group=\"quick\""), "{page}");
    assert!(!page.contains("group=\"slow\""), "{page}");
    assert!(page.contains("group=\"keep\""), "{page}");
    // The removed group's child exits now; once drover has reaped it (it
    // leaves `retiring`), the page still has no series of its group.
    d.dir.write("gate", "");
    d.wait_status("the removed group's child reaped", |s| {
        s["retiring"]
            .as_array()
            .is_none_or(|r| r.iter().all(|c| c["pid"].as_i64() != Some(slow_pid)))
    });
    let page = scrape(&addr);
    assert!(!page.contains("group=\"slow\""), "{page}");
}
