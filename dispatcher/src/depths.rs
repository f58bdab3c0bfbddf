//! `otp_queue_ready_messages{queue}` and `otp_dead_letter_messages{queue}`: how many messages
//! wait in the send queue and in its dead-letter queue. Every dispatcher could read them (a passive declare), but then each queue would have
//! one series per replica. Instead the dispatchers elect one exporter per queue through a Redis
//! lease (`depths:<queue>`, renewed every refresh, lapsing 3 refreshes after its holder stops):
//! the holder exports, the others remove the series. A holder that cannot read a depth removes
//! the series too, so a dashboard shows a gap, never a stale number.

use std::{sync::LazyLock, time::Duration};

use lapin::{Channel, options::QueueDeclareOptions, types::FieldTable};
use redis::Script;

use otp_delivery::metrics::DeliveryMetrics;
use otp_shared::{amqp::Topology, keys::Keys, redis_conn::RedisConn};

/// How often the depths are read (and the lease renewed).
pub const DEPTH_REFRESH: Duration = Duration::from_secs(5);
/// How long the lease outlives its holder's last renewal.
const LEASE: Duration = Duration::from_secs(15);

/// Takes the lease if free, renews it if ours; 1 when we hold it.
static LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local holder = redis.call('GET', KEYS[1])
        if holder == false or holder == ARGV[1] then
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
            return 1
        end
        return 0",
    )
});

/// Who exports the depths, and where the lease lives.
#[derive(Clone)]
pub struct DepthWatch {
    pub redis: RedisConn,
    pub keys: Keys,
    pub topology: Topology,
    pub metrics: std::sync::Arc<DeliveryMetrics>,
    /// This dispatcher's id, the lease's value.
    pub owner: String,
}

impl DepthWatch {
    /// Exports the depths while this dispatcher holds the lease, on `channel` (a channel of its
    /// own: a failed passive declare closes it). Ends, with the series removed, when the channel
    /// does; the consumer starts a new watch with each connection.
    pub async fn run(self, channel: lapin::Result<Channel>) {
        let Ok(channel) = channel else { return };
        loop {
            if self.holds_lease().await {
                if let Err(e) = self.export(&channel).await {
                    tracing::debug!(error = %e, "queue depth unavailable");
                    self.clear();
                    return;
                }
            } else {
                self.clear();
            }
            tokio::time::sleep(DEPTH_REFRESH).await;
        }
    }

    async fn holds_lease(&self) -> bool {
        let held: redis::RedisResult<i64> = LEASE_SCRIPT
            .key(self.keys.depth_watcher(&self.topology.queue))
            .arg(&self.owner)
            .arg(LEASE.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await;
        held.is_ok_and(|h| h == 1)
    }

    async fn export(&self, channel: &Channel) -> lapin::Result<()> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        for (queue, gauge) in self.gauges() {
            let declared = channel
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await?;
            gauge
                .with_label_values(&[queue])
                .set(declared.message_count().into());
        }
        Ok(())
    }

    fn gauges(&self) -> [(&str, &prometheus::IntGaugeVec); 2] {
        [
            (&self.topology.queue, &self.metrics.queue_ready),
            (&self.topology.dead_queue, &self.metrics.dead_letters),
        ]
    }

    /// Removes the series: this dispatcher does not know the depths (now).
    pub fn clear(&self) {
        for (queue, gauge) in self.gauges() {
            let _ = gauge.remove_label_values(&[queue]);
        }
    }
}
