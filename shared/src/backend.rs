//! What a backend-neutral seam reports when its backend fails: [`Unavailable`], naming the
//! backend and keeping its error as the source, so callers never match on `redis` or `lapin`
//! errors.

use std::error::Error;

/// A backend (Redis, RabbitMQ, ...) could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{backend} unavailable: {source}")]
pub struct Unavailable {
    pub backend: &'static str,
    #[source]
    pub source: Box<dyn Error + Send + Sync>,
}

impl From<redis::RedisError> for Unavailable {
    fn from(e: redis::RedisError) -> Self {
        Self {
            backend: "redis",
            source: Box::new(e),
        }
    }
}
