//! The boot payload: how a target function and its arguments reach a child
//! that does not share the parent's memory (spawn and forkserver).
//!
//! A function cannot be sent by name, so it is sent by address, as an
//! offset from an anchor function of the same executable (ASLR shifts the
//! whole image, not the distances inside it). Alongside goes the offset of
//! a monomorphised trampoline, `trampoline::<A>`, which knows how to decode
//! an `A` and call a `fn(A)`. The child checks before using either offset
//! that it runs the very executable file the parent runs (device, inode,
//! size, mtime) and that both addresses lie in its executable's code; a
//! mismatch is a [`BootError`], never a jump into the unknown.
//!
//! Layout: one line of JSON [`Header`], a newline, then the arguments'
//! JSON. Fds (the queues among the arguments) travel beside it.

use std::any::type_name;
use std::io::Read;
use std::os::fd::OwnedFd;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{BootError, Error};
use super::queue::{EncodedArgs, decode_args, encode_args};
use crate::sys::{
    CodeAddr, ExeIdentity, as_target, as_trampoline, code_offset, resolve, same_executable,
};

/// Marks a drover boot header and its version.
const MAGIC: &str = "drover-context/1";

/// What a child calls: the trampoline for one argument type.
pub(crate) type Trampoline = fn(CodeAddr, &str, &[u8], Vec<OwnedFd>) -> Result<(), BootError>;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    magic: String,
    /// The executable the offsets were taken in.
    exe: ExeIdentity,
    trampoline: i64,
    target: i64,
    /// `type_name` of the argument type, checked by the trampoline.
    args_type: String,
    /// How many fds travel with the payload.
    fds: usize,
}

/// A target and its arguments, encoded for a child.
pub(crate) struct Payload {
    bytes: Vec<u8>,
    args: EncodedArgs,
}

impl Payload {
    /// Encodes a call of `target(args)`.
    pub(crate) fn new<A>(target: fn(A), args: &A) -> Result<Payload, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
    {
        let trampoline: Trampoline = trampoline::<A>;
        let offset = |addr: usize| code_offset(addr).ok_or(Error::TargetOutsideExecutable);
        let encoded = encode_args(args).map_err(Error::Args)?;
        let header = Header {
            magic: MAGIC.to_owned(),
            exe: ExeIdentity::current().map_err(Error::io("/proc/self/exe"))?,
            trampoline: offset(trampoline as usize)?,
            target: offset(target as usize)?,
            args_type: type_name::<A>().to_owned(),
            fds: 2 * encoded.queues.len(),
        };
        let mut bytes = serde_json::to_vec(&header).map_err(Error::Args)?;
        bytes.push(b'\n');
        bytes.extend_from_slice(&encoded.json);
        Ok(Payload {
            bytes,
            args: encoded,
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The fds that must travel with the payload, in order.
    pub(crate) fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.args.fds()
    }
}

/// A payload received by a child, its header decoded.
pub(crate) struct Received {
    header: Header,
    bytes: Vec<u8>,
    args_at: usize,
}

impl Received {
    /// Reads a payload from `memfd` (from its start: the file offset is
    /// shared with the writer).
    pub(crate) fn read(memfd: OwnedFd) -> Result<Received, BootError> {
        let mut file = std::fs::File::from(memfd);
        std::io::Seek::rewind(&mut file)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Received::parse(bytes)
    }

    /// Decodes the header of a payload read by whoever received it.
    pub(crate) fn parse(bytes: Vec<u8>) -> Result<Received, BootError> {
        let newline = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(BootError::Malformed("no header line"))?;
        let header: Header =
            serde_json::from_slice(&bytes[..newline]).map_err(BootError::Header)?;
        if header.magic != MAGIC {
            return Err(BootError::Malformed("not a drover-context/1 payload"));
        }
        Ok(Received {
            header,
            bytes,
            args_at: newline + 1,
        })
    }

    /// How many fds the parent sent with the payload.
    pub(crate) fn fd_count(&self) -> usize {
        self.header.fds
    }

    /// Runs the target with its arguments; panics of the target propagate.
    pub(crate) fn run(self, fds: Vec<OwnedFd>) -> Result<(), BootError> {
        let h = &self.header;
        if fds.len() != h.fds {
            return Err(BootError::Malformed("fd count differs from the header"));
        }
        let same = same_executable(&h.exe)?;
        let trampoline = as_trampoline(resolve(&same, h.trampoline)?);
        let target = resolve(&same, h.target)?;
        trampoline(target, &h.args_type, &self.bytes[self.args_at..], fds)
    }
}

/// Decodes an `A` and calls the `fn(A)` at `target` with it.
fn trampoline<A: DeserializeOwned>(
    target: CodeAddr,
    args_type: &str,
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(), BootError> {
    if args_type != type_name::<A>() {
        return Err(BootError::ArgsType {
            expected: type_name::<A>(),
            found: args_type.to_owned(),
        });
    }
    let args: A = decode_args(args, fds).map_err(BootError::Args)?;
    as_target::<A>(target)(args);
    Ok(())
}

#[cfg(test)]
impl Payload {
    /// The payload as a child receives it, for in-process tests.
    pub(crate) fn received(&self) -> Received {
        Received::parse(self.bytes.clone()).expect("own payload parses")
    }

    /// The same payload claiming another executable.
    pub(crate) fn with_other_exe(&self) -> Received {
        let mut r = self.received();
        r.header.exe = r.header.exe.other();
        r
    }

    /// The same payload with a target offset that points far outside any
    /// user-space code (into non-canonical addresses).
    pub(crate) fn with_target_outside_text(&self) -> Received {
        let mut r = self.received();
        r.header.target = i64::MIN / 2;
        r
    }

    /// The same payload claiming another argument type.
    pub(crate) fn with_args_type(&self, name: &str) -> Received {
        let mut r = self.received();
        r.header.args_type = name.to_owned();
        r
    }
}
