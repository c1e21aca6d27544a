//! Which browser origins may read the token endpoint's rejections.
//!
//! A browser app must see `invalid_grant`, not a CORS failure. The upstream
//! knows which origins it serves; the middleware learns them from the
//! upstream's `Access-Control-Allow-Origin` answers at the token endpoint,
//! and adds the configured ones.

use std::collections::HashMap;
use std::sync::RwLock;

use http::header::{self, HeaderMap, HeaderValue};

/// The most origins remembered, so that a flood of forged `Origin` headers
/// that an upstream reflects cannot grow memory without bound.
const MAX_LEARNED: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Origins {
    /// Origin to whether the upstream allowed credentials for it.
    learned: RwLock<HashMap<HeaderValue, bool>>,
    /// The upstream answered `*`.
    any: std::sync::atomic::AtomicBool,
}

impl Origins {
    /// Records what the upstream answered to a request from `origin`.
    pub(crate) fn learn(&self, origin: Option<&HeaderValue>, response: &HeaderMap) {
        let Some(allowed) = response.get(header::ACCESS_CONTROL_ALLOW_ORIGIN) else {
            return;
        };
        if allowed.as_bytes() == b"*" {
            self.any.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let Some(origin) = origin else { return };
        if allowed != origin {
            return;
        }
        let credentials = response
            .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        if let Ok(mut learned) = self.learned.write()
            && (learned.len() < MAX_LEARNED || learned.contains_key(origin))
        {
            learned.insert(origin.clone(), credentials);
        }
    }

    /// Adds CORS headers to a rejection for a request from `origin`, when the
    /// origin is configured or the upstream allowed it before.
    pub(crate) fn apply(
        &self,
        configured: &[HeaderValue],
        origin: Option<&HeaderValue>,
        headers: &mut HeaderMap,
    ) {
        let Some(origin) = origin else { return };
        let credentials = if configured.contains(origin) {
            Some(false)
        } else {
            self.learned
                .read()
                .ok()
                .and_then(|l| l.get(origin).copied())
        };
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        match credentials {
            Some(credentials) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                if credentials {
                    headers.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
            }
            None if self.any.load(std::sync::atomic::Ordering::Relaxed) => {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
            None => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn origin(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn unknown_origin_gets_nothing() {
        let o = Origins::default();
        let mut h = HeaderMap::new();
        o.apply(&[], Some(&origin("https://evil.example")), &mut h);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[test]
    fn configured_origin() {
        let o = Origins::default();
        let mut h = HeaderMap::new();
        let spa = origin("https://spa.example");
        o.apply(std::slice::from_ref(&spa), Some(&spa), &mut h);
        assert_eq!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN), Some(&spa));
    }

    #[test]
    fn learned_from_upstream() {
        let o = Origins::default();
        let spa = origin("https://spa.example");
        let mut upstream = HeaderMap::new();
        upstream.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, spa.clone());
        upstream.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, origin("true"));
        o.learn(Some(&spa), &upstream);
        let mut h = HeaderMap::new();
        o.apply(&[], Some(&spa), &mut h);
        assert_eq!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN), Some(&spa));
        assert_eq!(
            h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            Some(&origin("true"))
        );
        // An answer for another origin teaches nothing.
        let other = origin("https://other.example");
        o.learn(Some(&other), &upstream);
        let mut h = HeaderMap::new();
        o.apply(&[], Some(&other), &mut h);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[test]
    fn wildcard() {
        let o = Origins::default();
        let mut upstream = HeaderMap::new();
        upstream.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin("*"));
        o.learn(None, &upstream);
        let mut h = HeaderMap::new();
        o.apply(&[], Some(&origin("https://any.example")), &mut h);
        assert_eq!(
            h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some(&origin("*"))
        );
    }
}
