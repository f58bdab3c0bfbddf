//! The send ledger's contract: how a send job ended, as the dispatcher records it (so a job is
//! never sent twice) and as the dead-letter tools read it. One type, encoded one way.

use std::fmt;

/// How a send job ended. Stored as `sent:<provider>:<message id>`, `failed:<reason>`, `expired`
/// or `withdrawn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Accepted by `provider` as `message_id` (empty when the provider gave none).
    Sent {
        provider: String,
        message_id: String,
    },
    /// Refused by the provider for good; a dead-letter replay may reopen it (see
    /// [`JobOutcome::FAILED_PREFIX`]).
    Failed { reason: String },
    /// The code expired before the SMS could be sent.
    Expired,
    /// Not sent on purpose: the API withdrew the job (its publish was not confirmed), or a
    /// resend's code was used, replaced or expired first.
    Withdrawn,
}

impl JobOutcome {
    /// How every stored `Failed` outcome starts (for scripts that test for one).
    pub const FAILED_PREFIX: &str = "failed:";

    /// The stored form.
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// Reads a stored outcome; anything else is an error, never a guess.
    pub fn parse(stored: &str) -> Result<Self, String> {
        if let Some(rest) = stored.strip_prefix("sent:") {
            let (provider, message_id) = rest
                .split_once(':')
                .ok_or_else(|| format!("ledger outcome '{stored}' has no message id"))?;
            return Ok(Self::Sent {
                provider: provider.to_owned(),
                message_id: message_id.to_owned(),
            });
        }
        if let Some(reason) = stored.strip_prefix(Self::FAILED_PREFIX) {
            return Ok(Self::Failed {
                reason: reason.to_owned(),
            });
        }
        match stored {
            "expired" => Ok(Self::Expired),
            "withdrawn" => Ok(Self::Withdrawn),
            _ => Err(format!("unknown ledger outcome '{stored}'")),
        }
    }
}

impl fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sent {
                provider,
                message_id,
            } => write!(f, "sent:{provider}:{message_id}"),
            Self::Failed { reason } => write!(f, "{}{reason}", Self::FAILED_PREFIX),
            Self::Expired => f.write_str("expired"),
            Self::Withdrawn => f.write_str("withdrawn"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_reads_back_as_written() {
        let outcomes = [
            JobOutcome::Sent {
                provider: "plivo".into(),
                message_id: "a:b-1".into(),
            },
            JobOutcome::Sent {
                provider: "twilio".into(),
                message_id: String::new(),
            },
            JobOutcome::Failed {
                reason: "Plivo 400: invalid dst: +1".into(),
            },
            JobOutcome::Expired,
            JobOutcome::Withdrawn,
        ];
        for outcome in outcomes {
            assert_eq!(JobOutcome::parse(&outcome.encode()), Ok(outcome));
        }
        assert_eq!(
            JobOutcome::Failed { reason: "x".into() }.encode(),
            "failed:x"
        );
    }

    #[test]
    fn anything_else_is_an_error() {
        for stored in ["", "busy", "sent", "sent:plivo", "Expired", "42"] {
            assert!(JobOutcome::parse(stored).is_err(), "{stored}");
        }
    }
}
