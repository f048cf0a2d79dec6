//! `Idempotency-Key` (SPEC §5): the same key and request within 24 hours gets the first
//! response again, so a client may retry a POST without doing it twice.

use lapse_core::Span;
use lapse_core::store::StoredResponse;

use crate::{Engine, EngineError};

/// How long a key is remembered.
pub const WINDOW: Span = Span::from_secs(24 * 3600);

impl Engine {
    /// The first response to `actor`'s request with `key`, if within the window.
    pub async fn idempotent_response(
        &self,
        actor: &str,
        key: &str,
    ) -> Result<Option<StoredResponse>, EngineError> {
        let since = self.now() - WINDOW;
        Ok(self.store.idempotent_response(actor, key, since).await?)
    }

    /// Remembers the response to `actor`'s first request with `key`.
    pub async fn remember_response(
        &self,
        actor: &str,
        key: &str,
        request_hash: String,
        status: u16,
        content_type: String,
        body: String,
    ) -> Result<(), EngineError> {
        let response = StoredResponse {
            request_hash,
            status,
            content_type,
            body,
            created_at: self.now(),
        };
        Ok(self
            .store
            .save_idempotent_response(actor, key, &response)
            .await?)
    }
}
