//! The Redis keyspace, in one place so operators can see everything the service stores.
//!
//! Every key starts with REDIS_KEY_PREFIX (default `otp:`), which lets several deployments, or
//! parallel tests, share one Redis without touching each other's data.
//!
//! # Hash tags
//! Keys that one script touches share a hash tag (the part in braces), so they live in one slot
//! of Redis Cluster; on a single server the tags are just part of the names. There are three:
//! - `{+14155552671}`: a number's code, failures, cooldown, hourly sends and verify counter;
//! - `{<verification id>}`: its delivery record, sealed job, resend marker, and its send jobs'
//!   ledger outcome and lease;
//! - `{global}`: the send budgets and the fraud guard, which are counters over all traffic.
//!
//! Everything else is one key per call (per-IP counters, idempotency records, message-id
//! mappings, breakers, the provider rate). Where one request touches several tags it takes
//! several steps; `api/src/store/redis_store.rs` says which and why each order is safe.

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash: the live code of a number (`vid`, `digest`). TTL: OTP validity.
    pub fn code(&self, e164: &str) -> String {
        format!("{}code:{{{e164}}}", self.prefix)
    }

    /// Counter of wrong guesses against a number's codes; survives code replacement.
    pub fn failures(&self, e164: &str) -> String {
        format!("{}fail:{{{e164}}}", self.prefix)
    }

    /// Holds the verification id that started a number's resend cooldown.
    pub fn cooldown(&self, e164: &str) -> String {
        format!("{}cool:{{{e164}}}", self.prefix)
    }

    /// Fixed-window counter of sends to a number in the current hour.
    pub fn sends_per_hour(&self, e164: &str) -> String {
        format!("{}sends:{{{e164}}}", self.prefix)
    }

    /// Fixed-window counter of requests from one client IP in the current minute.
    pub fn requests_per_ip(&self, ip: &str) -> String {
        format!("{}ip:{ip}", self.prefix)
    }

    /// Fixed-window counter of verify calls from one client IP (or IPv6 network) per minute.
    pub fn verifies_per_ip(&self, ip: &str) -> String {
        format!("{}vip:{ip}", self.prefix)
    }

    /// Fixed-window counter of sends to all numbers in the current hour (MAX_SENDS_PER_HOUR).
    pub fn sends_all(&self) -> String {
        format!("{}{{global}}:sends-all", self.prefix)
    }

    /// Fixed-window counter of sends asked for by one caller key in the current hour.
    pub fn sends_key(&self, key: &str) -> String {
        format!("{}{{global}}:sends-key:{key}", self.prefix)
    }

    /// Fixed-window counter of sends to one destination country in the current hour.
    pub fn sends_country(&self, country: &str) -> String {
        format!("{}{{global}}:sends-cc:{country}", self.prefix)
    }

    /// Fixed-window counter of verify calls for a number in the current 15 minutes.
    pub fn verifies(&self, e164: &str) -> String {
        format!("{}verifies:{{{e164}}}", self.prefix)
    }

    /// Stored first response for an Idempotency-Key (the key is hashed, never stored raw).
    pub fn idempotency(&self, key_digest: &str) -> String {
        format!("{}idem:{key_digest}", self.prefix)
    }

    /// A provider's message id (Plivo's message_uuid) to its verification id, so delivery
    /// reports find their record. TTL: the code's lifetime plus a margin.
    pub fn provider_message(&self, provider: &str, message_id: &str) -> String {
        format!("{}msg:{provider}:{message_id}", self.prefix)
    }

    /// A sent job's sealed envelope, kept (still encrypted) until its code expires, is used or is
    /// replaced, so an undelivered SMS can be sent once more.
    pub fn sealed_job(&self, verification_id: Uuid) -> String {
        format!("{}sealed:{{{verification_id}}}", self.prefix)
    }

    /// Set once a verification's SMS was resent after an undelivered report (at most once).
    pub fn resend_marker(&self, verification_id: Uuid) -> String {
        format!("{}resent:{{{verification_id}}}", self.prefix)
    }

    /// Fraud guard: sorted sets of verification ids by send time (ms), per destination prefix:
    /// all sends, and the ones that were verified. (A pumped prefix is blocked within a few dozen
    /// sends, so these stay small.)
    pub fn fraud_sends(&self, prefix: &str) -> String {
        format!("{}{{global}}:fg:sends:{prefix}", self.prefix)
    }

    pub fn fraud_verified(&self, prefix: &str) -> String {
        format!("{}{{global}}:fg:verified:{prefix}", self.prefix)
    }

    /// Hash: a country's sends (`s:<bucket>`) and verified sends (`v:<bucket>`) per 10-second
    /// bucket of send time: O(1) per request however much traffic a country has.
    pub fn fraud_country(&self, country: &str) -> String {
        format!("{}{{global}}:fg:cc:{country}", self.prefix)
    }

    /// Sorted set of the countries seen, by last send time (ms).
    pub fn fraud_countries(&self) -> String {
        format!("{}{{global}}:fg:countries", self.prefix)
    }

    /// Sorted set of the blocked prefixes, by when their block ends (ms): what `fraud list`
    /// reads (a scan would have to visit every node of a cluster).
    pub fn fraud_blocked(&self) -> String {
        format!("{}{{global}}:fg:blocked", self.prefix)
    }

    /// Hash: a blocked prefix (counts when blocked); TTL: the block's remaining time.
    pub fn fraud_block(&self, prefix: &str) -> String {
        format!("{}{{global}}:fg:block:{prefix}", self.prefix)
    }

    /// Sorted set of the client networks that sent to a prefix, by last send time (ms): an
    /// automatic block needs FRAUD_GUARD_MIN_CLIENTS of them.
    pub fn fraud_clients(&self, prefix: &str) -> String {
        format!("{}{{global}}:fg:clients:{prefix}", self.prefix)
    }

    /// Counter (1 h): sends let through to a blocked prefix this hour.
    pub fn fraud_trickle(&self, prefix: &str) -> String {
        format!("{}{{global}}:fg:trickle:{prefix}", self.prefix)
    }

    /// Hash: operators' blocks, prefix (any length) -> when the block ends (unix ms).
    pub fn fraud_manual(&self) -> String {
        format!("{}{{global}}:fg:manual", self.prefix)
    }

    /// Hash: one provider's circuit breaker, shared by every dispatcher.
    pub fn breaker(&self, provider: &str) -> String {
        format!("{}breaker:{provider}", self.prefix)
    }

    /// A delivery-report nonce already used (replays change nothing). TTL: 24 h.
    pub fn report_nonce(&self, provider: &str, nonce: &str) -> String {
        format!("{}nonce:{provider}:{nonce}", self.prefix)
    }

    /// Hash: delivery state of one verification, shown by `GET /api/otp/status/{id}`.
    pub fn status(&self, verification_id: Uuid) -> String {
        format!("{}status:{{{verification_id}}}", self.prefix)
    }

    /// The final outcome of a send job: the dispatcher's idempotency record. Tagged with its
    /// verification, so claiming a job can check the delivery record in the same script.
    pub fn job_outcome(&self, verification_id: Uuid, job_id: Uuid) -> String {
        format!("{}job:{{{verification_id}}}:{job_id}", self.prefix)
    }

    /// Short-lived lease held by the dispatcher that is currently sending a job.
    pub fn job_lease(&self, verification_id: Uuid, job_id: Uuid) -> String {
        format!("{}lease:{{{verification_id}}}:{job_id}", self.prefix)
    }

    /// The dispatcher that exports a queue's depth gauges now (a lease: its id, with a TTL),
    /// so each queue has one series however many dispatchers run.
    pub fn depth_watcher(&self, queue: &str) -> String {
        format!("{}depths:{queue}", self.prefix)
    }

    /// A CAPTCHA token already sent to the provider (its SHA-256), kept a few minutes so a
    /// reuse is refused without a call.
    pub fn captcha_token(&self, digest: &str) -> String {
        format!("{}captcha:{digest}", self.prefix)
    }

    /// The fingerprint of the settings the API and the dispatchers must agree on
    /// ([`crate::agreement`]), written by the API beside the keyspace it describes.
    pub fn settings_fingerprint(&self) -> String {
        format!("{}settings", self.prefix)
    }

    /// The provider-wide rate (GCRA: the theoretical arrival time, ms) shared by every
    /// dispatcher.
    pub fn provider_bucket(&self) -> String {
        format!("{}plivo:bucket", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Redis Cluster hashes: the part between the first `{` and the next `}`.
    fn tag(key: &str) -> &str {
        let open = key.find('{').expect("a hash tag") + 1;
        let close = key[open..].find('}').expect("a closed hash tag") + open;
        &key[open..close]
    }

    #[test]
    fn keys_one_script_touches_share_one_hash_tag() {
        let keys = Keys::new("otp:");
        let (number, vid, job) = ("+14155552671", Uuid::new_v4(), Uuid::new_v4());
        let number_keys = [
            keys.code(number),
            keys.failures(number),
            keys.cooldown(number),
            keys.sends_per_hour(number),
            keys.verifies(number),
        ];
        assert!(
            number_keys.iter().all(|k| tag(k) == number),
            "{number_keys:?}"
        );
        let verification_keys = [
            keys.status(vid),
            keys.sealed_job(vid),
            keys.resend_marker(vid),
            keys.job_outcome(vid, job),
            keys.job_lease(vid, job),
        ];
        let vid = vid.to_string();
        assert!(
            verification_keys.iter().all(|k| tag(k) == vid),
            "{verification_keys:?}"
        );
        let global_keys = [
            keys.sends_all(),
            keys.sends_country("US"),
            keys.fraud_sends("+1415555"),
            keys.fraud_verified("+1415555"),
            keys.fraud_block("+1415555"),
            keys.fraud_country("US"),
            keys.fraud_countries(),
            keys.fraud_blocked(),
            keys.fraud_clients("+1415555"),
            keys.fraud_trickle("+1415555"),
            keys.fraud_manual(),
        ];
        assert!(
            global_keys.iter().all(|k| tag(k) == "global"),
            "{global_keys:?}"
        );
        assert!(keys.code(number).starts_with("otp:"));
    }
}
