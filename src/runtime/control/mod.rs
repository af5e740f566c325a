//! The server side of the control socket, in the event loop.
//!
//! - [`Listener`] creates the socket file, mode 0600 from the moment its path
//!   exists, and never replaces anything but a dead socket.
//! - [`Clients`] accepts, bounds and times out connections and hands
//!   complete requests to the runtime, which decides what they do and gives
//!   the answer back.
//!
//! The protocol itself (one JSON request line, one answer line) and the
//! client side are in [`crate::control`].

mod clients;
mod conn;
mod listener;

pub use clients::{Clients, MAX_CLIENTS, RESERVED};
pub use listener::{BindError, Listener};

use crate::control::{MAX_REQUEST, Request, Response, parse_request};
