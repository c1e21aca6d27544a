//! The proxy's own HTTP/1.1 engine (RFC 9112): [`server`] serves a client
//! connection, [`client`] drives a connection to the upstream, and
//! [`body`] holds the wire code both share: message bodies, buffers and
//! field rules.

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod server;
