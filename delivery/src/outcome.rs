//! What one provider call, and then a whole job, came to. Outcomes are data: the Plivo client
//! classifies, the retry loop decides, the worker maps the final outcome to ack or dead-letter.

use std::time::Duration;

/// The classified result of one provider call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Accepted by the provider (queued for delivery).
    Sent { provider_id: Option<String> },
    /// Worth trying again: 429, 5xx, connect errors, timeouts. `after` is the provider's
    /// Retry-After, if it sent one.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Will never succeed, whichever provider tries: the destination or the request is the
    /// problem (a 4xx about the number).
    Fail { reason: String },
    /// This provider cannot send at all (credentials, account, configuration): another
    /// provider may.
    Unusable { reason: String },
}

/// Why a job was dead-lettered, for `otp_dead_letters_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// A provider refused the message for good (a 4xx about the number or the text).
    Rejected,
    /// No provider could send at all (credentials, account, configuration).
    NoProvider,
    /// The message could not be read (not a send job, or sealed with an unknown key).
    Unreadable,
}

impl DeadReason {
    pub const ALL: [Self; 3] = [Self::Rejected, Self::NoProvider, Self::Unreadable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::NoProvider => "no_provider",
            Self::Unreadable => "unreadable",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    Sent {
        provider_id: Option<String>,
        attempts: u32,
    },
    Failed {
        reason: String,
        /// The reason's class, for the metrics.
        cause: DeadReason,
        attempts: u32,
    },
    /// The code expired before the SMS could be sent; it is never sent late.
    Expired { attempts: u32 },
}

/// What the queue does with a delivered job, once the worker is done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done with (sent, failed for good and dead-lettered, expired, withdrawn or a duplicate).
    Ack,
    /// Keep it for an operator, with the reason and the provider attempts made.
    DeadLetter { reason: String, attempts: u32 },
    /// Not finished (shutdown): leave it unacknowledged for the broker to redeliver.
    Leave,
}

impl Final {
    /// Sent and expired jobs are acked; a failed one is kept as a dead letter.
    pub fn settle(&self) -> Settle {
        match self {
            Self::Sent { .. } | Self::Expired { .. } => Settle::Ack,
            Self::Failed {
                reason, attempts, ..
            } => Settle::DeadLetter {
                reason: reason.clone(),
                attempts: *attempts,
            },
        }
    }

    pub fn attempts(&self) -> u32 {
        match self {
            Self::Sent { attempts, .. }
            | Self::Failed { attempts, .. }
            | Self::Expired { attempts } => *attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_are_dead_lettered() {
        let sent = Final::Sent {
            provider_id: None,
            attempts: 1,
        };
        assert_eq!(sent.settle(), Settle::Ack);
        assert_eq!(Final::Expired { attempts: 2 }.settle(), Settle::Ack);
        let failed = Final::Failed {
            reason: "plivo 400".into(),
            cause: DeadReason::Rejected,
            attempts: 1,
        };
        assert_eq!(
            failed.settle(),
            Settle::DeadLetter {
                reason: "plivo 400".into(),
                attempts: 1
            }
        );
    }
}
