//! Unit tests of the pieces that need no child process: names, queues in
//! one process, arguments with queues, and the boot payload run in place
//! (offsets, trampoline, and every check that refuses a bad payload).
//! Processes are tested by `tests/context.rs`, from separate programs.

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::boot::Payload;
use super::error::BootError;
use super::queue::{decode_args, encode_args};
use super::*;
use crate::sys::CodeError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    name: String,
    tags: Vec<String>,
}

fn job() -> Job {
    Job {
        id: 7,
        name: "crème brûlée".to_owned(),
        tags: vec!["x".to_owned()],
    }
}

#[test]
fn start_methods_parse_by_their_python_names() {
    for method in get_all_start_methods() {
        assert_eq!(parse_start_method(method.as_str()).unwrap(), method);
    }
    assert!(matches!(
        parse_start_method("vfork"),
        Err(Error::UnknownStartMethod(name)) if name == "vfork"
    ));
}

#[test]
fn a_queue_round_trips_a_struct_in_order() {
    let q = Queue::<Job>::new().unwrap();
    let mut second = job();
    second.id = 8;
    q.put(job()).unwrap();
    q.put(&second).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), job());
    assert_eq!(q.clone().get().unwrap(), second);
}

#[test]
fn get_timeout_on_an_empty_queue_times_out() {
    let q = Queue::<u8>::new().unwrap();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(10)),
        Err(QueueError::Timeout)
    ));
}

#[test]
fn a_message_over_the_limit_is_refused_and_one_at_the_limit_passes() {
    let q = Queue::<String>::with_max_message_bytes(100).unwrap();
    // JSON of a string of n ASCII letters is n + 2 bytes.
    let at_limit = "a".repeat(98);
    let over = "a".repeat(99);
    assert!(matches!(
        q.put(&over),
        Err(QueueError::TooLarge { len: 101, max: 100 })
    ));
    q.put(&at_limit).unwrap();
    assert_eq!(q.get().unwrap(), at_limit);
}

#[test]
fn the_default_limit_is_accepted_by_the_kernel() {
    let q = Queue::<Vec<u8>>::new().unwrap();
    assert_eq!(q.max_message_bytes(), DEFAULT_MAX_MESSAGE_BYTES);
    // "[0,0,…,0]": 2 bytes per zero, minus the last comma, plus brackets.
    let n = DEFAULT_MAX_MESSAGE_BYTES / 2 - 1;
    let fits = vec![0u8; n];
    assert_eq!(serde_json::to_vec(&fits).unwrap().len(), 2 * n + 1);
    q.put(&fits).unwrap();
    assert_eq!(q.get().unwrap(), fits);
    assert!(matches!(
        q.put(vec![0u8; n + 1]),
        Err(QueueError::TooLarge { .. })
    ));
}

#[test]
fn a_limit_the_kernel_cannot_carry_is_an_error_at_creation() {
    assert!(matches!(
        Queue::<u8>::with_max_message_bytes(1 << 30),
        Err(QueueError::LimitUnavailable { requested, .. }) if requested == 1 << 30
    ));
}

#[test]
fn a_queue_is_encodable_only_inside_process_arguments() {
    let q = Queue::<Queue<u8>>::new().unwrap();
    let inner = Queue::<u8>::new().unwrap();
    match q.put(inner) {
        Err(QueueError::Encode(e)) => assert!(e.to_string().contains("Process's arguments")),
        other => panic!("expected an encode error, got {other:?}"),
    }
}

/// Copies of the fds a child would receive with `args`.
fn fds_for(encoded: &super::queue::EncodedArgs) -> Vec<OwnedFd> {
    encoded
        .fds()
        .into_iter()
        .map(|fd| fd.try_clone_to_owned().unwrap())
        .collect()
}

#[test]
fn arguments_carry_queues_as_fds_and_a_repeated_queue_once() {
    let q = Queue::<Job>::new().unwrap();
    let args = (q.clone(), 5u32, q.clone());
    let encoded = encode_args(&args).unwrap();
    assert_eq!(encoded.queues.len(), 1, "one queue, named twice");
    let (a, n, b): (Queue<Job>, u32, Queue<Job>) =
        decode_args(&encoded.json, fds_for(&encoded)).unwrap();
    assert_eq!(n, 5);
    a.put(job()).unwrap();
    assert_eq!(q.get().unwrap(), job());
    q.put(job()).unwrap();
    assert_eq!(b.get().unwrap(), job());
}

#[test]
fn a_queue_without_its_fds_does_not_decode() {
    let q = Queue::<u8>::new().unwrap();
    let encoded = encode_args(&q).unwrap();
    let err = decode_args::<Queue<u8>>(&encoded.json, Vec::new()).unwrap_err();
    assert!(err.to_string().contains("queue #0 was not passed"), "{err}");
}

static CALLS: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

fn record(args: (u32, String)) {
    CALLS.lock().unwrap().push(args);
}

fn calls() -> Vec<(u32, String)> {
    CALLS.lock().unwrap().clone()
}

/// One test owns `CALLS`, so the checks cannot see each other's calls.
#[test]
fn a_payload_calls_its_target_and_refuses_every_mismatch() {
    let args = (42u32, "forty-two".to_owned());
    let payload = Payload::new(record, &args).unwrap();

    // The same executable, offsets from this process: the target runs.
    payload.received().run(Vec::new()).unwrap();
    assert_eq!(calls(), vec![args.clone()]);

    // Each mismatch is an error before anything is called.
    assert!(matches!(
        payload.with_other_exe().run(Vec::new()),
        Err(BootError::Code(CodeError::OtherExecutable { .. }))
    ));
    assert!(matches!(
        payload.with_target_outside_text().run(Vec::new()),
        Err(BootError::Code(CodeError::OutsideText(_)))
    ));
    assert!(matches!(
        payload.with_args_type("u64").run(Vec::new()),
        Err(BootError::ArgsType { found, .. }) if found == "u64"
    ));
    let stray: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    assert!(matches!(
        payload.received().run(vec![stray]),
        Err(BootError::Malformed(_))
    ));
    assert_eq!(calls().len(), 1, "no mismatch may call the target");
}

#[test]
fn a_payload_with_a_queue_reaches_the_target_with_a_working_queue() {
    fn answer(q: Queue<Job>) {
        q.put(job()).unwrap();
    }
    let q = Queue::<Job>::new().unwrap();
    let payload = Payload::new(answer, &q).unwrap();
    let fds = payload
        .fds()
        .into_iter()
        .map(|fd| fd.try_clone_to_owned().unwrap())
        .collect();
    payload.received().run(fds).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), job());
}

#[test]
fn garbage_is_not_a_payload() {
    use super::boot::Received;
    assert!(matches!(
        Received::parse(b"no newline".to_vec()),
        Err(BootError::Malformed(_))
    ));
    assert!(matches!(
        Received::parse(b"{\"magic\":1}\n[]".to_vec()),
        Err(BootError::Header(_))
    ));
}

#[test]
fn the_default_start_method_is_set_once() {
    set_start_method(StartMethod::Fork).unwrap();
    assert_eq!(get_start_method(), StartMethod::Fork);
    assert!(matches!(
        set_start_method(StartMethod::Spawn),
        Err(Error::StartMethodAlreadySet("fork"))
    ));
    let p = Process::new(|(): ()| {}, ());
    assert_eq!(p.start_method(), StartMethod::Fork);
}

#[test]
fn a_process_that_never_started_has_no_pid_and_is_not_alive() {
    let mut p = get_context(StartMethod::Spawn).process(|_: u8| {}, 1);
    assert_eq!(p.pid(), None);
    assert!(!p.is_alive());
    assert_eq!(p.exitcode(), None);
    assert!(matches!(p.terminate(), Err(Error::NotStarted)));
    assert!(matches!(p.join(), Err(Error::NotStarted)));
}

#[test]
fn exit_reports_decode() {
    use forkserver::{decode_exit, encode_exit};
    assert_eq!(decode_exit(&encode_exit(4, 3), 4), Some(3));
    let killed = encode_exit(4, -15);
    assert_eq!(
        killed,
        [4, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0xf1, 0xff, 0xff, 0xff],
        "seq, then one field: the code"
    );
    assert_eq!(decode_exit(&killed, 4), Some(-15));
    assert!(killed.len() <= forkserver::MAX_EXIT_NOTICE);
    assert_eq!(decode_exit(&killed, 5), None, "another start's notice");
    assert_eq!(decode_exit(&killed[..14], 4), None, "truncated");
    let reply = drover_sys::wire::Reply::ok(4, 1234).encode();
    assert_eq!(decode_exit(&reply, 4), None, "a start reply is no notice");
}
