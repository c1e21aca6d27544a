//! The names of a store's keys in Redis, all under one hash tag.

use std::time::Duration;

use crate::Source;
use crate::store::StoreKey;

/// The key names of one prefix.
#[derive(Clone)]
pub(super) struct Keys {
    pub(super) tag: String,
    pub(super) pending_index: String,
    pub(super) binding_index: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        let tag = format!("{{{prefix}}}");
        Self {
            pending_index: format!("{tag}:n:p"),
            binding_index: format!("{tag}:n:b"),
            tag,
        }
    }

    /// The key of record `key` in family `family` (`p`, `b` or `c`).
    pub(super) fn record(&self, family: char, key: &StoreKey) -> String {
        let mut name = String::with_capacity(self.tag.len() + 35);
        name.push_str(&self.tag);
        name.push(':');
        name.push(family);
        name.push(':');
        name.push_str(&member(key));
        name
    }

    /// The note naming the source set of pending record `key`.
    pub(super) fn source_note(&self, key: &StoreKey) -> String {
        format!("{}:ps:{}", self.tag, member(key))
    }

    /// The set of the pending records of `source`, by expiry.
    pub(super) fn source_set(&self, source: Source) -> String {
        format!("{}:src:{source}", self.tag)
    }
}

/// A record key's name in an index: 32 lowercase hex digits.
pub(super) fn member(key: &StoreKey) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for &b in key.as_bytes() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

pub(super) fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
