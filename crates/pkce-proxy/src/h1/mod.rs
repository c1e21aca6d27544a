//! The proxy's own HTTP/1.1 engine (RFC 9112), one file per role:
//! [`server`] serves a client connection, [`client`] drives a connection
//! to the upstream; [`body`] reads and writes message bodies for both,
//! [`socket`] holds a connection's socket and buffers, and [`common`] the
//! rules both sides share about a head.

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod common;
pub(crate) mod server;
pub(crate) mod socket;
