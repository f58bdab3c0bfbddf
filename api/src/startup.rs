//! Builds the application from its config and runs it until a shutdown signal.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use otp_shared::{config::AppEnv, events::NoEvents};
use poem::{
    EndpointExt, Route,
    http::header::CACHE_CONTROL,
    listener::{Acceptor, Listener},
    middleware::{CatchPanic, SetHeader},
};
use poem_openapi::OpenApiService;
use tokio_util::sync::CancellationToken;

use crate::{
    callbacks::{self, Reports, Signing},
    callers::Callers,
    captcha::Captcha,
    code::CodeHasher,
    config::{AccessLog, Config},
    events::{EmbeddedEvents, Events},
    metrics::ApiMetrics,
    middleware::{Around, around, panic_response},
    queue::{AmqpPublisher, JobQueue},
    routes::{HealthApi, OtpApi},
    server::{ConnectionLimits, serve},
    service::{CodePolicy, OtpService},
    store::{RedisStore, StorePolicy, Stores},
    templates::Templates,
    verdict::Verdicts,
};

/// How often the API looks whether any manual block exists (used only with FRAUD_GUARD=off and
/// no budget: a new manual block takes effect within this).
const MANUAL_BLOCKS_REFRESH: Duration = Duration::from_secs(2);

/// How often the fraud guard's conversion gauge is recomputed.
const CONVERSION_REFRESH: Duration = Duration::from_secs(15);
/// How often the send-budget gauges are refreshed.
const BUDGET_REFRESH: Duration = Duration::from_secs(15);

/// How long the admin port's open requests may finish after a stop.
const ADMIN_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

pub struct Application {
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    /// The admin port: /metrics, a detailed /readyz, /healthz, /docs, /openapi.json.
    admin: poem::listener::TcpAcceptor,
    admin_addr: SocketAddr,
    admin_app: poem::endpoint::BoxEndpoint<'static>,
    limits: ConnectionLimits,
    app: poem::endpoint::BoxEndpoint<'static>,
    background: CancellationToken,
    publisher_task: tokio::task::JoinHandle<()>,
    grace: Duration,
    /// DRAIN_SECONDS, and what it tells to stop looking ready.
    drain: Duration,
    service: Arc<OtpService>,
}

impl Application {
    /// Binds the port and starts the broker connection. Redis and RabbitMQ may still be down:
    /// the server starts anyway, reports not-ready and answers 503 until they are back.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::embedded::refuse_production(&config)?;
        config.check_production().map_err(anyhow::Error::msg)?;
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let templates = Arc::new(Templates::load(&config.otp).map_err(anyhow::Error::msg)?);
        tracing::info!(
            locales = templates.locales().join(","),
            "SMS templates checked"
        );
        let body_timeout = Duration::from_secs(config.http.body_read_timeout_seconds);
        let access_log = config
            .http
            .access_log
            .unwrap_or(AccessLog::default_for(config.process.app_env));
        let callers = Arc::new(Callers::load(&config.access, config.process.app_env)?);
        let metrics = Arc::new(ApiMetrics::with_clients(callers.labels()));
        let verdicts = Arc::new(Verdicts::from_args(&config.tokens, config.process.app_env)?);
        let background = CancellationToken::new();
        // Production: Redis and RabbitMQ. The one-process mode: memory, and no Redis at all.
        let (stores, queue, events, publisher_task, delivery_metrics) = if config.embedded {
            let env = config.process.app_env;
            config.webhooks.check(env).map_err(anyhow::Error::msg)?;
            let events: Arc<dyn Events> = if config.webhooks.events_enabled {
                Arc::new(EmbeddedEvents::start(&config.webhooks, background.clone())?)
            } else {
                Arc::new(NoEvents)
            };
            let embedded = crate::embedded::start(&config, background.clone(), events.clone())?;
            let queue: Arc<dyn JobQueue> = Arc::new(embedded.queue);
            (
                Stores::of(embedded.store),
                queue,
                events,
                embedded.task,
                Some(embedded.metrics),
            )
        } else {
            let redis = config.redis.connect()?;
            let (publisher, task) = AmqpPublisher::start(
                config.amqp.amqp_url.clone(),
                config.amqp.topology(),
                Duration::from_millis(config.publish_confirm_timeout_ms),
                metrics.queue_consumers.clone(),
                metrics.events_failed.clone(),
                background.clone(),
            );
            let fingerprint = otp_shared::agreement::Fingerprint::of(
                &config.redis,
                &config.amqp,
                &config.reports,
                &config.otp.job_encryption_key,
            );
            tokio::spawn(otp_shared::agreement::keep_written(
                redis.clone(),
                config.redis.keys().settings_fingerprint(),
                fingerprint,
                background.clone(),
            ));
            let store = RedisStore::new(
                redis,
                config.redis.keys(),
                StorePolicy::from_config(&config),
            );
            tokio::spawn(
                store
                    .clone()
                    .watch_manual_blocks(MANUAL_BLOCKS_REFRESH, background.clone()),
            );
            let events: Arc<dyn Events> = if config.webhooks.events_enabled {
                Arc::new(publisher.clone())
            } else {
                Arc::new(NoEvents)
            };
            let queue: Arc<dyn JobQueue> = Arc::new(publisher);
            (Stores::of(store), queue, events, task, None)
        };
        let otp = &config.otp;
        let limits = &config.limits;
        let service = Arc::new(OtpService::new(
            stores.clone(),
            queue.clone(),
            events.clone(),
            CodeHasher::new(otp.otp_hmac_key.clone()),
            otp.job_encryption_key.clone(),
            CodePolicy {
                length: otp.otp_length.into(),
                validity: otp.validity(),
                templates,
                allowed_countries: otp.allowed_countries.clone(),
                resend_cooldown_seconds: limits.resend_cooldown_seconds,
                key_budgets: config.access.api_key_max_sends_per_hour.clone(),
            },
            metrics.clone(),
            config.fraud.clone(),
        ));
        let service_for_drain = service.clone();
        let captcha = Captcha::from_args(
            &config.captcha,
            config.process.app_env,
            stores.codes.clone(),
            metrics.clone(),
        )?
        .map(Arc::new);

        let api = OpenApiService::new(
            (
                OtpApi {
                    service: service.clone(),
                    trusted_proxies: Arc::new(limits.trusted_proxies.clone()),
                    ipv6_prefix: limits.ipv6_prefix_length,
                    verdicts: verdicts.clone(),
                    captcha: captcha.clone(),
                    keys_exist: callers.has_keys(),
                },
                HealthApi {
                    service: service.clone(),
                    metrics: metrics.clone(),
                    delivery_metrics: delivery_metrics.clone(),
                    detailed: config.process.app_env == AppEnv::Development,
                },
            ),
            "OTP API",
            env!("CARGO_PKG_VERSION"),
        );
        let signing = |token: &Option<secrecy::SecretString>, url: &Option<String>| {
            Some(Signing {
                auth_token: token.clone()?,
                callback_url: url.clone()?,
            })
        };
        let reports = Arc::new(Reports {
            resend: config.reports.resend_on_undelivered.then(|| queue.clone()),
            plivo: signing(
                &config.reports.plivo_auth_token,
                &config.reports.sms_status_callback_url,
            ),
            plivo_accept_v2: config.plivo_accept_v2,
            twilio: signing(
                &config.reports.twilio_auth_token,
                &config.reports.twilio_status_callback_url,
            ),
            stores: stores.clone(),
            job_key: config.otp.job_encryption_key.clone(),
            metrics: metrics.clone(),
            events: events.clone(),
        });
        tokio::spawn(watch_budgets(
            stores.codes.clone(),
            metrics.clone(),
            BUDGET_REFRESH,
            background.clone(),
        ));
        if config.fraud.fraud_guard != crate::fraud::Mode::Off {
            tokio::spawn(watch_conversion(
                stores.fraud.clone(),
                metrics.conversion_ratio.clone(),
                CONVERSION_REFRESH,
                background.clone(),
            ));
        }
        // Rendered once: every answer shares these buffers, however many clients ask.
        let spec = Bytes::from(crate::openapi::document(
            &api.spec(),
            otp.otp_length.into(),
            callers.access(),
        ));
        let docs_enabled = config
            .http
            .docs_enabled
            .unwrap_or(config.process.app_env == AppEnv::Development);
        let docs = Bytes::from(api.swagger_ui_html());
        let spec_body = || poem::get(shared_body(spec.clone(), "application/json; charset=utf-8"));
        let docs_body = || poem::get(shared_body(docs.clone(), "text/html; charset=utf-8"));
        let jwks = poem::get(shared_body(verdicts.jwks(), "application/jwk-set+json"))
            .with(SetHeader::new().overriding(CACHE_CONTROL, "public, max-age=300"));
        let mut app = Route::new()
            .nest("/", api)
            .at("/.well-known/jwks.json", jwks);
        // The public port shows the documents in development, or with DOCS_ENABLED=true; the
        // admin port always does.
        if docs_enabled {
            app = app
                .at("/openapi.json", spec_body())
                .at("/docs", docs_body());
        }
        // The signup demo (examples/signup/), in development only.
        if config.process.app_env == AppEnv::Development {
            let page = include_str!("../../examples/signup/index.html");
            let page = Bytes::from_static(page.as_bytes());
            // What the page needs for the CAPTCHA widget: the provider and its public site key.
            let widget = match config.captcha.widget() {
                Some((provider, key)) => {
                    serde_json::json!({ "provider": provider.name(), "siteKey": key })
                }
                None => serde_json::json!({ "provider": "off" }),
            };
            let widget = Bytes::from(widget.to_string());
            app = app
                .at(
                    "/demo",
                    poem::get(shared_body(page, "text/html; charset=utf-8")),
                )
                .at(
                    "/demo/captcha.json",
                    poem::get(shared_body(widget, "application/json")),
                );
        }
        let admin_api = OpenApiService::new(
            HealthApi {
                service,
                metrics: metrics.clone(),
                delivery_metrics,
                detailed: true,
            },
            "OTP API admin",
            env!("CARGO_PKG_VERSION"),
        );
        let admin_app = Route::new()
            .nest("/", admin_api)
            .at("/openapi.json", spec_body())
            .at("/docs", docs_body())
            .with(CatchPanic::new().with_handler(panic_response))
            .boxed();
        let admin_bind = config.admin_addr();
        let admin = poem::listener::TcpListener::bind(admin_bind)
            .into_acceptor()
            .await
            .with_context(|| format!("binding {admin_bind} (ADMIN_BIND, ADMIN_PORT)"))?;
        let admin_addr = admin
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("reading the admin port's address")?;
        let app = app
            .at(
                "/api/otp/callbacks/plivo",
                poem::post(callbacks::plivo).data(reports.clone()),
            )
            .at(
                "/api/otp/callbacks/twilio",
                poem::post(callbacks::twilio).data(reports),
            )
            .with(CatchPanic::new().with_handler(panic_response))
            .around({
                let around_all = Arc::new(Around {
                    metrics: metrics.clone(),
                    callers,
                    cors: crate::cors::Cors::new(&config.cors_allowed_origins),
                    body_timeout,
                    access_log,
                });
                move |ep, req| around(ep, req, around_all.clone())
            })
            .boxed();

        let bind = SocketAddr::new(config.bind_address, config.port);
        let listener =
            crate::server::bind(bind).with_context(|| format!("binding {bind} (PORT)"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        Ok(Self {
            addr,
            listener,
            admin,
            admin_addr,
            admin_app,
            limits: config.http.connection_limits(),
            app,
            background,
            publisher_task,
            grace: config.process.grace(),
            drain: Duration::from_secs(config.http.drain_seconds),
            service: service_for_drain,
        })
    }

    /// The bound address (useful with PORT=0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin port's address (useful with ADMIN_PORT=0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish within the grace
    /// period and closes the broker connection.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Handle::current();
        tracing::info!(
            addr = %self.addr,
            admin = %self.admin_addr,
            runtime = ?runtime.runtime_flavor(),
            worker_threads = runtime.metrics().num_workers(),
            "otp-api listening"
        );
        let admin_stop = CancellationToken::new();
        let admin = tokio::spawn(
            poem::Server::new_with_acceptor(self.admin).run_with_graceful_shutdown(
                self.admin_app,
                admin_stop.clone().cancelled_owned(),
                Some(ADMIN_SHUTDOWN_GRACE),
            ),
        );
        // At the signal: not ready at once, still serving for DRAIN_SECONDS, then stop.
        let (service, drain) = (self.service, self.drain);
        let drained = async move {
            shutdown.await;
            service.start_draining();
            if !drain.is_zero() {
                tracing::info!(seconds = drain.as_secs(), "draining: /readyz answers 503");
                tokio::time::sleep(drain).await;
            }
        };
        let served = serve(self.listener, self.app, self.limits, drained, self.grace).await;
        admin_stop.cancel();
        let _ = admin.await;
        self.background.cancel();
        let _ =
            tokio::time::timeout(otp_shared::supervise::CLOSE_TIMEOUT, self.publisher_task).await;
        tracing::info!("otp-api stopped");
        served.context("HTTP server failed")
    }
}

/// An endpoint answering `body` (shared, never copied) as `content_type`.
fn shared_body(body: Bytes, content_type: &'static str) -> impl poem::Endpoint {
    poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type(content_type)
            .body(body.clone())
    })
}

/// Keeps `otp_send_budget_limit{scope}` and `otp_send_budget_remaining{scope}` current for
/// every configured budget, every `every`. While the store cannot say, the series are removed
/// rather than left stale.
pub async fn watch_budgets(
    store: Arc<dyn crate::store::CodeStore>,
    metrics: Arc<ApiMetrics>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut shown: Vec<String> = Vec::new();
    loop {
        let uses = store.budgets().await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "send budgets unavailable");
            Vec::new()
        });
        for gone in shown
            .iter()
            .filter(|s| !uses.iter().any(|u| u.scope == **s))
        {
            let _ = metrics.budget_limit.remove_label_values(&[gone]);
            let _ = metrics.budget_remaining.remove_label_values(&[gone]);
        }
        shown = uses.iter().map(|u| u.scope.clone()).collect();
        for budget in uses {
            let scope = [budget.scope.as_str()];
            metrics
                .budget_limit
                .with_label_values(&scope)
                .set(budget.limit.into());
            let left = budget.limit.saturating_sub(budget.spent);
            metrics
                .budget_remaining
                .with_label_values(&scope)
                .set(left.into());
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Keeps `otp_conversion_ratio{country}` current: verified ÷ counted sends per country seen in
/// the window (sends younger than the grace are not counted), every `every`. Countries no longer
/// seen lose their label.
pub async fn watch_conversion(
    store: Arc<dyn crate::store::FraudStore>,
    gauge: prometheus::GaugeVec,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut shown: Vec<String> = Vec::new();
    loop {
        match store.conversion_by_country().await {
            Ok(ratios) => {
                for gone in shown
                    .iter()
                    .filter(|c| !ratios.iter().any(|(r, _)| r == *c))
                {
                    let _ = gauge.remove_label_values(&[gone]);
                }
                shown = ratios.iter().map(|(c, _)| c.clone()).collect();
                for (country, ratio) in ratios {
                    gauge.with_label_values(&[&country]).set(ratio);
                }
            }
            Err(e) => tracing::debug!(error = %e, "conversion ratios unavailable"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Everything `otp-api config check` and start-up refuse in `config`, each check's error
/// listed (errors), and what start-up only warns about (warnings).
pub fn problems(config: &Config) -> (Vec<String>, Vec<String>) {
    let env = config.process.app_env;
    let errors = otp_shared::settings::errors([
        crate::embedded::refuse_production(config).map_err(|e| format!("{e:#}")),
        config.check_keys(),
        config.reports.check_production(env),
        config.captcha.check(env),
        config.webhooks.check(env),
        config.check_ceiling(),
        Templates::load(&config.otp).map(|_| ()),
        Callers::load(&config.access, env)
            .map(|_| ())
            .map_err(|e| format!("{e:#}")),
        Verdicts::from_args(&config.tokens, env)
            .map(|_| ())
            .map_err(|e| format!("{e:#}")),
    ]);
    (errors, config.warnings())
}
