//! Runnable examples of `tower-pkce`; see the `[[example]]` targets.
