//! The client side of SMTP and LMTP as pure functions: replies, EHLO
//! capabilities, the transaction's commands and parameters, the contents
//! on the wire, AUTH messages. Nothing here does I/O, so every rule is unit
//! tested on bytes.

pub mod auth;
pub mod command;
pub mod data;
pub mod downgrade;
pub mod ehlo;
pub mod mta_sts;
pub mod reply;
