//! Builds the dispatcher from its config and runs it until a shutdown signal.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context;
use poem::{
    Server,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
};
use tokio_util::sync::CancellationToken;

use crate::{
    breaker::{Breaker, BreakerSettings, SystemClock},
    config::Config,
    consumer::Consumer,
    health::{self, Readiness},
    ledger::Ledger,
    limiter::RateLimiter,
    metrics::DispatcherMetrics,
    plivo::{PlivoClient, PlivoSettings},
    records::RedisJobRecords,
    router::{Provider, Router},
    sender::{SmsProvider, SmsSender},
    source::serve,
    twilio::{TwilioClient, TwilioSettings},
    worker::Worker,
};

/// The senders of SMS_PROVIDERS, in order (`validate` checked their settings are present).
pub fn senders(
    config: &Config,
    metrics: &DispatcherMetrics,
) -> anyhow::Result<Vec<Arc<dyn SmsSender>>> {
    let connect_timeout = Some(Duration::from_millis(config.plivo_connect_timeout_ms));
    let request_timeout = Some(Duration::from_millis(config.plivo_request_timeout_ms));
    let mut list = Vec::new();
    for provider in &config.sms_providers {
        let missing = || anyhow::anyhow!("settings of {} are missing", provider.name());
        let sender: Arc<dyn SmsSender> = match provider {
            SmsProvider::Twilio => Arc::new(
                TwilioClient::new(TwilioSettings {
                    base_url: config.twilio_base_url.clone(),
                    account_sid: config.twilio_account_sid.clone().ok_or_else(missing)?,
                    auth_token: config
                        .reports
                        .twilio_auth_token
                        .clone()
                        .ok_or_else(missing)?,
                    from: config.twilio_from_number.clone().ok_or_else(missing)?,
                    status_callback_url: config.reports.twilio_status_callback_url.clone(),
                    connect_timeout,
                    request_timeout,
                })
                .context("building the Twilio HTTP client")?
                .with_metrics(metrics.provider(provider.name())),
            ),
            SmsProvider::Plivo => Arc::new(
                PlivoClient::new(PlivoSettings {
                    base_url: config.plivo_base_url.clone(),
                    auth_id: config.plivo_auth_id.clone().ok_or_else(missing)?,
                    auth_token: config
                        .reports
                        .plivo_auth_token
                        .clone()
                        .ok_or_else(missing)?,
                    sender: config.plivo_sender_number.clone().ok_or_else(missing)?,
                    status_callback_url: config.reports.sms_status_callback_url.clone(),
                    connect_timeout,
                    request_timeout,
                })
                .context("building the Plivo HTTP client")?
                .with_metrics(metrics.provider(provider.name())),
            ),
        };
        list.push(sender);
    }
    Ok(list)
}

/// The BREAKER_* settings.
pub fn breaker_settings(config: &Config) -> BreakerSettings {
    BreakerSettings {
        consecutive_failures: config.breaker_failures,
        failure_ratio: config.breaker_failure_ratio,
        min_calls: config.breaker_min_calls,
        window: Duration::from_secs(config.breaker_window_seconds),
        cooldown: Duration::from_secs(config.breaker_cooldown_seconds),
    }
}

/// How long the health endpoint's open requests may finish after a stop.
const HEALTH_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The worker on Redis (ledger, rate, breakers, delivery records, all shared by every
/// dispatcher), sending through `senders` in order.
pub fn redis_worker(
    config: &Config,
    redis: &otp_shared::redis_conn::RedisConn,
    senders: Vec<Arc<dyn SmsSender>>,
    metrics: &Arc<DispatcherMetrics>,
) -> anyhow::Result<Worker> {
    let keys = config.redis.keys();
    let settings = breaker_settings(config);
    let providers = senders
        .into_iter()
        .map(|sender| {
            let breaker = Breaker::new(
                redis.clone(),
                &keys,
                sender.name(),
                settings.clone(),
                Arc::new(SystemClock),
                metrics.breaker(sender.name()),
            );
            Provider { sender, breaker }
        })
        .collect();
    Ok(Worker {
        ledger: Arc::new(Ledger::new(
            redis.clone(),
            keys.clone(),
            Duration::from_secs(config.job_lease_seconds),
        )),
        limiter: Arc::new(RateLimiter::new(redis.clone(), &keys, config.plivo_max_rps)),
        router: Router::new(providers, config.failover_after_retries),
        policy: config.retry_policy()?,
        job_key: config.job_encryption_key.clone(),
        records: Arc::new(RedisJobRecords {
            conn: redis.clone(),
            keys,
        }),
        metrics: metrics.clone(),
        resend_on_undelivered: config.reports.resend_on_undelivered,
    })
}

pub struct Application {
    consumer: Consumer,
    worker: Worker,
    health: TcpAcceptor,
    health_addr: SocketAddr,
    readiness: Readiness,
    grace: Duration,
}

impl Application {
    /// Prepares everything and binds the health port. Redis and RabbitMQ may still be down:
    /// the dispatcher connects (and reconnects) by itself.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let redis = config.redis.connect()?;
        let metrics = Arc::new(DispatcherMetrics::new());
        let worker = redis_worker(&config, &redis, senders(&config, &metrics)?, &metrics)?;
        let connected = Arc::new(AtomicBool::new(false));
        let consumer = Consumer {
            url: config.amqp.amqp_url.clone(),
            topology: config.amqp.topology(),
            concurrency: config.dispatcher_concurrency,
            connected: connected.clone(),
            metrics: metrics.clone(),
        };
        let bind = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), config.dispatcher_http_port);
        let health = TcpListener::bind(bind)
            .into_acceptor()
            .await
            .with_context(|| format!("binding {bind} (DISPATCHER_HTTP_PORT)"))?;
        let health_addr = health
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("reading the bound address")?;
        Ok(Self {
            consumer,
            worker,
            health,
            health_addr,
            readiness: Readiness {
                redis,
                amqp_connected: connected,
                metrics,
            },
            grace: config.process.grace(),
        })
    }

    /// Address of the health endpoints (useful with DISPATCHER_HTTP_PORT=0).
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// Consumes until `shutdown` resolves; then stops consuming at once, gives in-flight jobs
    /// the grace period, and leaves the rest unacked for the broker to redeliver.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let health = tokio::spawn(
            Server::new_with_acceptor(self.health).run_with_graceful_shutdown(
                health::routes(self.readiness),
                stop.clone().cancelled_owned(),
                Some(HEALTH_SHUTDOWN_GRACE),
            ),
        );
        tracing::info!(health = %self.health_addr, "otp-dispatcher started");
        let serving = tokio::spawn(serve(
            self.consumer,
            Arc::new(self.worker),
            stop.clone(),
            self.grace,
        ));
        shutdown.await;

        stop.cancel();
        let in_flight = serving.await.context("the consumer task panicked")?;
        let _ = health.await;
        tracing::info!(in_flight_at_stop = in_flight, "otp-dispatcher stopped");
        Ok(())
    }
}
