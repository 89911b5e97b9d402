//! Operate: what postmasters use to look at and act on a running server.
//!
//! [`api`] is the management listener (HTTP/1.1, JSON); [`client`] is what the
//! `ferrymail queue ...` commands use to talk to it; [`view`] holds the JSON
//! documents both sides share, so the CLI's `--json` output is exactly what the
//! API returns.

pub mod api;
pub mod client;
pub mod metrics;
pub mod view;
