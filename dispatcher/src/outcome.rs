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

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    Sent {
        provider_id: Option<String>,
        attempts: u32,
    },
    Failed {
        reason: String,
        attempts: u32,
    },
    /// The code expired before the SMS could be sent; it is never sent late.
    Expired {
        attempts: u32,
    },
}

/// What happens to the AMQP message once its job has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// Copy to the dead-letter queue with this reason, then ack.
    DeadLetter(String),
}

impl Final {
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Sent { .. } | Self::Expired { .. } => Disposition::Ack,
            Self::Failed { reason, .. } => Disposition::DeadLetter(reason.clone()),
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
        assert_eq!(sent.disposition(), Disposition::Ack);
        assert_eq!(
            Final::Expired { attempts: 2 }.disposition(),
            Disposition::Ack
        );
        let failed = Final::Failed {
            reason: "plivo 400".into(),
            attempts: 1,
        };
        assert_eq!(
            failed.disposition(),
            Disposition::DeadLetter("plivo 400".into())
        );
    }
}
