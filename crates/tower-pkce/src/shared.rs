//! [`Shared`]: what a layer's services share, the settings, the store and
//! the CORS origins learned at the token endpoint.

use std::sync::{Arc, Once};

use bytes::Bytes;
use http::{HeaderValue, Response};

use crate::cors::Origins;
use crate::error::Rejection;
use crate::policy::Config;
use crate::store::Store;

/// What the layer's services share: settings, store, learned CORS origins.
#[derive(Debug)]
pub(crate) struct Shared<St> {
    pub(crate) config: Arc<Config>,
    pub(crate) store: St,
    pub(crate) origins: Arc<Origins>,
    /// Done once the store's maintenance started; shared by every service
    /// of the layer and of its clones.
    pub(crate) maintenance: Arc<Once>,
}

impl<St: Store> Shared<St> {
    pub(crate) fn token_rejection(
        &self,
        rejection: Rejection,
        origin: Option<&HeaderValue>,
    ) -> Response<Bytes> {
        let mut response = rejection.json_response();
        self.origins
            .apply(&self.config.allowed_origins, origin, response.headers_mut());
        response
    }

    /// Starts the store's maintenance (the sweep of expired records) once,
    /// on the first request served inside a Tokio runtime: the layer may be
    /// built, and `Layer::layer` called, outside one, and `layer` has no
    /// side effects. After that, one atomic load per request.
    #[inline]
    pub(crate) fn start_maintenance(&self) {
        if !self.maintenance.is_completed() {
            self.start_maintenance_once();
        }
    }

    #[cold]
    fn start_maintenance_once(&self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.maintenance
                .call_once(|| self.store.start_maintenance());
        }
    }
}
