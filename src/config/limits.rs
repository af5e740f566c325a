//! The bounds on config values, in one place, each with the reason for it.
//!
//! A value beyond a bound is a located error at check time, so nothing past
//! `config` has to guard against it: deadlines computed as `now + duration`
//! cannot overflow, counts cannot allocate absurdly, and every string handed
//! to `execve` fits the kernel's limit. The README's key table lists them.

use std::time::Duration;

/// The longest duration any key accepts: one year. Deadlines are
/// `Instant + duration`, which panics on overflow for durations near
/// `u64::MAX` seconds; a year is far longer than anyone waits on purpose
/// and far from that edge.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The shortest `start_secs`: shorter values are raised to this with a
/// warning. A program that dies at once is then a failed start that backs
/// off, never a restart loop running as fast as `fork` allows.
pub(crate) const MIN_START_SECS: Duration = Duration::from_millis(100);

/// The most children one group may run. Children are allocated up front;
/// a typo of a few zeros should be an error, not gigabytes of memory.
pub(crate) const MAX_PROCESSES: u32 = 100_000;

/// The most children all groups together may run: `PID_MAX_LIMIT`, the
/// kernel's own ceiling on process ids (2^22 on 64-bit Linux). A config that
/// asks for more could never run.
pub(crate) const MAX_TOTAL_PROCESSES: u64 = 1 << 22;

/// The most bytes of one argument, environment string (`KEY=value`) or
/// path: the kernel's `MAX_ARG_STRLEN` (32 pages, 131072 bytes) less the
/// terminating NUL. A longer one would make `execve` fail with `E2BIG`.
pub(crate) const MAX_ARG_BYTES: usize = 131_071;

/// `max_message_bytes` at most 4 MiB: drover sizes the socket buffers of a
/// queue to hold a whole message, and the kernel caps those buffers.
pub(crate) const MAX_MESSAGE_BYTES: u32 = 4 << 20;

/// `capacity` at most a million messages. It only bounds a count, but each
/// held message costs bookkeeping even when empty, and a backlog of a
/// million is already more than consumers will drain soon; the bound keeps
/// the queue's memory for that bookkeeping near 100 MB at worst.
pub(crate) const MAX_CAPACITY: u32 = 1_000_000;

/// `prefetch` at most 10,000 unsettled messages per consumer child. The
/// broker keeps each child's unsettled messages in memory (and asks a Redis
/// stream for this many at once); more than the default `capacity` in one
/// child's hands defeats fair delivery anyway.
pub(crate) const MAX_PREFETCH: u32 = 10_000;

/// `max_deliveries` at most 10,000: a message that failed that often will
/// not succeed the next time, and the per-message delivery counter stays
/// far from overflow.
pub(crate) const MAX_DELIVERIES: u32 = 10_000;

/// `max_restarts` at most a million: at the default 30 s backoff cap that
/// is a year of retries, and `max_restarts + 1` and the per-child start
/// counters (`u32`) stay far from overflow.
pub(crate) const MAX_RESTARTS: u32 = 1_000_000;

/// `dead_letter_max_bytes` at least 4 KiB: a record file that cannot hold
/// one record of a typical message records nothing.
pub(crate) const MIN_DEAD_LETTER_BYTES: u64 = 4 << 10;

/// `dead_letter_max_bytes` at most 1 TiB per queue: larger is a typo, and
/// a disk filled with dead letters stops everything else on the host.
pub(crate) const MAX_DEAD_LETTER_BYTES: u64 = 1 << 40;

/// `env_file` lists at most 64 files per group: each is read at every
/// reload, on the supervisor's loop, up to 4 MiB each; a list of a million
/// names (it fits in a 4 MiB config) would keep the loop reading for hours.
pub(crate) const MAX_ENV_FILES: usize = 64;
