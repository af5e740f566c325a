//! The broker against real socket pairs and a real epoll set; the child's
//! side of each socket is played by the test.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::epoll::{EpollCreateFlags, EpollFlags};
use nix::sys::socket::MsgFlags;

use super::queue::Message;
use super::retire::QueueChanges;
use super::*;
use crate::config::{Delivery, LogFormat, QueueSpec, SupervisorConfig};

const W: &str = "w";

fn spec(name: &str) -> QueueSpec {
    QueueSpec {
        name: QueueName::new(name).unwrap(),
        capacity: 10,
        max_message_bytes: 100,
        delivery: Delivery::AtLeastOnce,
        prefetch: 4,
        max_deliveries: 5,
        dead_letter: None,
        ack_timeout: Duration::ZERO,
        confirm: false,
        durable: false,
        redis: None,
        file: "t.toml".into(),
    }
}

fn config_of(specs: Vec<QueueSpec>, state_dir: PathBuf) -> Config {
    Config {
        supervisor: SupervisorConfig {
            control_socket: None,
            log_format: LogFormat::Text,
            state_dir,
            dead_letter_max_bytes: crate::config::DEFAULT_DEAD_LETTER_MAX_BYTES,
            log_lines: crate::config::DEFAULT_LOG_LINES,
            log_timestamps: false,
            metrics: None,
            exit_on_fatal: false,
        },
        groups: BTreeMap::new(),
        queues: specs.into_iter().map(|s| (s.name.clone(), s)).collect(),
        files: vec![],
    }
}

fn config(delivery: Delivery) -> Config {
    let mut jobs = spec("jobs");
    jobs.delivery = delivery;
    config_of(vec![jobs], std::env::temp_dir())
}

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

/// A state directory of its own, removed on drop.
struct State(PathBuf);

impl State {
    fn new(name: &str) -> State {
        let dir = std::env::temp_dir().join(format!("drover-broker-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        State(dir)
    }

    /// The records of `queue`'s dead-letter file, once `broker`'s record
    /// writer has dealt with every dead letter so far.
    fn records(&self, broker: &Broker, queue: &str) -> Vec<serde_json::Value> {
        assert!(
            broker.recorder.flush(Duration::from_secs(60)),
            "records stuck"
        );
        let file = deadletter::path(&self.0, &q(queue));
        let text = std::fs::read_to_string(file).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn epoll() -> Epoll {
    Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap()
}

/// Attaches one socket of child `pid` to `queue`; returns the child's end.
fn attach(
    broker: &mut Broker,
    epoll: &Epoll,
    pid: i32,
    queue: &str,
    direction: Direction,
    token: u64,
) -> UnixStream {
    attach_end(broker, epoll, (pid, queue, direction, false), token)
}

/// Attaches one socket of child `pid` to `queue`, with confirms or not.
fn attach_end(
    broker: &mut Broker,
    epoll: &Epoll,
    (pid, queue, direction, confirm): (i32, &str, Direction, bool),
    token: u64,
) -> UnixStream {
    let (ours, theirs) = socket_pair().unwrap();
    let end = QueueEnd {
        queue: q(queue),
        direction,
        confirm,
        fd: ours,
    };
    broker.attach(
        epoll,
        Pid(pid),
        &GroupName::new(W).unwrap(),
        vec![end],
        || token,
    );
    UnixStream::from(theirs)
}

fn push(broker: &mut Broker, queue: &str, messages: &[&[u8]]) {
    for m in messages {
        broker
            .queues
            .get_mut(&q(queue))
            .unwrap()
            .push(Message::new(m));
    }
}

fn send(child: &impl AsRawFd, bytes: &[u8]) {
    nix::sys::socket::send(child.as_raw_fd(), bytes, MsgFlags::empty()).unwrap();
}

/// The next packet waiting for the child; None when there is none yet.
fn recv(child: &impl AsRawFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1 << 16];
    match nix::sys::socket::recv(child.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(nix::errno::Errno::EAGAIN) => None,
        Err(e) => panic!("recv: {e}"),
    }
}

fn status<'a>(all: &'a [QueueStatus], name: &str, removed: bool) -> &'a QueueStatus {
    all.iter()
        .find(|s| s.name == name && s.removed == removed)
        .unwrap_or_else(|| panic!("no queue {name} (removed: {removed}) in {all:?}"))
}

/// A broker with one consumer child (pid 42, token 101) holding two
/// messages; returns the child's end.
fn with_consumer(delivery: Delivery) -> (Broker, Epoll, UnixStream) {
    let mut broker = Broker::new(&config(delivery));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    push(&mut broker, "jobs", &[b"one", b"two"]);
    broker.deliver(&epoll, &q("jobs"));
    (broker, epoll, child)
}

#[test]
fn acks_sent_just_before_a_consumer_exits_count() {
    let (mut broker, epoll, child) = with_consumer(Delivery::AtLeastOnce);
    for _ in 0..2 {
        assert!(recv(&child).is_some());
        send(&child, b"ack");
    }
    drop(child);
    // The exit is handled before the acks were read by the loop.
    broker.child_exited(&epoll, Pid(42));
    let q = &broker.status()[0];
    assert_eq!((q.acked, q.depth, q.in_flight, q.redelivered), (2, 0, 0, 0));
}

/// Regression: a consumer that exits with messages unread in its socket
/// makes the kernel report ECONNRESET once, before the acks it sent last;
/// that error closed the socket and the acks were lost (redelivered).
#[test]
fn acks_before_an_exit_with_unread_messages_still_count() {
    let (mut broker, epoll, child) = with_consumer(Delivery::AtLeastOnce);
    assert_eq!(recv(&child).as_deref(), Some(b"one".as_slice()));
    send(&child, b"ack");
    drop(child); // "two" is still unread in its socket
    broker.child_exited(&epoll, Pid(42));
    let q = &broker.status()[0];
    assert_eq!((q.acked, q.depth, q.in_flight), (1, 1, 0), "{q:?}");
}

#[test]
fn an_at_least_once_consumer_that_dies_returns_its_messages() {
    let (mut broker, epoll, child) = with_consumer(Delivery::AtLeastOnce);
    drop(child);
    broker.child_exited(&epoll, Pid(42));
    let q = &broker.status()[0];
    assert_eq!((q.delivered, q.depth, q.in_flight, q.lost), (2, 2, 0, 0));
}

#[test]
fn an_at_most_once_consumer_that_dies_unread_loses_and_counts() {
    let (mut broker, epoll, child) = with_consumer(Delivery::AtMostOnce);
    drop(child);
    broker.child_exited(&epoll, Pid(42));
    let q = &broker.status()[0];
    assert_eq!((q.delivered, q.depth, q.lost, q.redelivered), (2, 0, 2, 0));
}

#[test]
fn nothing_unread_means_the_consumer_read_it_all() {
    let (ours, theirs) = crate::sys::seqpacket_pair().unwrap();
    nix::sys::socket::send(ours.as_raw_fd(), b"x", MsgFlags::empty()).unwrap();
    let pending = crate::sys::unread_by_peer(&ours).unwrap();
    assert!(
        pending >= endpoint::NOTHING_UNREAD,
        "one unread packet accounts for {pending}"
    );
    let mut buf = [0u8; 4];
    nix::sys::socket::recv(theirs.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
    assert!(crate::sys::unread_by_peer(&ours).unwrap() < endpoint::NOTHING_UNREAD);
}

#[test]
fn exits_are_indexed_by_pid() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let _a = attach(&mut broker, &epoll, 1, "jobs", Direction::In, 11);
    let _b = attach(&mut broker, &epoll, 2, "jobs", Direction::In, 12);
    broker.child_exited(&epoll, Pid(1));
    assert!(!broker.owns(11) && broker.owns(12));
    assert_eq!(broker.by_pid.keys().collect::<Vec<_>>(), [&Pid(2)]);
    broker.child_exited(&epoll, Pid(1)); // twice, or a PID never seen: nothing
    assert!(broker.owns(12));
}

/// Regression: a producer paused on a full queue that a reload removes
/// is read again, its packets dead-lettered rather than left unread.
#[test]
fn a_paused_producer_of_a_removed_queue_is_read_into_dead_letters() {
    let state = State::new("paused");
    let cfg = config_of(vec![spec("jobs")], state.0.clone());
    let mut broker = Broker::new(&cfg);
    let epoll = epoll();
    push(&mut broker, "jobs", &[b"old".as_slice(); 10]);
    let child = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    assert!(
        broker.endpoints[&200].interest.is_empty(),
        "paused: the queue is full"
    );
    send(&child, b"new");
    broker.apply(&config_of(vec![], state.0.clone()), &epoll);
    assert_eq!(broker.endpoints[&200].interest, EpollFlags::EPOLLIN);
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    let records = state.records(&broker, "jobs");
    assert_eq!(
        records.len(),
        11,
        "10 queued + the paused producer's packet"
    );
    assert_eq!(records[10]["message"], "new");
}

// ------------------------------------------------ removed queues (defect 1)

/// A consumer holding two messages of `jobs`, which a reload then removes.
fn removed_while_held(state: &State) -> (Broker, Epoll, UnixStream) {
    let cfg = config_of(vec![spec("jobs")], state.0.clone());
    let mut broker = Broker::new(&cfg);
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    push(&mut broker, "jobs", &[b"one", b"two", b"three"]);
    {
        let core = broker.queues.get_mut(&q("jobs")).unwrap();
        let mut spec = core.spec.clone();
        spec.prefetch = 2;
        core.set_spec(spec);
    }
    broker.deliver(&epoll, &q("jobs"));
    broker.apply(&config_of(vec![], state.0.clone()), &epoll);
    (broker, epoll, child)
}

/// Regression: an ack or nack for a message of a removed queue aborted
/// drover (`expect("endpoint's queue exists")`).
#[test]
fn messages_in_flight_of_a_removed_queue_stay_settleable() {
    let state = State::new("removed-settle");
    let (mut broker, epoll, child) = removed_while_held(&state);
    let records = state.records(&broker, "jobs");
    assert_eq!(records.len(), 1, "only the ready one left at the removal");
    assert_eq!(records[0]["message"], "three");
    let s = broker.status();
    let jobs = status(&s, "jobs", true);
    assert_eq!((jobs.in_flight, jobs.dead_lettered), (2, 1), "{jobs:?}");

    send(&child, b"ack");
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    let s = broker.status();
    let jobs = status(&s, "jobs", true);
    assert_eq!((jobs.in_flight, jobs.acked), (1, 1), "the ack dropped one");

    send(&child, b"nack");
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    let records = state.records(&broker, "jobs");
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["message"], "two");
    let reason = records[1]["reason"].as_str().unwrap();
    assert!(
        reason.contains("removed") && reason.contains("nack"),
        "{reason}"
    );
    assert!(broker.status().is_empty(), "nothing in flight: not listed");

    // Anything more on that socket is refused, harmlessly.
    for packet in [b"ack".as_slice(), b"nack", b"", b"garbage that is long"] {
        send(&child, packet);
    }
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    assert!(broker.owns(101), "an empty packet is not the end");
    drop(child);
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP);
    assert!(!broker.owns(101));
    assert!(broker.retired.is_empty(), "forgotten once nothing needs it");
}

#[test]
fn a_consumer_that_exits_holding_messages_of_a_removed_queue_dead_letters_them() {
    let state = State::new("removed-exit");
    let (mut broker, epoll, child) = removed_while_held(&state);
    drop(child);
    broker.child_exited(&epoll, Pid(42));
    let messages: Vec<_> = state
        .records(&broker, "jobs")
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, ["three", "one", "two"]);
    assert!(broker.retired.is_empty() && broker.status().is_empty());
}

#[test]
fn dead_letters_of_a_removed_queue_go_to_its_dead_letter_queue_if_it_remains() {
    let state = State::new("removed-dlq");
    let mut jobs = spec("jobs");
    jobs.dead_letter = Some(q("dead"));
    let mut broker = Broker::new(&config_of(vec![jobs, spec("dead")], state.0.clone()));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    push(&mut broker, "jobs", &[b"held", b"ready"]);
    {
        let core = broker.queues.get_mut(&q("jobs")).unwrap();
        let mut spec = core.spec.clone();
        spec.prefetch = 1;
        core.set_spec(spec);
    }
    broker.deliver(&epoll, &q("jobs"));
    broker.apply(&config_of(vec![spec("dead")], state.0.clone()), &epoll);
    send(&child, b"nack");
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    assert_eq!(broker.queues[&q("dead")].depth(), 2);
    assert!(state.records(&broker, "jobs").is_empty());
}

/// The queue is removed, then added back while an old consumer still holds
/// a message of the first incarnation: its ack settles that one, and then
/// it consumes from the new queue.
#[test]
fn a_queue_added_back_serves_old_consumers_after_they_settle() {
    let state = State::new("readded");
    let (mut broker, epoll, child) = removed_while_held(&state);
    broker.apply(&config_of(vec![spec("jobs")], state.0.clone()), &epoll);
    push(&mut broker, "jobs", &[b"new"]);
    broker.deliver(&epoll, &q("jobs"));
    for _ in 0..3 {
        assert!(recv(&child).is_some(), "one, two, then new");
    }
    for _ in 0..3 {
        send(&child, b"ack");
    }
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    let s = broker.status();
    assert_eq!(s.len(), 1, "{s:?}");
    let jobs = status(&s, "jobs", false);
    assert_eq!(
        (jobs.delivered, jobs.acked, jobs.in_flight),
        (1, 1, 0),
        "{jobs:?}"
    );
    assert!(broker.retired.is_empty());
}

/// Removed, added back, removed again: a consumer holding messages of
/// both incarnations settles them in the order it got them.
#[test]
fn a_queue_removed_twice_keeps_the_order_of_what_consumers_hold() {
    let state = State::new("twice");
    let (mut broker, epoll, child) = removed_while_held(&state);
    broker.apply(&config_of(vec![spec("jobs")], state.0.clone()), &epoll);
    push(&mut broker, "jobs", &[b"new"]);
    broker.deliver(&epoll, &q("jobs"));
    broker.apply(&config_of(vec![], state.0.clone()), &epoll);
    for _ in 0..3 {
        send(&child, b"nack");
    }
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    let messages: Vec<_> = state
        .records(&broker, "jobs")
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, ["three", "one", "two", "new"]);
}

#[test]
fn a_producer_of_a_removed_queue_is_dead_lettered_and_bounded_per_event() {
    let state = State::new("removed-producer");
    let mut broker = Broker::new(&config_of(vec![spec("jobs")], state.0.clone()));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    broker.apply(&config_of(vec![], state.0.clone()), &epoll);
    // Room for more packets than one event reads.
    nix::sys::socket::setsockopt(&child, nix::sys::socket::sockopt::SndBuf, &(1 << 20)).unwrap();
    child.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < READ_BUDGET + 10
        && nix::sys::socket::send(child.as_raw_fd(), b"x", MsgFlags::MSG_DONTWAIT).is_ok()
    {
        sent += 1;
    }
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    let after_one = state.records(&broker, "jobs").len();
    assert!(after_one <= READ_BUDGET, "{after_one} read in one event");
    while state.records(&broker, "jobs").len() < sent {
        broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    }
    drop(child);
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    assert!(!broker.owns(200) && broker.retired.is_empty());
}

// ---------------------------------------- empty packets (defect 3)

/// Regression: a zero-length packet was taken for the producer closing
/// its socket, and everything it sent after was lost.
#[test]
fn an_empty_packet_is_refused_and_nothing_around_it_is_lost() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    for m in [b"a".as_slice(), b"", b"b"] {
        send(&child, m);
    }
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    assert!(broker.owns(200), "the producer is still there");
    send(&child, b"c");
    send(&child, b"");
    send(&child, b"d");
    drop(child); // closed with packets still queued behind an empty one
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP);
    assert!(!broker.owns(200), "then the end of the stream");
    let s = &broker.status()[0];
    assert_eq!((s.depth, s.refused), (4, 2), "{s:?}");
}

#[test]
fn an_empty_packet_from_a_consumer_is_not_its_end() {
    let (mut broker, epoll, child) = with_consumer(Delivery::AtLeastOnce);
    send(&child, b"");
    send(&child, b"ack");
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    assert!(broker.owns(101));
    let s = &broker.status()[0];
    assert_eq!((s.acked, s.refused, s.in_flight), (1, 1, 1), "{s:?}");
}

// ------------------------------- producers outlive their child (defect 4)

/// Regression: at a producer's exit its socket was read once and closed,
/// so what a grandchild holding the same socket sent afterwards was lost.
#[test]
fn a_producer_socket_is_read_until_every_holder_has_closed_it() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    let grandchild = child.try_clone().unwrap();
    send(&child, b"before");
    drop(child);
    broker.child_exited(&epoll, Pid(7));
    assert!(broker.owns(200), "a grandchild still holds it");
    send(&grandchild, b"after");
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    assert!(broker.owns(200));
    drop(grandchild);
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP);
    assert!(!broker.owns(200));
    assert_eq!(broker.status()[0].depth, 2);
}

#[test]
fn a_dead_producer_still_gets_back_pressure() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    for i in 0..15u8 {
        send(&child, &[b'm', i]);
    }
    drop(child);
    broker.child_exited(&epoll, Pid(7));
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP);
    assert_eq!(broker.status()[0].depth, 10, "capacity, not more");
    assert!(broker.owns(200) && broker.endpoints[&200].interest.is_empty());
    let mut roomy = config(Delivery::AtLeastOnce);
    roomy.queues.get_mut(&q("jobs")).unwrap().capacity = 20;
    broker.apply(&roomy, &epoll);
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP);
    assert_eq!(broker.status()[0].depth, 15);
    assert!(!broker.owns(200));
}

/// Producers that exit while their queue stays full: an empty socket is
/// closed at once; ones with packets wait for room, at most
/// EXITED_WAITING of them, and past that the oldest one's packets are
/// dead-lettered (counted and recorded, not lost) and it is closed. They
/// used to stay open, unwatched, until the queue had room: an fd and a
/// socket buffer per restart.
#[test]
fn producers_that_exit_on_a_full_queue_leave_a_bounded_number_of_sockets() {
    let state = State::new("exited-producers");
    let mut broker = Broker::new(&config_of(vec![spec("jobs")], state.0.clone()));
    let epoll = epoll();
    let full: Vec<Vec<u8>> = (0..10).map(|i| format!("m{i}").into_bytes()).collect();
    push(
        &mut broker,
        "jobs",
        &full.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    );
    let producers = super::EXITED_WAITING as i32 + 8;
    for pid in 1..=producers {
        let token = 1000 + pid as u64;
        let child = attach(&mut broker, &epoll, pid, "jobs", Direction::Out, token);
        assert!(broker.endpoints[&token].interest.is_empty(), "paused");
        send(&child, format!("from {pid}").as_bytes());
        drop(child);
        broker.child_exited(&epoll, Pid(pid));
    }
    let empty = attach(&mut broker, &epoll, 999, "jobs", Direction::Out, 999);
    drop(empty);
    broker.child_exited(&epoll, Pid(999));
    assert!(
        !broker.owns(999),
        "an exited producer's empty socket is closed"
    );
    assert_eq!(broker.endpoints.len(), super::EXITED_WAITING);
    let s = broker.status();
    assert_eq!(status(&s, "jobs", false).dead_lettered, 8);
    let records = state.records(&broker, "jobs");
    let messages: Vec<&str> = records
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        (1..=8).map(|p| format!("from {p}")).collect::<Vec<_>>()
    );
    // Room again: the ones that waited are read, then closed.
    let mut roomy = config_of(vec![spec("jobs")], state.0.clone());
    roomy.queues.get_mut(&q("jobs")).unwrap().capacity = 100;
    broker.apply(&roomy, &epoll);
    while pump(&mut broker, &epoll) > 0 {}
    assert_eq!(broker.status()[0].depth, 10 + super::EXITED_WAITING as u64);
    assert!(broker.endpoints.is_empty(), "{:?}", broker.endpoints.keys());
}

// ------------------------------------------ bounded dead letters (defect 2)

/// A producer of `jobs` (dead letters to `dead`, capacity 2) sending
/// `n` oversized messages.
fn oversized_into(state: &State, n: usize, max_bytes: u64) -> Broker {
    let mut jobs = spec("jobs");
    jobs.dead_letter = Some(q("dead"));
    let mut dead = spec("dead");
    dead.capacity = 2;
    let mut cfg = config_of(vec![jobs, dead], state.0.clone());
    cfg.supervisor.dead_letter_max_bytes = max_bytes;
    let mut broker = Broker::new(&cfg);
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    for _ in 0..n {
        send(&child, &[b'x'; 150]);
    }
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    broker
}

/// Regression: dead letters were pushed into the dead-letter queue
/// whatever its capacity (59,683 messages against a capacity of 20).
#[test]
fn a_full_dead_letter_queue_does_not_grow() {
    let state = State::new("dlq-full");
    let broker = oversized_into(&state, 10, u64::MAX);
    assert_eq!(broker.queues[&q("dead")].depth(), 2);
    assert_eq!(
        state.records(&broker, "jobs").len(),
        8,
        "the rest in the record file"
    );
    let s = broker.status();
    assert_eq!(status(&s, "jobs", false).dead_lettered, 10);
    assert_eq!(status(&s, "jobs", false).refused, 10);
}

#[test]
fn the_record_file_stops_at_dead_letter_max_bytes() {
    let state = State::new("dl-max");
    let broker = oversized_into(&state, 10, 1000);
    assert!(broker.recorder.flush(Duration::from_secs(60)));
    let size = std::fs::metadata(deadletter::path(&state.0, &q("jobs")))
        .unwrap()
        .len();
    assert!(size <= 1000, "{size}");
    assert!(state.records(&broker, "jobs").len() < 8);
    assert_eq!(status(&broker.status(), "jobs", false).dead_lettered, 10);
}

#[test]
fn an_unwritable_state_dir_is_counted_not_fatal() {
    let state = State::new("dl-unwritable");
    std::fs::write(&state.0, b"a file where a directory should be").unwrap();
    let broker = oversized_into(&state, 10, u64::MAX);
    assert_eq!(status(&broker.status(), "jobs", false).dead_lettered, 10);
    let _ = std::fs::remove_file(&state.0);
}

/// A message larger than a consumer's socket can take is dead-lettered;
/// it used to make every consumer look gone, one after the other.
#[test]
fn a_message_no_socket_can_take_is_dead_lettered_and_the_consumer_kept() {
    let state = State::new("emsgsize");
    let mut broker = Broker::new(&config_of(vec![spec("jobs")], state.0.clone()));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    push(&mut broker, "jobs", &[&vec![b'x'; 4 << 20], b"small"]);
    broker.deliver(&epoll, &q("jobs"));
    assert!(broker.owns(101));
    assert_eq!(recv(&child).as_deref(), Some(b"small".as_slice()));
    assert_eq!(state.records(&broker, "jobs").len(), 1);
}

/// A stored message no socket can take leaves the store (or its Redis
/// stream) with its dead letter: it used to stay stored, to be read back
/// and dead-lettered again at every start.
#[test]
fn a_message_no_socket_can_take_is_forgotten_by_the_store() {
    let state = State::new("emsgsize-stored");
    let mut broker = Broker::new(&config_of(vec![spec("jobs")], state.0.clone()));
    let epoll = epoll();
    let _child = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    let jobs = broker.queues.get_mut(&q("jobs")).unwrap();
    jobs.push(Message {
        bytes: vec![b'x'; 4 << 20].into(),
        deliveries: 0,
        id: Some(7),
    });
    jobs.take_ops();
    broker.deliver(&epoll, &q("jobs"));
    let ops = broker.queues.get_mut(&q("jobs")).unwrap().take_ops();
    assert_eq!(ops.forget, [7], "{ops:?}");
    assert_eq!(state.records(&broker, "jobs").len(), 1);
}

#[test]
fn the_scratch_buffer_fits_the_largest_message_within_bounds() {
    let mut big = spec("big");
    big.max_message_bytes = 3 << 20;
    let broker = Broker::new(&config_of(vec![spec("a"), big], std::env::temp_dir()));
    assert_eq!(broker.scratch_len, (3 << 20) + 1);
    let mut huge = spec("huge");
    huge.max_message_bytes = u32::MAX;
    let broker = Broker::new(&config_of(vec![huge], std::env::temp_dir()));
    assert_eq!(broker.scratch_len, MAX_MESSAGE_BYTES + 1);
    let broker = Broker::new(&config_of(vec![spec("a")], std::env::temp_dir()));
    assert_eq!(broker.scratch_len, MIN_SCRATCH);
}

// ---------------------------------------------- rate-limited logs (defect 6)

#[test]
fn a_flood_of_bogus_acks_is_counted_and_summarised() {
    let (mut broker, epoll, child) = with_consumer(Delivery::AtLeastOnce);
    child.set_nonblocking(true).unwrap();
    let mut sent = 0u64;
    while sent < 5000
        && nix::sys::socket::send(child.as_raw_fd(), b"bogus", MsgFlags::MSG_DONTWAIT).is_ok()
    {
        sent += 1;
    }
    while broker.status()[0].refused < sent {
        broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    }
    let summary_at = broker.deadline().expect("suppressed lines are summarised");
    assert!(broker.on_deadline(&epoll, summary_at).is_empty());
    assert_eq!(broker.deadline(), None, "summarised once");
}

// ------------------------------------------------------ ack_timeout (defect 5)

fn with_ack_timeout(max_deliveries: u32) -> (Broker, Epoll, UnixStream) {
    let mut cfg = config(Delivery::AtLeastOnce);
    let jobs = cfg.queues.get_mut(&q("jobs")).unwrap();
    jobs.ack_timeout = Duration::from_secs(30);
    jobs.max_deliveries = max_deliveries;
    jobs.prefetch = 1;
    let mut broker = Broker::new(&cfg);
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    push(&mut broker, "jobs", &[b"one", b"two"]);
    broker.deliver(&epoll, &q("jobs"));
    (broker, epoll, child)
}

#[test]
fn a_consumer_holding_a_message_past_ack_timeout_is_hung() {
    let (mut broker, epoll, child) = with_ack_timeout(5);
    let deadline = broker.deadline().expect("armed at the delivery");
    assert!(deadline > Instant::now() + Duration::from_secs(20));
    assert!(
        broker
            .on_deadline(&epoll, deadline - Duration::from_millis(1))
            .is_empty()
    );
    assert_eq!(broker.on_deadline(&epoll, deadline), [Pid(42)]);
    assert!(!broker.owns(101), "its input is closed");
    let s = &broker.status()[0];
    assert_eq!((s.depth, s.in_flight, s.delivered), (2, 0, 1), "{s:?}");
    // The child sees its message, then the end of the queue.
    assert_eq!(recv(&child).as_deref(), Some(b"one".as_slice()));
    assert_eq!(recv(&child).as_deref(), Some(b"".as_slice()));
    assert_eq!(broker.deadline(), None);
}

#[test]
fn a_message_that_hangs_its_consumer_ends_in_the_dead_letters() {
    let state = State::new("hang-poison");
    let (mut broker, epoll, _child) = with_ack_timeout(1);
    broker.state_dir = state.0.clone();
    broker.recorder = super::recorder::Recorder::new(state.0.clone(), u64::MAX);
    let deadline = broker.deadline().unwrap();
    assert_eq!(broker.on_deadline(&epoll, deadline), [Pid(42)]);
    let records = state.records(&broker, "jobs");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["message"], "one");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("ack_timeout")
    );
}

#[test]
fn a_consumer_that_settles_in_time_is_never_hung() {
    let (mut broker, epoll, child) = with_ack_timeout(5);
    let first = broker.deadline().unwrap();
    assert_eq!(recv(&child).as_deref(), Some(b"one".as_slice()));
    send(&child, b"ack");
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    // "two" was delivered after the ack: the armed time is early; when it
    // comes, the real deadline (two's) is armed instead.
    assert!(broker.on_deadline(&epoll, first).is_empty());
    let second = broker.deadline().unwrap();
    assert!(second >= first);
    assert!(broker.owns(101));
    assert_eq!(recv(&child).as_deref(), Some(b"two".as_slice()));
    send(&child, b"ack");
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    assert!(broker.on_deadline(&epoll, second).is_empty());
    assert_eq!(broker.deadline(), None, "nothing held, nothing armed");
}

#[test]
fn an_ack_timeout_set_by_a_reload_applies_to_messages_already_held() {
    let (mut broker, epoll, _child) = with_consumer(Delivery::AtLeastOnce);
    assert_eq!(broker.deadline(), None);
    let mut cfg = config(Delivery::AtLeastOnce);
    cfg.queues.get_mut(&q("jobs")).unwrap().ack_timeout = Duration::from_secs(1);
    broker.apply(&cfg, &epoll);
    let deadline = broker.deadline().expect("armed by the reload");
    assert_eq!(broker.on_deadline(&epoll, deadline), [Pid(42)]);
}

/// An at-most-once consumer is watched edge-triggered: when one event's
/// read budget leaves packets behind, it must be reported again.
#[test]
fn an_edge_triggered_consumer_left_with_packets_is_reported_again() {
    let (mut broker, epoll, child) = with_consumer(Delivery::AtMostOnce);
    nix::sys::socket::setsockopt(&child, nix::sys::socket::sockopt::SndBuf, &(1 << 20)).unwrap();
    child.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < READ_BUDGET + 10
        && nix::sys::socket::send(child.as_raw_fd(), b"x", MsgFlags::MSG_DONTWAIT).is_ok()
    {
        sent += 1;
    }
    assert!(sent > READ_BUDGET, "only {sent} packets fit");
    let mut events = [nix::sys::epoll::EpollEvent::empty(); 4];
    let n = epoll.wait(&mut events, 0u8).unwrap();
    assert_eq!((n, events[0].data()), (1, 101));
    broker.on_event(&epoll, 101, events[0].events());
    let n = epoll.wait(&mut events, 0u8).unwrap();
    assert_eq!((n, events[0].data()), (1, 101), "reported again");
    broker.on_event(&epoll, 101, events[0].events());
    assert_eq!(broker.status()[0].refused, sent as u64);
}

/// A reload's summary names the queues it added, removed and changed; a
/// queue only moved to another file is not changed.
#[test]
fn a_reload_reports_the_queues_it_added_removed_and_changed() {
    let state = State::new("queue-changes");
    let cfg = config_of(
        vec![spec("kept"), spec("moved"), spec("gone")],
        state.0.clone(),
    );
    let mut broker = Broker::new(&cfg);
    let epoll = epoll();
    let mut kept = spec("kept");
    kept.capacity = 20;
    let mut moved = spec("moved");
    moved.file = "/elsewhere.toml".into();
    let next = config_of(vec![kept, moved, spec("new")], state.0.clone());
    assert_eq!(
        broker.apply(&next, &epoll),
        QueueChanges {
            added: vec![q("new")],
            removed: vec![q("gone")],
            changed: vec![q("kept")],
        }
    );
    assert_eq!(broker.apply(&next, &epoll), QueueChanges::default());
}

// ------------------------------------------------------ producer confirms

/// A producer (pid 7, token 200) of `jobs` with confirms.
fn confirmed_producer(broker: &mut Broker, epoll: &Epoll) -> UnixStream {
    attach_end(broker, epoll, (7, "jobs", Direction::Out, true), 200)
}

/// Every packet waiting for the child, as text.
fn replies(child: &impl AsRawFd) -> Vec<String> {
    std::iter::from_fn(|| recv(child))
        .map(|p| String::from_utf8(p).unwrap())
        .collect()
}

/// Hands what epoll reports ready now to the broker, as the event loop
/// does; returns how many events there were.
fn pump(broker: &mut Broker, epoll: &Epoll) -> usize {
    let mut events = [nix::sys::epoll::EpollEvent::empty(); 16];
    let n = epoll.wait(&mut events, 0u8).unwrap();
    for e in &events[..n] {
        broker.on_event(epoll, e.data(), e.events());
    }
    n
}

#[test]
fn every_message_gets_ok_in_order() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let child = confirmed_producer(&mut broker, &epoll);
    for m in [b"a".as_slice(), b"b", b"c"] {
        send(&child, m);
    }
    assert_eq!(pump(&mut broker, &epoll), 1);
    assert_eq!(replies(&child), ["ok", "ok", "ok"]);
    let s = &broker.status()[0];
    assert_eq!((s.depth, s.confirmed, s.refused), (3, 3, 0), "{s:?}");
    let got: Vec<_> = broker.queues.get_mut(&q("jobs")).unwrap().drain_all();
    let got: Vec<_> = got.into_iter().map(|m| m.bytes.to_vec()).collect();
    assert_eq!(got, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

#[test]
fn refused_packets_get_no_with_the_reason_in_order() {
    let state = State::new("confirm-no");
    let mut broker = Broker::new(&config_of(vec![spec("jobs")], state.0.clone()));
    let epoll = epoll();
    let child = confirmed_producer(&mut broker, &epoll);
    for m in [b"a".as_slice(), b"", &[b'x'; 101], &[b'y'; 100]] {
        send(&child, m);
    }
    pump(&mut broker, &epoll);
    assert_eq!(replies(&child), ["ok", "no empty", "no too large", "ok"]);
    let s = &broker.status()[0];
    assert_eq!(
        (s.depth, s.confirmed, s.refused, s.dead_lettered),
        (2, 2, 2, 1),
        "{s:?}"
    );
    let records = state.records(&broker, "jobs");
    assert_eq!(records.len(), 1, "the oversized one is dead-lettered");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes")
    );
}

#[test]
fn a_packet_for_a_removed_queue_gets_no_queue_removed() {
    let state = State::new("confirm-removed");
    let mut broker = Broker::new(&config_of(vec![spec("jobs")], state.0.clone()));
    let epoll = epoll();
    let child = confirmed_producer(&mut broker, &epoll);
    send(&child, b"before");
    pump(&mut broker, &epoll);
    assert_eq!(replies(&child), ["ok"]);
    broker.apply(&config_of(vec![], state.0.clone()), &epoll);
    send(&child, b"after");
    send(&child, b"");
    pump(&mut broker, &epoll);
    assert_eq!(replies(&child), ["no queue removed", "no empty"]);
    let records = state.records(&broker, "jobs");
    let messages: Vec<_> = records.iter().map(|r| r["message"].clone()).collect();
    assert_eq!(messages, ["before", "after"], "dead-lettered as before");
    drop(child);
    pump(&mut broker, &epoll);
    assert!(!broker.owns(200) && broker.retired.is_empty());
}

#[test]
fn a_queue_without_confirms_sends_producers_nothing() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    for m in [b"a".as_slice(), b"", &[b'x'; 101]] {
        send(&child, m);
    }
    pump(&mut broker, &epoll);
    assert_eq!(recv(&child), None);
    let s = &broker.status()[0];
    assert_eq!((s.depth, s.refused, s.confirmed), (1, 2, 0), "{s:?}");
    assert!(!s.confirm);
}

/// A producer that sends without reading its replies fills its socket
/// with them; then it is no longer read (its sends block), and nothing is
/// lost: once it reads, every message gets its one reply.
#[test]
fn a_producer_that_does_not_read_its_confirms_is_not_read() {
    let mut cfg = config(Delivery::AtLeastOnce);
    cfg.queues.get_mut(&q("jobs")).unwrap().capacity = 1_000_000;
    let mut broker = Broker::new(&cfg);
    let epoll = epoll();
    let child = confirmed_producer(&mut broker, &epoll);
    child.set_nonblocking(true).unwrap();
    let depth = |b: &Broker| b.status()[0].depth;
    let mut sent = 0u64;
    // Send while the socket takes it, let the broker read, again: until
    // the broker stops reading and the producer's socket is full.
    for round in 0.. {
        assert!(round < 10_000, "the broker never stopped reading");
        while nix::sys::socket::send(child.as_raw_fd(), b"m", MsgFlags::MSG_DONTWAIT).is_ok() {
            sent += 1;
        }
        let events = pump(&mut broker, &epoll);
        if broker.endpoints[&200].interest == EpollFlags::EPOLLOUT {
            assert_eq!(events, 1);
            break;
        }
    }
    // Its socket fills up and stays full: its sends block.
    while nix::sys::socket::send(child.as_raw_fd(), b"m", MsgFlags::MSG_DONTWAIT).is_ok() {
        sent += 1;
    }
    let accepted = depth(&broker);
    assert!(accepted > 0 && accepted < sent, "{accepted} of {sent}");
    let replies_held = broker.endpoints[&200]
        .replies
        .as_ref()
        .unwrap()
        .backlog_len();
    assert!(replies_held <= confirm::BACKLOG, "{replies_held}");
    // Stalled: nothing is read, nothing is reported.
    assert_eq!(pump(&mut broker, &epoll), 0);
    assert_eq!(depth(&broker), accepted);
    let more = nix::sys::socket::send(child.as_raw_fd(), b"m", MsgFlags::MSG_DONTWAIT);
    assert_eq!(more, Err(nix::errno::Errno::EAGAIN));

    // The producer reads its replies; the broker catches up.
    let mut got = Vec::new();
    for round in 0.. {
        assert!(round < 100_000, "stuck: {} replies of {sent}", got.len());
        got.extend(replies(&child));
        if got.len() as u64 == sent {
            break;
        }
        pump(&mut broker, &epoll);
    }
    assert!(got.iter().all(|r| r == "ok"));
    let s = &broker.status()[0];
    assert_eq!((s.depth, s.confirmed, s.refused), (sent, sent, 0), "{s:?}");
    assert_eq!(recv(&child), None, "exactly one reply per message");
    assert_eq!(broker.endpoints[&200].interest, EpollFlags::EPOLLIN);
}

/// A producer that exits without reading its replies: what it sent is
/// still taken, and the endpoint closes.
#[test]
fn a_producer_gone_with_replies_unread_loses_nothing() {
    let mut cfg = config(Delivery::AtLeastOnce);
    cfg.queues.get_mut(&q("jobs")).unwrap().capacity = 1_000_000;
    let mut broker = Broker::new(&cfg);
    let epoll = epoll();
    let child = confirmed_producer(&mut broker, &epoll);
    child.set_nonblocking(true).unwrap();
    let mut sent = 0u64;
    while broker.endpoints[&200].interest != EpollFlags::EPOLLOUT {
        while nix::sys::socket::send(child.as_raw_fd(), b"m", MsgFlags::MSG_DONTWAIT).is_ok() {
            sent += 1;
        }
        pump(&mut broker, &epoll);
    }
    drop(child);
    for _ in 0..1000 {
        if pump(&mut broker, &epoll) == 0 {
            break;
        }
    }
    assert!(!broker.owns(200), "closed once read to the end");
    let s = &broker.status()[0];
    assert_eq!(s.depth, sent, "{s:?}");
    assert!(s.confirmed < sent);
}

mod durable;

// ------------------------------------------- batched reads (recvmmsg)

/// Reads every message the consumer `child` (token 101) is handed,
/// acknowledging each, until `n` have come.
fn consume_all(broker: &mut Broker, epoll: &Epoll, child: &UnixStream, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for _ in 0..10 * n {
        while let Some(m) = recv(child) {
            got.push(m);
            send(child, b"ack");
        }
        if got.len() >= n {
            break;
        }
        pump(broker, epoll);
    }
    got
}

#[test]
fn a_batch_stops_at_capacity_and_order_is_kept_across_batches() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let producer = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    let sent: Vec<Vec<u8>> = (0..25u8).map(|i| vec![b'm', i]).collect();
    for m in &sent {
        send(&producer, m);
    }
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    assert_eq!(broker.status()[0].depth, 10, "capacity, not a whole batch");
    let consumer = attach(&mut broker, &epoll, 8, "jobs", Direction::In, 101);
    let got = consume_all(&mut broker, &epoll, &consumer, sent.len());
    assert_eq!(got, sent, "every message, in order");
}

/// A batch cut short because the socket had no more (the kernel's
/// EAGAIN ends the `recvmmsg`): what comes later is read at the next
/// event, and the producer stays watched.
#[test]
fn a_short_batch_leaves_the_producer_watched_for_the_rest() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let producer = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    for m in [b"a", b"b", b"c"] {
        send(&producer, m);
    }
    assert_eq!(pump(&mut broker, &epoll), 1);
    assert_eq!(broker.status()[0].depth, 3);
    assert_eq!(broker.endpoints[&200].interest, EpollFlags::EPOLLIN);
    assert_eq!(pump(&mut broker, &epoll), 0, "nothing more reported");
    send(&producer, b"d");
    send(&producer, b"e");
    assert_eq!(pump(&mut broker, &epoll), 1);
    assert_eq!(broker.status()[0].depth, 5);
}

/// An oversized packet in the middle of a batch is dead-lettered whole;
/// the packets around it are taken.
#[test]
fn an_oversized_packet_within_a_batch_is_dead_lettered_whole() {
    let state = State::new("batch-oversized");
    let mut broker = Broker::new(&config_of(vec![spec("jobs")], state.0.clone()));
    let epoll = epoll();
    let producer = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    nix::sys::socket::setsockopt(&producer, nix::sys::socket::sockopt::SndBuf, &(1 << 18)).unwrap();
    let big = vec![b'z'; 100_000];
    for m in [b"a".as_slice(), &big, b"b"] {
        send(&producer, m);
    }
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    let s = &broker.status()[0];
    assert_eq!((s.depth, s.refused, s.dead_lettered), (2, 1, 1), "{s:?}");
    let records = state.records(&broker, "jobs");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["bytes"], 100_000);
    assert!(
        !records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("could be kept"),
        "kept whole: {}",
        records[0]["reason"]
    );
}

/// A producer that sends and closes at once: the batch that reads its
/// last packets also meets the end of its stream, and an empty packet
/// before the last real one is still only refused.
#[test]
fn a_batch_that_reaches_the_end_of_the_stream_keeps_what_came_before() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let producer = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    for m in [b"a".as_slice(), b"", b"b", b"c"] {
        send(&producer, m);
    }
    drop(producer);
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP);
    assert!(!broker.owns(200), "the end of the stream");
    let s = &broker.status()[0];
    assert_eq!((s.depth, s.refused), (3, 1), "{s:?}");
}

/// Settlements read in one batch apply in order: acks and a nack, with a
/// bogus packet among them refused.
#[test]
fn a_batch_of_settlements_applies_each_in_order() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    push(&mut broker, "jobs", &[b"1", b"2", b"3", b"4"]);
    broker.deliver(&epoll, &q("jobs"));
    for _ in 0..4 {
        assert!(recv(&child).is_some());
    }
    for m in [b"ack".as_slice(), b"nack", b"bogus", b"ack", b"ack"] {
        send(&child, m);
    }
    broker.on_event(&epoll, 101, EpollFlags::EPOLLIN);
    let s = &broker.status()[0];
    assert_eq!((s.acked, s.refused, s.redelivered), (3, 1, 1), "{s:?}");
    assert_eq!(
        recv(&child).as_deref(),
        Some(b"2".as_slice()),
        "the nacked one comes back"
    );
}

/// A consumer that dies with a batch of messages handed to it and a
/// batch of acks unread: the acks count, the rest goes back in order.
#[test]
fn a_consumer_dying_with_a_batch_in_flight_returns_the_rest_in_order() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    push(&mut broker, "jobs", &[b"1", b"2", b"3", b"4"]);
    broker.deliver(&epoll, &q("jobs"));
    assert_eq!(recv(&child).as_deref(), Some(b"1".as_slice()));
    assert_eq!(recv(&child).as_deref(), Some(b"2".as_slice()));
    send(&child, b"ack");
    send(&child, b"ack");
    drop(child); // "3" and "4" unread in its socket
    broker.child_exited(&epoll, Pid(42));
    let s = &broker.status()[0];
    assert_eq!((s.acked, s.depth, s.in_flight), (2, 2, 0), "{s:?}");
    let next = attach(&mut broker, &epoll, 43, "jobs", Direction::In, 102);
    assert_eq!(recv(&next).as_deref(), Some(b"3".as_slice()));
    assert_eq!(recv(&next).as_deref(), Some(b"4".as_slice()));
}

// ------------------------------------------ batched writes (sendmmsg)

/// A consumer's socket that fills in the middle of a batch: what it took
/// stays in flight, the rest goes back to the head in order, and once the
/// consumer has read, it gets the rest, still in order.
#[test]
fn a_socket_full_mid_batch_gives_the_rest_back_in_order() {
    let mut jobs = spec("jobs");
    jobs.capacity = 200;
    jobs.prefetch = 200;
    let mut broker = Broker::new(&config_of(vec![jobs], std::env::temp_dir()));
    let epoll = epoll();
    let child = attach(&mut broker, &epoll, 42, "jobs", Direction::In, 101);
    // The smallest send buffer the kernel allows: a few packets fill it.
    let ours = &broker.endpoints[&101].fd;
    nix::sys::socket::setsockopt(ours, nix::sys::socket::sockopt::SndBuf, &1).unwrap();
    let sent: Vec<Vec<u8>> = (0..200u8).map(|i| vec![b'm', i]).collect();
    let all: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    push(&mut broker, "jobs", &all);
    broker.deliver(&epoll, &q("jobs"));
    let s = &broker.status()[0];
    assert!(s.depth > 0, "the socket filled before 200: {s:?}");
    assert_eq!(s.depth + s.in_flight, 200, "{s:?}");
    assert!(broker.queues[&q("jobs")].is_blocked(101));
    let mut got = Vec::new();
    for _ in 0..1000 {
        while let Some(m) = recv(&child) {
            got.push(m);
        }
        if got.len() == sent.len() {
            break;
        }
        pump(&mut broker, &epoll);
    }
    assert_eq!(got, sent, "every message once, in order");
}

/// Batched writes keep the hand-out round robin message by message.
#[test]
fn batched_writes_keep_round_robin_per_message() {
    let mut broker = Broker::new(&config(Delivery::AtLeastOnce));
    let epoll = epoll();
    let a = attach(&mut broker, &epoll, 1, "jobs", Direction::In, 11);
    let b = attach(&mut broker, &epoll, 2, "jobs", Direction::In, 12);
    push(&mut broker, "jobs", &[b"1", b"2", b"3", b"4", b"5"]);
    broker.deliver(&epoll, &q("jobs"));
    let of = |c: &UnixStream| std::iter::from_fn(|| recv(c)).collect::<Vec<_>>();
    assert_eq!(of(&a), [b"1", b"3", b"5"]);
    assert_eq!(of(&b), [b"2", b"4"]);
}

// ------------------------------------ resuming producers at a low-water mark

/// A producer paused on a full queue is read again only once the queue
/// is `RESUME_GAP` (at most a quarter of `capacity`) below `capacity`,
/// not at every freed slot; nothing is lost or reordered.
#[test]
fn a_paused_producer_is_resumed_at_the_low_water_mark() {
    let mut jobs = spec("jobs");
    jobs.capacity = 40; // low-water mark: 30
    jobs.prefetch = 1;
    let mut broker = Broker::new(&config_of(vec![jobs], std::env::temp_dir()));
    let epoll = epoll();
    let producer = attach(&mut broker, &epoll, 7, "jobs", Direction::Out, 200);
    let sent: Vec<Vec<u8>> = (0..100u8).map(|i| vec![b'm', i]).collect();
    for m in &sent {
        send(&producer, m);
    }
    broker.on_event(&epoll, 200, EpollFlags::EPOLLIN);
    assert_eq!(broker.status()[0].depth, 40);
    assert!(broker.endpoints[&200].interest.is_empty(), "paused");
    let consumer = attach(&mut broker, &epoll, 8, "jobs", Direction::In, 101);
    let (mut got, mut resumed) = (Vec::new(), 0);
    for _ in 0..10_000 {
        let Some(m) = recv(&consumer) else {
            pump(&mut broker, &epoll);
            continue;
        };
        got.push(m);
        send(&consumer, b"ack");
        pump(&mut broker, &epoll);
        let depth = broker.status()[0].depth;
        let watched = !broker
            .endpoints
            .get(&200)
            .is_none_or(|ep| ep.interest.is_empty());
        if watched && depth < 40 && got.len() < 60 {
            assert!(depth <= 30, "resumed at depth {depth}, above the mark");
            resumed += 1;
        }
        if got.len() == sent.len() {
            break;
        }
    }
    assert!(resumed > 0, "resumed once below the mark");
    assert_eq!(got, sent, "every message, in order");
}
