//! Batched datagram calls: many packets of one socket in one `recvmmsg`
//! or `sendmmsg`, never blocking. The queue broker uses them so that a
//! burst of a child's packets costs one system call, not one per packet.
//! Both take a raw fd, as `nix`'s `recv` and `send` do: a closed or foreign
//! one makes them fail, never misbehave.

use std::os::fd::RawFd;
use std::ptr;

use nix::errno::Errno;

/// The most packets one call moves.
pub const MAX_BATCH: usize = 64;

/// Receives up to `lens.len()` packets (at most [`MAX_BATCH`]) from `fd`
/// without blocking: packet `i` lands in `buf[i * slot..(i + 1) * slot]`
/// and `lens[i]` is its real length (`MSG_TRUNC`: when it is larger than
/// `slot`, only the first `slot` bytes were kept). Returns how many were
/// received, at least one; fewer than asked means the socket had no more
/// (or an error stopped the batch: the next call reports it).
///
/// A zero length is a zero-length packet or, once the peer has closed its
/// end, the end of the stream, which then fills every remaining entry.
pub fn recv_batch(
    fd: RawFd,
    buf: &mut [u8],
    slot: usize,
    lens: &mut [usize],
) -> Result<usize, Errno> {
    let n = lens
        .len()
        .min(MAX_BATCH)
        .min(buf.len().checked_div(slot).unwrap_or(0));
    if n == 0 {
        return Ok(0);
    }
    let mut iovs = [EMPTY; MAX_BATCH];
    for (iov, chunk) in iovs.iter_mut().zip(buf.chunks_exact_mut(slot)).take(n) {
        *iov = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: slot,
        };
    }
    let mut hdrs = headers(&mut iovs);
    // SAFETY: the first `n` headers each point to one iovec of `slot`
    // bytes inside `buf`, disjoint, all borrowed mutably for the call; the
    // kernel writes at most `slot` bytes through each, and `msg_len` /
    // `msg_flags` of the headers. No name or control buffer is given, and
    // the timeout is null (the call never blocks: MSG_DONTWAIT).
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as _,
            (libc::MSG_DONTWAIT | libc::MSG_TRUNC) as _,
            ptr::null_mut(),
        )
    };
    let got = usize::try_from(Errno::result(rc)?).unwrap_or(0);
    for (len, hdr) in lens.iter_mut().zip(&hdrs).take(got) {
        *len = hdr.msg_len as usize;
    }
    Ok(got)
}

/// An iovec over nothing.
const EMPTY: libc::iovec = libc::iovec {
    iov_base: ptr::null_mut(),
    iov_len: 0,
};

/// One message header per iovec, each over that one iovec (no name, no
/// control data); the headers point into `iovs`, which must outlive them.
fn headers(iovs: &mut [libc::iovec; MAX_BATCH]) -> [libc::mmsghdr; MAX_BATCH] {
    // SAFETY: mmsghdr is plain data (pointers, lengths, flags) for which
    // all zeroes is a valid value: no name, no control data, no iovecs.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for (hdr, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
    }
    hdrs
}

/// Sends `packets` on `fd` in order, one packet each, without blocking
/// and without `SIGPIPE`. Returns how many were sent (the first ones,
/// at least one); fewer means the socket was full or failed at the next,
/// which a later call reports. An error means not even the first went.
pub fn send_batch(fd: RawFd, packets: &[&[u8]]) -> Result<usize, Errno> {
    let n = packets.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut iovs = [EMPTY; MAX_BATCH];
    for (iov, packet) in iovs.iter_mut().zip(packets).take(n) {
        *iov = libc::iovec {
            iov_base: packet.as_ptr().cast_mut().cast(),
            iov_len: packet.len(),
        };
    }
    let mut hdrs = headers(&mut iovs);
    // SAFETY: the first `n` headers each point to one iovec over a packet
    // borrowed for the call; the kernel only reads them (and writes
    // `msg_len`). No name or control data.
    let rc = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as _,
            (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as _,
        )
    };
    Ok(usize::try_from(Errno::result(rc)?).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, OwnedFd};

    fn pair() -> (OwnedFd, OwnedFd) {
        let (a, b) = crate::seqpacket_pair().unwrap();
        for fd in [&a, &b] {
            let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
            let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(fl)).unwrap();
        }
        (a, b)
    }

    #[test]
    fn a_batch_keeps_order_boundaries_and_real_lengths() {
        let (a, b) = pair();
        let packets: [&[u8]; 4] = [b"one", b"", b"three", &[7u8; 40]];
        assert_eq!(send_batch(a.as_raw_fd(), &packets), Ok(4));
        let mut buf = vec![0u8; 8 * 16];
        let mut lens = [0usize; 8];
        let got = recv_batch(b.as_raw_fd(), &mut buf, 16, &mut lens).unwrap();
        assert_eq!(got, 4, "fewer than asked: the socket is empty");
        assert_eq!(
            &lens[..4],
            &[3, 0, 5, 40],
            "MSG_TRUNC gives the real length"
        );
        assert_eq!(&buf[..3], b"one");
        assert_eq!(&buf[32..37], b"three");
        assert_eq!(
            &buf[48..64],
            &[7u8; 16],
            "a longer packet keeps its first slot"
        );
        assert_eq!(
            recv_batch(b.as_raw_fd(), &mut buf, 16, &mut lens),
            Err(Errno::EAGAIN)
        );
    }

    #[test]
    fn a_full_socket_cuts_a_send_batch_short() {
        let (a, _b) = pair();
        let big = vec![1u8; 32 << 10];
        let packets = vec![big.as_slice(); MAX_BATCH];
        let mut sent = 0;
        loop {
            match send_batch(a.as_raw_fd(), &packets) {
                Ok(n) => {
                    sent += n;
                    if n < MAX_BATCH {
                        break;
                    }
                }
                Err(e) => panic!("the first of a batch fails only when full: {e}"),
            }
        }
        assert!(sent > 0);
        assert_eq!(send_batch(a.as_raw_fd(), &packets), Err(Errno::EAGAIN));
    }

    #[test]
    fn the_end_of_the_stream_reads_as_zero_lengths() {
        let (a, b) = pair();
        assert_eq!(send_batch(a.as_raw_fd(), &[b"last"]), Ok(1));
        drop(a);
        let mut buf = vec![0u8; 4 * 8];
        let mut lens = [9usize; 4];
        assert_eq!(recv_batch(b.as_raw_fd(), &mut buf, 8, &mut lens), Ok(4));
        assert_eq!(lens, [4, 0, 0, 0]);
    }
}
