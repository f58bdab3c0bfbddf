//! Queue topology and the AMQP conventions both binaries share.
//!
//! The topology is declared idempotently by whichever process starts first, from this one
//! definition, so api and dispatcher can never disagree about queue arguments (RabbitMQ refuses a
//! redeclaration with different arguments).

use anyhow::Context;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::urls::AmqpUrl;

/// Header carrying the API request id, so dispatcher logs can be joined to API logs.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Header the dispatcher sets on messages it dead-letters itself.
pub const DEAD_REASON_HEADER: &str = "x-otp-dead-reason";
/// Header the dispatcher sets on dead letters: when (unix seconds).
pub const DEAD_AT_HEADER: &str = "x-otp-dead-at";
/// Header the dispatcher sets on dead letters: provider calls made for the job.
pub const ATTEMPTS_HEADER: &str = "x-otp-attempts";
/// Header of a resend after an undelivered report: the provider that failed to deliver, which
/// the resend avoids when another is configured.
pub const RESEND_HEADER: &str = "x-otp-resend-avoid";
/// A poison message is dead-lettered by RabbitMQ after this many deliveries, so a message that
/// crashes every consumer cannot loop forever.
pub const DELIVERY_LIMIT: i64 = 20;
/// Dead letters are kept a week by default (DEAD_LETTER_TTL_HOURS)...
pub const DEFAULT_DEAD_LETTER_TTL_HOURS: u32 = 168;
/// ...and at most this many (DEAD_LETTER_MAX_MESSAGES); the oldest go first.
pub const DEFAULT_DEAD_LETTER_MAX_MESSAGES: u32 = 100_000;

/// The names that make up the send-job topology for one SMS_QUEUE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Durable quorum queue the API publishes to (default exchange, routing key = name).
    pub queue: String,
    /// Direct exchange that receives dead letters.
    pub dead_exchange: String,
    /// Durable queue where dead letters rest for an operator to inspect, bounded in age and
    /// length so it cannot grow without limit.
    pub dead_queue: String,
    pub dead_letter_ttl_hours: u32,
    pub dead_letter_max_messages: u32,
}

impl Topology {
    /// The topology of `queue`, with the default dead-letter bounds.
    pub fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            dead_exchange: format!("{queue}.dlx"),
            dead_queue: format!("{queue}.dead"),
            dead_letter_ttl_hours: DEFAULT_DEAD_LETTER_TTL_HOURS,
            dead_letter_max_messages: DEFAULT_DEAD_LETTER_MAX_MESSAGES,
        }
    }

    pub fn with_dead_letter_bounds(mut self, ttl_hours: u32, max_messages: u32) -> Self {
        self.dead_letter_ttl_hours = ttl_hours;
        self.dead_letter_max_messages = max_messages;
        self
    }

    /// Declares exchange, queues and binding; safe to call any number of times.
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.dead_exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange {}", self.dead_exchange))?;

        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), long_string("quorum"));
        let ttl_ms = i64::from(self.dead_letter_ttl_hours) * 3_600_000;
        dead_args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        dead_args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.dead_letter_max_messages.into()),
        );
        channel
            .queue_declare(self.dead_queue.as_str().into(), durable, dead_args)
            .await
            .with_context(|| format!("declaring queue {}", self.dead_queue))?;
        channel
            .queue_bind(
                self.dead_queue.as_str().into(),
                self.dead_exchange.as_str().into(),
                self.dead_queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding queue {}", self.dead_queue))?;

        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.dead_exchange),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(&self.dead_queue),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        channel
            .queue_declare(self.queue.as_str().into(), durable, args)
            .await
            .with_context(|| format!("declaring queue {}", self.queue))?;
        Ok(())
    }
}

/// Connects (within 5 s), opens a channel with publisher confirms on, and declares `topology`:
/// what both binaries do each time they (re)connect.
pub async fn open_confirmed_channel(
    url: &AmqpUrl,
    name: &str,
    topology: &Topology,
) -> anyhow::Result<(Connection, Channel)> {
    let connection = tokio::time::timeout(std::time::Duration::from_secs(5), connect_to(url, name))
        .await
        .context("connecting to RabbitMQ timed out")??;
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    topology.declare(&channel).await?;
    Ok((connection, channel))
}

/// Opens a connection named after the process, so operators can tell clients apart.
pub async fn connect_to(url: &AmqpUrl, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(url.uri().clone(), props)
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", url.redacted()))
}

/// [`connect_to`] from a URL string (tools and tests); a bad URL's error never repeats it.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let url = AmqpUrl::parse(url).map_err(|e| anyhow::anyhow!("AMQP_URL {e}"))?;
    connect_to(&url, name).await
}

pub fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Reads a string header, whichever AMQP string type the sender used.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Properties for a send job: persistent JSON, with the given headers.
pub fn job_properties(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_headers(headers)
}
