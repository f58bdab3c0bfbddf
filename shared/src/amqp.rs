//! Queue topology and the AMQP conventions both binaries share.
//!
//! The topology is declared idempotently by whichever process starts first, from this one
//! definition, so api and dispatcher create queues with the same arguments. A queue that already
//! exists is used as it is: its arguments were fixed when it was created (RabbitMQ refuses a
//! redeclaration with other arguments), and a queue holding jobs must never need deleting to
//! start a new version.

use anyhow::Context;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use std::time::Duration;

use lapin::uri::AMQPUri;

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
/// The dead-letter queue's delivery limit, set explicitly: RabbitMQ 4.x gives quorum queues a
/// default of 20, and every `dlq list` returns each message it shows (a delivery), so dead
/// letters would be dropped after 20 listings. Positive, so RabbitMQ 3.x takes it too.
pub const DEAD_DELIVERY_LIMIT: i64 = 1_000_000;
/// Dead letters are kept a week by default (DEAD_LETTER_TTL_HOURS)...
pub const DEFAULT_DEAD_LETTER_TTL_HOURS: u32 = 168;
/// ...and at most this many (DEAD_LETTER_MAX_MESSAGES); the oldest go first.
pub const DEFAULT_DEAD_LETTER_MAX_MESSAGES: u32 = 100_000;
/// Nodes that hold a copy of each queue (QUEUE_REPLICAS); RabbitMQ uses all nodes when the
/// cluster has fewer. Three survive the loss of one node with a quorum left.
pub const DEFAULT_QUEUE_REPLICAS: u16 = 3;

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
    /// `x-quorum-initial-group-size` of both queues.
    pub replicas: u16,
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
            replicas: DEFAULT_QUEUE_REPLICAS,
        }
    }

    pub fn with_replicas(mut self, replicas: u16) -> Self {
        self.replicas = replicas;
        self
    }

    pub fn with_dead_letter_bounds(mut self, ttl_hours: u32, max_messages: u32) -> Self {
        self.dead_letter_ttl_hours = ttl_hours;
        self.dead_letter_max_messages = max_messages;
        self
    }

    /// Declares exchange, queues and binding; safe to call any number of times. Queues are
    /// created when missing and otherwise used as they are (see the module docs).
    pub async fn declare(&self, connection: &Connection, channel: &Channel) -> anyhow::Result<()> {
        // Verification events (crate::events), for whoever binds a queue to them.
        channel
            .exchange_declare(
                crate::events::EXCHANGE.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange {}", crate::events::EXCHANGE))?;
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

        let mut dead_args = self.quorum_args();
        let ttl_ms = i64::from(self.dead_letter_ttl_hours) * 3_600_000;
        dead_args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        dead_args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.dead_letter_max_messages.into()),
        );
        dead_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DEAD_DELIVERY_LIMIT),
        );
        ensure_queue(connection, &self.dead_queue, dead_args).await?;
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

        let mut args = self.quorum_args();
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
        ensure_queue(connection, &self.queue, args).await
    }

    fn quorum_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        args.insert(
            "x-quorum-initial-group-size".into(),
            AMQPValue::LongLongInt(self.replicas.into()),
        );
        args
    }
}

/// Declares durable queue `name` with `args`. If it exists with other arguments (made by an older
/// version, or with other settings), it is used as it is, with a warning: the declare that the
/// broker refuses runs on a channel of its own, because the broker closes the channel it fails on.
async fn ensure_queue(connection: &Connection, name: &str, args: FieldTable) -> anyhow::Result<()> {
    let probe = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match probe.queue_declare(name.into(), durable, args).await {
        Ok(_) => {
            let _ = probe.close(200, "done".into()).await;
            Ok(())
        }
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == PRECONDITION_FAILED) =>
        {
            tracing::warn!(
                queue = name,
                "the queue exists with other arguments (set when it was created); using it as it is"
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("declaring queue {name}")),
    }
}

/// AMQP's reply code for a redeclaration with other arguments.
const PRECONDITION_FAILED: u16 = 406;

/// How long one node may take to accept a connection, open a channel and declare the topology
/// before the next node is tried.
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects, opens a channel with publisher confirms on, and declares `topology`: what both
/// binaries do each time they (re)connect. With several nodes in `url`, they are tried in turn
/// from the one last reached, each within [`NODE_CONNECT_TIMEOUT`]; a node that accepts the
/// connection but cannot declare (a minority node, say) counts as unreachable.
pub async fn open_confirmed_channel(
    url: &AmqpUrl,
    name: &str,
    topology: &Topology,
) -> anyhow::Result<(Connection, Channel)> {
    let mut errors = Vec::new();
    for (index, node) in url.nodes() {
        let attempt = async {
            let connection = connect_node(node, name).await?;
            let channel = connection
                .create_channel()
                .await
                .context("opening a channel")?;
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await
                .context("enabling publisher confirms")?;
            topology.declare(&connection, &channel).await?;
            anyhow::Ok((connection, channel))
        };
        let result = tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
        match result {
            Ok(opened) => {
                url.connected_to(index);
                tracing::info!(node = %url.redacted_node(index), "connected to RabbitMQ");
                return Ok(opened);
            }
            Err(e) => errors.push(format!("{}: {e:#}", url.redacted_node(index))),
        }
    }
    anyhow::bail!("no RabbitMQ node reachable ({})", errors.join("; "))
}

/// Opens a connection named after the process, so operators can tell clients apart.
async fn connect_node(node: &AMQPUri, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri(node.clone(), props)
        .await
        .context("connecting")
}

/// Connects to the first reachable node of `url` (a string: tools and tests), without declaring
/// anything; a bad URL's error never repeats it.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let url = AmqpUrl::parse(url).map_err(|e| anyhow::anyhow!("AMQP_URL {e}"))?;
    connect_url(&url, name).await
}

/// Connects to the first reachable node of `url`, without declaring anything.
pub async fn connect_url(url: &AmqpUrl, name: &str) -> anyhow::Result<Connection> {
    let mut errors = Vec::new();
    for (index, node) in url.nodes() {
        match connect_node(node, name).await {
            Ok(connection) => return Ok(connection),
            Err(e) => errors.push(format!("{}: {e:#}", url.redacted_node(index))),
        }
    }
    anyhow::bail!("no RabbitMQ node reachable ({})", errors.join("; "))
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
