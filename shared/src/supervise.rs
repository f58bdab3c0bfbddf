//! What both binaries do to stay connected and to say whether they are ready: one RabbitMQ
//! reconnect loop ([`supervise`]) and one readiness rule ([`not_ready`]).

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use crate::redis_conn::RedisConn;

/// The first wait before reconnecting to RabbitMQ; it doubles (with jitter) up to
/// [`RECONNECT_MAX_DELAY`], and starts again after a session that opened.
pub const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(200);
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
/// Closing a connection that is already dead can hang; this bounds it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One RabbitMQ session's end.
pub enum Session<T> {
    /// It opened, then the connection broke: reconnect.
    Broken,
    /// It was told to stop and hands back `T` (what must outlive it, say a channel with acks
    /// still to send).
    Stopped(T),
}

/// Keeps RabbitMQ sessions going: runs `session` (open, then work until the connection breaks
/// or `shutdown` fires), and when it could not open (`Err`) or broke, runs it again after a
/// capped exponential backoff. Returns what a stopped session handed back, or `None` when
/// `shutdown` fired between sessions. The session itself must watch `shutdown`: it is not
/// cancelled from here, so it can stop cleanly.
pub async fn supervise<T, F, Fut>(shutdown: &CancellationToken, mut session: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Session<T>>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN_DELAY)
        .with_max_delay(RECONNECT_MAX_DELAY)
        .with_jitter()
        .without_max_times();
    let mut delays = backoff.build();
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        match session().await {
            Ok(Session::Stopped(value)) => return Some(value),
            Ok(Session::Broken) => {
                delays = backoff.build();
                if shutdown.is_cancelled() {
                    return None;
                }
                tracing::warn!("lost the RabbitMQ connection; reconnecting");
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot reach RabbitMQ; retrying"),
        }
        // The iterator never ends (`without_max_times`); the fallback only satisfies the type.
        let delay = delays.next().unwrap_or(RECONNECT_MAX_DELAY);
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Closes the channel, then the connection (in that order lapin closes quietly), within
/// [`CLOSE_TIMEOUT`].
pub async fn close(connection: Connection, channel: Option<Channel>) {
    let close = async {
        if let Some(channel) = channel {
            let _ = channel.close(200, "closing".into()).await;
        }
        let _ = connection.close(200, "closing".into()).await;
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

/// Whether Redis answers a PING.
pub async fn redis_answers(redis: &RedisConn) -> bool {
    let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut redis.clone()).await;
    ping.is_ok()
}

/// The `/readyz` rule of both binaries: ready when Redis and RabbitMQ both are. Returns the
/// names of those that are down (empty when ready), for the 503's message ([`not_ready`]).
pub fn unavailable(redis_up: bool, rabbitmq_up: bool) -> Vec<&'static str> {
    [("redis", redis_up), ("rabbitmq", rabbitmq_up)]
        .into_iter()
        .filter_map(|(name, up)| (!up).then_some(name))
        .collect()
}

/// The message of a 503 from `/readyz`.
pub fn not_ready(down: &[&str]) -> String {
    if down.is_empty() {
        return "Not ready.".into();
    }
    format!("Not ready: {} unavailable.", down.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[test]
    fn readiness_names_what_is_down() {
        assert!(unavailable(true, true).is_empty());
        assert_eq!(unavailable(false, false), ["redis", "rabbitmq"]);
        assert_eq!(
            not_ready(&unavailable(true, false)),
            "Not ready: rabbitmq unavailable."
        );
    }

    /// Sessions that fail to open, break, then stop: each is retried after the backoff, and
    /// the stopped one's value comes back.
    #[tokio::test(start_paused = true)]
    async fn sessions_are_retried_until_one_stops() {
        let runs = Arc::new(AtomicU32::new(0));
        let started = tokio::time::Instant::now();
        let shutdown = CancellationToken::new();
        let stopped = supervise(&shutdown, || {
            let runs = runs.clone();
            async move {
                match runs.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => anyhow::bail!("refused"),
                    2 => Ok(Session::Broken),
                    _ => Ok(Session::Stopped("value")),
                }
            }
        })
        .await;
        assert_eq!(stopped, Some("value"));
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        // Three waits, none longer than the cap.
        let waited = started.elapsed();
        assert!(waited >= RECONNECT_MIN_DELAY, "{waited:?}");
        assert!(waited <= 3 * RECONNECT_MAX_DELAY, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_between_sessions() {
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        let result: Option<()> = supervise(&shutdown, || {
            stopper.cancel();
            async { anyhow::bail!("refused") }
        })
        .await;
        assert!(result.is_none());
    }
}
