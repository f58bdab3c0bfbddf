//! The API's settings for tests (feature `test-support`, enabled only by dev-dependencies):
//! the API's own suite and the dispatcher's, which runs the API beside its dispatchers.

use std::net::Ipv4Addr;

use base64::{Engine, engine::general_purpose::STANDARD};
use otp_shared::config::{AmqpArgs, LogFormat};
use otp_testkit::{AMQP_URL, job_key};

use crate::config::{Config, HmacKey, HttpLimits, Limits, OtpSettings};

/// Settings on the tests' Redis and RabbitMQ under `key_prefix` and `queue`: codes of 6 digits
/// for 300 s with 5 attempts, every limit off (tests turn on what they check), the fraud guard
/// in monitor mode.
pub fn api_config(key_prefix: &str, queue: &str) -> Config {
    Config {
        port: 0,
        bind_address: Ipv4Addr::LOCALHOST.into(),
        cors_allowed_origins: vec![],
        admin_port: 0,
        admin_bind: None,
        redis: otp_testkit::redis_args(key_prefix, 500),
        amqp: AmqpArgs::new(AMQP_URL.parse().unwrap(), queue),
        publish_confirm_timeout_ms: 2000,
        otp: OtpSettings {
            otp_length: 6,
            otp_validity_seconds: 300,
            otp_max_attempts: 5,
            sms_template: None,
            sms_default_locale: "en".into(),
            sms_locale_by_country: true,
            sms_templates_dir: None,
            otp_hmac_key: HmacKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap(),
            job_encryption_key: job_key(),
            allowed_countries: vec![],
            sms_origin: None,
            sms_android_app_hash: None,
            sms_max_segments: 2,
        },
        limits: Limits {
            resend_cooldown_seconds: 0,
            max_sends_per_number_per_hour: 0,
            max_requests_per_ip_per_minute: 0,
            max_verifies_per_number_per_15_minutes: 0,
            max_verifies_per_ip_per_minute: 0,
            max_sends_per_hour: None,
            max_sends_per_country_per_hour: Default::default(),
            ipv6_prefix_length: 64,
            trusted_proxies: vec![],
        },
        http: HttpLimits {
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 10,
            keep_alive_timeout_seconds: 60,
            max_connections: 10_000,
            response_write_timeout_seconds: 10,
            connection_max_age_seconds: 300,
            http2_cleartext: false,
            http2_max_concurrent_streams: 32,
            docs_enabled: None,
            access_log: None,
            drain_seconds: 0,
        },
        fraud: crate::fraud::FraudSettings {
            fraud_guard: crate::fraud::Mode::Monitor,
            ..crate::fraud::FraudSettings::off()
        },
        access: crate::callers::AccessArgs {
            api_keys: vec![],
            api_keys_file: None,
            public_api: false,
            api_key_max_sends_per_hour: Default::default(),
        },
        tokens: crate::verdict::TokenArgs {
            token_signing_keys: None,
            token_issuer: "otp-api".into(),
            token_audience: "signup".into(),
            token_ttl_seconds: 300,
        },
        webhooks: otp_delivery::webhook::WebhookArgs {
            events_webhook_url: None,
            events_webhook_secret: None,
            events_webhook_max_age_hours: 24,
            events_enabled: true,
        },
        captcha: crate::config::CaptchaArgs {
            captcha_provider: crate::config::Provider::Off,
            captcha_secret: None,
            captcha_site_key: None,
            captcha_verify_url: None,
            captcha_timeout_ms: 2000,
            captcha_fail_open: false,
            captcha_min_score: 0.5,
            captcha_hostnames: vec![],
        },
        reports: otp_shared::config::ReportArgs {
            plivo_auth_token: None,
            sms_status_callback_url: None,
            twilio_auth_token: None,
            twilio_status_callback_url: None,
            resend_on_undelivered: true,
        },
        plivo_accept_v2: false,
        process: otp_shared::config::ProcessArgs {
            app_env: otp_shared::config::AppEnv::Development,
            log_format: LogFormat::Pretty,
            shutdown_grace_seconds: 2,
            worker_threads: 1,
        },
        embedded: false,
        embedded_trial: false,
    }
}
