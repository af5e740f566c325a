//! Bounded waits on one fd: every wait of the library that has a deadline
//! is a `poll` with the time left, never a sleep.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Waits until `fd` is readable (or hung up) or `deadline` passes; true if
/// it is readable.
pub(crate) fn readable_before(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up, so a wait never ends just before its deadline.
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as u32;
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) if Instant::now() >= deadline => return Ok(false),
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}
