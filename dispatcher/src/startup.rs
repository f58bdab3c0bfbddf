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

use otp_delivery::{metrics::DeliveryMetrics, source::serve, worker::Worker};

use otp_shared::agreement::Fingerprint;

use crate::{
    agreement::Agreement,
    config::Config,
    consumer::Consumer,
    health::{self, Readiness},
};

/// How long the health endpoint's open requests may finish after a stop.
const HEALTH_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The worker on Redis with the configured providers, counting into `metrics`.
pub fn redis_worker(
    config: &Config,
    redis: &otp_shared::redis_conn::RedisConn,
    metrics: &Arc<DeliveryMetrics>,
) -> anyhow::Result<Worker> {
    let senders = config
        .delivery
        .providers
        .senders(&config.reports, metrics)?;
    Worker::on_redis(
        redis,
        config.redis.keys(),
        senders,
        &config.delivery,
        config.job_encryption_key.clone(),
        config.reports.resend_on_undelivered,
        metrics.clone(),
    )
}

pub struct Application {
    consumer: Consumer,
    /// EVENTS_WEBHOOK_URL's delivery, when set.
    webhooks: Option<(crate::webhooks::Webhooks, otp_shared::urls::AmqpUrl)>,
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
        config.delivery.warn_deprecated();
        let redis = config.redis.connect()?;
        let metrics = Arc::new(DeliveryMetrics::for_process());
        let agreement = Agreement::new(
            redis.clone(),
            config.redis.keys().settings_fingerprint(),
            Fingerprint::of(
                &config.redis,
                &config.amqp,
                &config.reports,
                &config.job_encryption_key,
            ),
            metrics.clone(),
        );
        let consumer = Consumer::new(
            config.amqp.amqp_url.clone(),
            config.amqp.topology(),
            config.dispatcher_concurrency,
            redis.clone(),
            config.redis.keys(),
            agreement.clone(),
            metrics.clone(),
        );
        let mut worker = redis_worker(&config, &redis, &metrics)?;
        if config.webhooks.events_enabled {
            worker = worker.with_events(Arc::new(consumer.events.clone()));
        }
        let connected = consumer.connected.clone();
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
        let webhooks =
            crate::webhooks::Webhooks::from_args(&config.webhooks, &config.amqp.sms_queue)?
                .map(|w| (w, config.amqp.amqp_url.clone()));
        Ok(Self {
            consumer,
            webhooks,
            worker,
            health,
            health_addr,
            readiness: Readiness {
                redis,
                amqp_connected: connected,
                stopping: Arc::new(AtomicBool::new(false)),
                agreement,
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
        let (stop, health_stop) = (CancellationToken::new(), CancellationToken::new());
        let stopping = self.readiness.stopping.clone();
        // The health port outlives consuming: /readyz says 503 until the process ends.
        let health = tokio::spawn(
            Server::new_with_acceptor(self.health).run_with_graceful_shutdown(
                health::routes(self.readiness),
                health_stop.clone().cancelled_owned(),
                Some(HEALTH_SHUTDOWN_GRACE),
            ),
        );
        if let Some((webhooks, amqp)) = self.webhooks {
            tokio::spawn(webhooks.run(amqp, stop.clone()));
        }
        tracing::info!(health = %self.health_addr, "otp-dispatcher started");
        let serving = tokio::spawn(serve(
            self.consumer,
            Arc::new(self.worker),
            stop.clone(),
            self.grace,
        ));
        shutdown.await;

        stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        stop.cancel();
        let in_flight = serving.await.context("the consumer task panicked")?;
        health_stop.cancel();
        let _ = health.await;
        tracing::info!(in_flight_at_stop = in_flight, "otp-dispatcher stopped");
        Ok(())
    }
}
