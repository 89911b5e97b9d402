//! Protocol logic without I/O: decoding, address checks, replies, and the
//! Received header. Everything here is a pure function of its input, so it is
//! tested with tables rather than sockets.

pub mod address;
pub mod auth_results;
pub mod data;
pub mod dialect;
pub mod rcpt_params;
pub mod received;
pub mod reply;
