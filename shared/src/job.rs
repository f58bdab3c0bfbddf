//! The send job: the one contract between otp-api (producer) and otp-dispatcher (consumer).
//!
//! On the wire it is a JSON envelope whose identifiers and times are readable by operators, and
//! whose content (destination, code, message template) is sealed with AES-256-GCM under
//! JOB_ENCRYPTION_KEY. The envelope fields are the AEAD's associated data, so none of them can be
//! changed without the dispatcher noticing.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{crypto::JobKey, phone::PhoneNumber};

/// Bumped whenever the envelope or the sealed content changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

/// What travels through the queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendJob {
    pub schema_version: u32,
    /// Unique per publish; the idempotency key the dispatcher de-duplicates on.
    pub job_id: Uuid,
    pub verification_id: Uuid,
    /// Which JOB_ENCRYPTION_KEY sealed the content (0, and absent on the wire, for a key
    /// without an id, so such jobs are what dispatchers before key rotation expect).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_id: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the code stops being valid; the SMS must not be sent after this.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// base64(nonce || AES-256-GCM(JSON of [`JobContent`])).
    pub sealed: String,
}

/// The secret part of a job. Never logged: its `Debug` hides the code and masks the number.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobContent {
    /// E.164 destination.
    pub destination: String,
    pub code: String,
    /// Message text with a `{code}` placeholder.
    pub template: String,
}

impl std::fmt::Debug for JobContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContent")
            .field("destination", &crate::phone::mask_e164(&self.destination))
            .field("code", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl JobContent {
    /// The SMS text: the template with `{code}` replaced.
    pub fn message_text(&self) -> String {
        self.template.replace("{code}", &self.code)
    }
}

/// Why a message from the queue cannot be turned into a job; becomes the dead-letter reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// Fixed text: a parser's message can quote what it read.
    #[error("malformed job JSON")]
    Malformed,
    #[error("unsupported schema version {0}")]
    UnsupportedVersion(u32),
    #[error("sealed content is not base64")]
    BadEncoding,
    #[error("sealed content could not be decrypted")]
    Undecryptable,
    #[error("sealed with key id {0}, which JOB_ENCRYPTION_KEY does not list")]
    UnknownKey(u32),
    /// Fixed text: the content holds the number and the code.
    #[error("sealed content is not a valid job")]
    BadContent,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SendJob {
    /// Builds and seals a job for one verification.
    pub fn seal(
        key: &JobKey,
        verification_id: Uuid,
        destination: &PhoneNumber,
        code: &str,
        template: &str,
        created_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Self {
        let mut job = SendJob {
            schema_version: SCHEMA_VERSION,
            job_id: crate::ids::random_uuid(),
            verification_id,
            key_id: key.current_id(),
            // RFC 3339 keeps whole seconds faithfully; truncate so the AAD survives a round trip.
            created_at: created_at.replace_nanosecond(0).unwrap_or(created_at),
            expires_at: expires_at.replace_nanosecond(0).unwrap_or(expires_at),
            sealed: String::new(),
        };
        let content = JobContent {
            destination: destination.as_e164().to_owned(),
            code: code.to_owned(),
            template: template.to_owned(),
        };
        // Serialising a struct of strings cannot fail.
        let plaintext = serde_json::to_vec(&content).expect("JobContent serialises");
        job.sealed = STANDARD.encode(key.seal(&plaintext, job.aad().as_bytes()));
        job
    }

    /// Parses the wire form and opens the sealed content.
    pub fn decode(bytes: &[u8], key: &JobKey) -> Result<(SendJob, JobContent), JobError> {
        let job: SendJob = serde_json::from_slice(bytes).map_err(|_| JobError::Malformed)?;
        if job.schema_version != SCHEMA_VERSION {
            return Err(JobError::UnsupportedVersion(job.schema_version));
        }
        let sealed = STANDARD
            .decode(&job.sealed)
            .map_err(|_| JobError::BadEncoding)?;
        if !key.has(job.key_id) {
            return Err(JobError::UnknownKey(job.key_id));
        }
        let plaintext = key
            .open(job.key_id, &sealed, job.aad().as_bytes())
            .map_err(|_| JobError::Undecryptable)?;
        let content: JobContent =
            serde_json::from_slice(&plaintext).map_err(|_| JobError::BadContent)?;
        Ok((job, content))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and dates cannot fail.
        serde_json::to_vec(self).expect("SendJob serialises")
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now >= self.expires_at
    }

    /// Associated data: every envelope field except the sealed blob. A key id other than 0 is
    /// appended, so id-0 jobs keep the form they had before key rotation existed.
    fn aad(&self) -> String {
        let mut aad = format!(
            "otp-send-job|v{}|{}|{}|{}|{}",
            self.schema_version,
            self.job_id,
            self.verification_id,
            self.created_at.unix_timestamp(),
            self.expires_at.unix_timestamp()
        );
        if self.key_id != 0 {
            aad.push_str(&format!("|k{}", self.key_id));
        }
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn key() -> JobKey {
        JobKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap()
    }

    fn job() -> SendJob {
        let now = OffsetDateTime::now_utc();
        SendJob::seal(
            &key(),
            Uuid::new_v4(),
            &PhoneNumber::parse("+14155552671").unwrap(),
            "012345",
            "Your code: {code}",
            now,
            now + Duration::minutes(5),
        )
    }

    #[test]
    fn a_job_names_its_key_and_opens_with_any_listed_key() {
        let ring = |spec: &str| JobKey::from_base64(spec).unwrap();
        let k1 = STANDARD.encode([1u8; 32]);
        let k2 = STANDARD.encode([2u8; 32]);
        let now = OffsetDateTime::now_utc();
        let phone = PhoneNumber::parse("+14155552671").unwrap();
        let seal = |key: &JobKey| {
            SendJob::seal(
                key,
                Uuid::new_v4(),
                &phone,
                "123456",
                "{code}",
                now,
                now + Duration::minutes(5),
            )
        };
        let old = seal(&ring(&format!("1:{k1}")));
        let new = seal(&ring(&format!("2:{k2},1:{k1}")));
        assert_eq!((old.key_id, new.key_id), (1, 2));
        assert!(
            String::from_utf8(new.to_bytes())
                .unwrap()
                .contains("\"keyId\":2")
        );
        let rotated = ring(&format!("2:{k2},1:{k1}"));
        assert!(SendJob::decode(&old.to_bytes(), &rotated).is_ok());
        assert!(SendJob::decode(&new.to_bytes(), &rotated).is_ok());
        let retired = ring(&format!("2:{k2}"));
        assert_eq!(
            SendJob::decode(&old.to_bytes(), &retired).unwrap_err(),
            JobError::UnknownKey(1)
        );
        // The key id is authenticated: relabelling a job breaks it.
        let mut relabelled = new.clone();
        relabelled.key_id = 1;
        assert!(SendJob::decode(&relabelled.to_bytes(), &rotated).is_err());
        // A bare key is id 0, and the envelope then looks as it did before rotation.
        assert!(
            !String::from_utf8(seal(&ring(&k1)).to_bytes())
                .unwrap()
                .contains("keyId")
        );
    }

    #[test]
    fn a_job_round_trips_and_hides_its_content() {
        let job = job();
        let bytes = job.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            !text.contains("012345") && !text.contains("4155552671"),
            "{text}"
        );
        let (decoded, content) = SendJob::decode(&bytes, &key()).unwrap();
        assert_eq!(decoded, job);
        assert_eq!(content.message_text(), "Your code: 012345");
        assert_eq!(content.destination, "+14155552671");
        assert!(!format!("{content:?}").contains("012345"));
    }

    #[test]
    fn tampering_with_the_envelope_is_detected() {
        let mut job = job();
        job.expires_at += Duration::hours(1);
        let err = SendJob::decode(&job.to_bytes(), &key()).unwrap_err();
        assert_eq!(err, JobError::Undecryptable);
    }

    #[test]
    fn malformed_messages_are_classified() {
        assert!(matches!(
            SendJob::decode(b"not json", &key()),
            Err(JobError::Malformed)
        ));
        let mut job = job();
        job.schema_version = 99;
        assert_eq!(
            SendJob::decode(&job.to_bytes(), &key()).unwrap_err(),
            JobError::UnsupportedVersion(99)
        );
        job.schema_version = SCHEMA_VERSION;
        job.sealed = "***".into();
        assert_eq!(
            SendJob::decode(&job.to_bytes(), &key()).unwrap_err(),
            JobError::BadEncoding
        );
    }
}
