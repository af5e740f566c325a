//! [`Queue<T>`]: a typed queue between processes over an `AF_UNIX`
//! `SOCK_SEQPACKET` socket pair, and how a queue travels to a child inside
//! a process's arguments.
//!
//! One message is one packet: the kernel never splits or merges them, so
//! any number of processes may put and get concurrently. `put` sends on one
//! end of the pair and `get` receives on the other; every process holding
//! the queue holds both ends, as with Python's `multiprocessing.Queue`.
//!
//! A queue among a process's arguments is serialised as an index into the
//! list of queues that travel with them (see [`encode_args`]); the child
//! receives the fds themselves — at fixed numbers after a spawn, through
//! SCM_RIGHTS from the fork server — and [`decode_args`] rebuilds the queue
//! around them. A fork child needs none of this: it has the parent's memory.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_sys::seqpacket_pair;
use drover_sys::wire::{Packet, recv_packet};
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, getsockopt, send, setsockopt, sockopt};
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::QueueError;
use super::wait::readable_before;

/// The default limit of one message: its JSON encoding may be this long.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What a Unix datagram needs in the sender's buffer beyond its bytes: the
/// kernel refuses a packet longer than the send buffer less this
/// (`unix_dgram_sendmsg`).
const SNDBUF_OVERHEAD: usize = 32;

/// The two ends of one queue and its message limit, shared by every clone.
pub(crate) struct Ends {
    tx: OwnedFd,
    rx: OwnedFd,
    max: usize,
}

impl fmt::Debug for Ends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("tx", &self.tx.as_raw_fd())
            .field("rx", &self.rx.as_raw_fd())
            .field("max_message_bytes", &self.max)
            .finish()
    }
}

impl Ends {
    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.tx.as_fd(), self.rx.as_fd()]
    }
}

/// A queue of `T` values between processes, like Python's
/// `multiprocessing.Queue`: any process holding a clone may [`put`] and
/// [`get`]; pass it to a child among a [`Process`]'s arguments.
///
/// Values travel as JSON (serde), one message per value. A message longer
/// than [`max_message_bytes`] is refused with [`QueueError::TooLarge`],
/// never truncated. `put` blocks while the queue holds as much as the
/// kernel buffers (about 200 KiB by default, `net.core.wmem_default`), which
/// is back-pressure: a child that puts more than that before anyone gets
/// waits for a reader, so get before you join, as with Python's queues.
///
/// [`put`]: Queue::put
/// [`get`]: Queue::get
/// [`max_message_bytes`]: Queue::max_message_bytes
/// [`Process`]: super::Process
pub struct Queue<T> {
    ends: Arc<Ends>,
    _values: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            ends: self.ends.clone(),
            _values: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ends.fmt(f)
    }
}

impl<T> Queue<T> {
    /// A new queue whose messages may be up to
    /// [`DEFAULT_MAX_MESSAGE_BYTES`] long.
    pub fn new() -> Result<Self, QueueError> {
        Self::with_max_message_bytes(DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// A new queue whose messages may be up to `max` bytes long. The
    /// socket's send buffer is raised to fit one such packet, which the
    /// kernel allows up to twice `net.core.wmem_max`; beyond that this is
    /// [`QueueError::LimitUnavailable`].
    pub fn with_max_message_bytes(max: usize) -> Result<Self, QueueError> {
        let max = max.max(1);
        let (tx, rx) = seqpacket_pair()?;
        fit_send_buffer(&tx, max)?;
        Ok(Queue {
            ends: Arc::new(Ends { tx, rx, max }),
            _values: PhantomData,
        })
    }

    /// The longest message this queue carries, in bytes of JSON.
    pub fn max_message_bytes(&self) -> usize {
        self.ends.max
    }
}

impl<T: Serialize> Queue<T> {
    /// Puts `item` on the queue, blocking while the queue is full.
    pub fn put(&self, item: impl Borrow<T>) -> Result<(), QueueError> {
        let bytes = serde_json::to_vec(item.borrow()).map_err(QueueError::Encode)?;
        let max = self.ends.max;
        if bytes.len() > max {
            return Err(QueueError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        loop {
            return match send(self.ends.tx.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EMSGSIZE) => Err(QueueError::TooLarge {
                    len: bytes.len(),
                    max,
                }),
                Err(Errno::EPIPE) => Err(QueueError::Closed),
                Err(e) => Err(QueueError::Io(e.into())),
            };
        }
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the next item, blocking until there is one.
    pub fn get(&self) -> Result<T, QueueError> {
        self.receive(None)
    }

    /// Takes the next item, waiting at most `timeout` for one
    /// ([`QueueError::Timeout`], Python's `queue.Empty`).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, QueueError> {
        // A timeout too long for the clock is no timeout.
        self.receive(Instant::now().checked_add(timeout))
    }

    fn receive(&self, deadline: Option<Instant>) -> Result<T, QueueError> {
        let rx = self.ends.rx.as_fd();
        loop {
            if let Some(deadline) = deadline
                && !readable_before(rx, deadline)?
            {
                return Err(QueueError::Timeout);
            }
            match recv_packet(rx, self.ends.max, deadline.is_some()) {
                Ok(Packet::Data(bytes)) => {
                    return serde_json::from_slice(&bytes).map_err(QueueError::Decode);
                }
                Ok(Packet::TooLong(len)) => {
                    return Err(QueueError::TooLarge {
                        len,
                        max: self.ends.max,
                    });
                }
                Ok(Packet::Eof) => return Err(QueueError::Closed),
                // Another consumer took the message we were woken for.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Makes the send buffer of `tx` large enough for one packet of `max`
/// bytes.
fn fit_send_buffer(tx: &OwnedFd, max: usize) -> Result<(), QueueError> {
    let need = max.saturating_add(SNDBUF_OVERHEAD);
    let have = getsockopt(tx, sockopt::SndBuf).map_err(std::io::Error::from)?;
    if have >= need {
        return Ok(());
    }
    // The kernel doubles the value asked for, capped by net.core.wmem_max.
    setsockopt(tx, sockopt::SndBuf, &need).map_err(std::io::Error::from)?;
    let have = getsockopt(tx, sockopt::SndBuf).map_err(std::io::Error::from)?;
    if have >= need {
        Ok(())
    } else {
        Err(QueueError::LimitUnavailable {
            requested: max,
            allowed: have.saturating_sub(SNDBUF_OVERHEAD),
        })
    }
}

// ---------------------------------------------------------------------------
// Queues inside a process's arguments

/// How a queue looks inside serialised arguments.
#[derive(Serialize, Deserialize)]
struct Wire {
    drover_queue: usize,
    max_message_bytes: usize,
}

thread_local! {
    /// While arguments are encoded: the queues they contain, in order.
    static OUTGOING: RefCell<Option<Vec<Arc<Ends>>>> = const { RefCell::new(None) };
    /// While arguments are decoded: the fds received with them.
    static INCOMING: RefCell<Option<Incoming>> = const { RefCell::new(None) };
}

/// Fds received with a child's arguments: queue `i` is `fds[2i]` (send
/// end) and `fds[2i+1]` (receive end).
struct Incoming {
    fds: Vec<Option<OwnedFd>>,
    /// Queues already rebuilt, so a queue passed twice is one queue.
    made: Vec<Option<Arc<Ends>>>,
}

/// Arguments encoded for a child: JSON, and the queues whose fds must
/// travel with it (each as its send and receive end, in this order).
pub(crate) struct EncodedArgs {
    pub(crate) json: Vec<u8>,
    pub(crate) queues: Vec<Arc<Ends>>,
}

impl EncodedArgs {
    /// The fds to pass, in the order [`decode_args`] expects them.
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.queues.iter().flat_map(|q| q.fds()).collect()
    }
}

/// Resets a thread-local slot when dropped, even on a panic.
struct Reset<T: 'static>(&'static std::thread::LocalKey<RefCell<Option<T>>>);

impl<T> Drop for Reset<T> {
    fn drop(&mut self) {
        self.0.with(|slot| slot.borrow_mut().take());
    }
}

/// Encodes `args`, collecting the queues they contain.
pub(crate) fn encode_args<A: Serialize>(args: &A) -> Result<EncodedArgs, serde_json::Error> {
    OUTGOING.with(|slot| *slot.borrow_mut() = Some(Vec::new()));
    let _reset = Reset(&OUTGOING);
    let json = serde_json::to_vec(args)?;
    let queues = OUTGOING.with(|slot| slot.borrow_mut().take().unwrap_or_default());
    Ok(EncodedArgs { json, queues })
}

/// Decodes arguments encoded by [`encode_args`], rebuilding their queues
/// around `fds`.
pub(crate) fn decode_args<A: DeserializeOwned>(
    json: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<A, serde_json::Error> {
    let incoming = Incoming {
        made: (0..fds.len() / 2).map(|_| None).collect(),
        fds: fds.into_iter().map(Some).collect(),
    };
    INCOMING.with(|slot| *slot.borrow_mut() = Some(incoming));
    let _reset = Reset(&INCOMING);
    serde_json::from_slice(json)
}

fn export(ends: &Arc<Ends>) -> Result<usize, &'static str> {
    OUTGOING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let queues = slot
            .as_mut()
            .ok_or("a Queue can only be encoded as part of a Process's arguments")?;
        if let Some(i) = queues.iter().position(|q| Arc::ptr_eq(q, ends)) {
            return Ok(i);
        }
        queues.push(ends.clone());
        Ok(queues.len() - 1)
    })
}

fn import(index: usize, max: usize) -> Result<Arc<Ends>, String> {
    INCOMING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let incoming = slot
            .as_mut()
            .ok_or("a Queue can only be decoded from a Process's arguments")?;
        if let Some(Some(ends)) = incoming.made.get(index) {
            return Ok(ends.clone());
        }
        let missing = || format!("queue #{index} was not passed to this process");
        let at = index.checked_mul(2).ok_or_else(missing)?;
        let tx = incoming.fds.get_mut(at).and_then(Option::take);
        let rx = incoming.fds.get_mut(at + 1).and_then(Option::take);
        let (Some(tx), Some(rx)) = (tx, rx) else {
            return Err(missing());
        };
        let ends = Arc::new(Ends { tx, rx, max });
        if let Some(made) = incoming.made.get_mut(index) {
            *made = Some(ends.clone());
        }
        Ok(ends)
    })
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = export(&self.ends).map_err(S::Error::custom)?;
        Wire {
            drover_queue: index,
            max_message_bytes: self.ends.max,
        }
        .serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let ends = import(wire.drover_queue, wire.max_message_bytes).map_err(D::Error::custom)?;
        Ok(Queue {
            ends,
            _values: PhantomData,
        })
    }
}
