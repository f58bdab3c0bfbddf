//! Whether this dispatcher's shared settings agree with the API's ([`otp_shared::agreement`]).
//! Compared at start and every [`REFRESH`]; while they differ, or while jobs arrive and no
//! fingerprint is found (the API writes it under another prefix or database), the dispatcher
//! does not consume: the jobs stay in the queue, `/readyz` answers 503 naming the settings,
//! and `otp_config_mismatch` is 1. Consuming resumes by itself once they agree.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use otp_delivery::metrics::DeliveryMetrics;
use otp_shared::{
    agreement::{Fingerprint, Found, REFRESH, compare},
    redis_conn::RedisConn,
};

/// How soon a comparison Redis did not answer is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Where the comparison stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not compared yet (Redis has not answered).
    Unchecked,
    Agreed,
    /// No fingerprint, and no job has arrived: consume (the API may not have started yet).
    NoneYet,
    /// No fingerprint while jobs arrive: the API writes under another prefix or database.
    NoneWithJobs,
    /// These shared settings differ from the API's.
    Differ(Vec<&'static str>),
}

impl State {
    /// Whether jobs may be consumed.
    pub fn admits(&self) -> bool {
        matches!(self, Self::Agreed | Self::NoneYet)
    }

    /// What `/readyz` says while jobs may not be consumed.
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Agreed | Self::NoneYet => None,
            Self::Unchecked => {
                Some("the shared settings are not compared with the API's yet".into())
            }
            Self::NoneWithJobs => Some(
                "jobs arrive but the API's settings fingerprint is not under this \
                 REDIS_KEY_PREFIX and Redis database: check REDIS_KEY_PREFIX and the database \
                 of REDIS_URL"
                    .into(),
            ),
            Self::Differ(names) => Some(format!(
                "these settings differ from the API's: {}",
                names.join(", ")
            )),
        }
    }
}

/// The comparison, shared by the consumer, its jobs and `/readyz`.
#[derive(Clone)]
pub struct Agreement {
    redis: RedisConn,
    key: String,
    ours: Arc<Fingerprint>,
    state: Arc<watch::Sender<State>>,
    metrics: Arc<DeliveryMetrics>,
}

impl Agreement {
    pub fn new(
        redis: RedisConn,
        key: String,
        ours: Fingerprint,
        metrics: Arc<DeliveryMetrics>,
    ) -> Self {
        Self {
            redis,
            key,
            ours: Arc::new(ours),
            state: Arc::new(watch::Sender::new(State::Unchecked)),
            metrics,
        }
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Compares now and every [`REFRESH`] until `stop`.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            self.compare().await;
            let wait = match self.state() {
                State::Unchecked => RETRY,
                _ => REFRESH,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A job arrived: whether it may be handled. With no fingerprint found so far this looks
    /// again (the API may have started since), and refuses if there is still none.
    pub async fn admits_job(&self) -> bool {
        match self.state() {
            State::Agreed => true,
            State::NoneYet => {
                self.compare().await;
                match self.state() {
                    State::NoneYet => {
                        self.set(State::NoneWithJobs);
                        false
                    }
                    state => state.admits(),
                }
            }
            _ => false,
        }
    }

    /// Resolves once jobs may be consumed.
    pub async fn admitted(&self) {
        let mut state = self.state.subscribe();
        let _ = state.wait_for(State::admits).await;
    }

    /// Resolves once jobs may no longer be consumed.
    pub async fn refused(&self) {
        let mut state = self.state.subscribe();
        let _ = state.wait_for(|s| !s.admits()).await;
    }

    async fn compare(&self) {
        let found = match compare(&self.redis, &self.key, &self.ours).await {
            Ok(found) => found,
            Err(e) => {
                // /readyz already names Redis; keep the last answer meanwhile.
                tracing::debug!(error = %e, "could not read the settings fingerprint");
                return;
            }
        };
        self.set(match found {
            Found::Agreed => State::Agreed,
            Found::None if self.state() == State::NoneWithJobs => State::NoneWithJobs,
            Found::None => State::NoneYet,
            Found::Differ(names) => State::Differ(names),
        });
    }

    fn set(&self, new: State) {
        let changed = self.state.send_if_modified(|state| {
            let changed = *state != new;
            *state = new.clone();
            changed
        });
        if !changed {
            return;
        }
        self.metrics
            .config_mismatch
            .set(matches!(new, State::NoneWithJobs | State::Differ(_)).into());
        match new.problem() {
            Some(problem) if new != State::Unchecked => {
                tracing::error!("not consuming: {problem}");
            }
            _ => tracing::info!(state = ?new, "shared settings compared with the API's"),
        }
    }
}
