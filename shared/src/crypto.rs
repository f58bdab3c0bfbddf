//! Keys shared by the binaries, decoded from base64 settings, and the AEAD that seals job content.

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, Generate, KeyInit, Payload},
};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretSlice};

/// AES-GCM's standard nonce length in bytes.
const NONCE_LEN: usize = 12;

/// The AES-256-GCM keys that api and dispatcher share (JOB_ENCRYPTION_KEY): one key, or several
/// with ids (`2:base64,1:base64`) while rotating. Jobs are sealed with the first (current) key
/// and opened with whichever key their envelope names.
#[derive(Clone)]
pub struct JobKey(Arc<Vec<(u32, Aes256Gcm, SecretSlice<u8>)>>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("sealed job content could not be opened (wrong key, tampered or truncated)")]
pub struct OpenError;

impl JobKey {
    /// Parses one base64 key or an `id:base64,...` list; each key is exactly 32 bytes.
    pub fn from_base64(value: &str) -> Result<Self, String> {
        let ring = crate::keyring::parse_ring(value, 32)?;
        let mut keys = Vec::with_capacity(ring.len());
        for key in ring {
            let bytes = key.bytes.expose_secret();
            if bytes.len() != 32 {
                return Err(format!(
                    "key {} must decode to exactly 32 bytes, got {}",
                    key.id,
                    bytes.len()
                ));
            }
            // The length was checked just above, so the key is always well formed.
            let cipher = Aes256Gcm::new_from_slice(bytes).expect("32-byte key");
            keys.push((key.id, cipher, key.bytes));
        }
        Ok(Self(Arc::new(keys)))
    }

    /// The id of the key new jobs are sealed with.
    pub fn current_id(&self) -> u32 {
        self.0[0].0
    }

    /// Every key's bytes, for the start-up weak-key check.
    pub fn key_bytes(&self) -> Vec<&[u8]> {
        self.0.iter().map(|(_, _, b)| b.expose_secret()).collect()
    }

    /// Encrypts `plaintext` bound to `aad` with the current key; the output is
    /// nonce || ciphertext || tag.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = Nonce::generate();
        let ciphertext = self.0[0]
            .1
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // AES-GCM only fails for inputs of gigabytes; job content is a few hundred bytes.
            .expect("AES-GCM encryption of a small message");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Every key's id, the sealing key's first (ids are not secret).
    pub fn ids(&self) -> Vec<u32> {
        self.0.iter().map(|(id, _, _)| *id).collect()
    }

    /// Whether a key with this id is configured.
    pub fn has(&self, key_id: u32) -> bool {
        self.0.iter().any(|(id, _, _)| *id == key_id)
    }

    /// Reverses [`JobKey::seal`] with key `key_id`; fails if the key, the `aad` or any byte
    /// differs.
    pub fn open(&self, key_id: u32, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        let Some((_, cipher, _)) = self.0.iter().find(|(id, _, _)| *id == key_id) else {
            return Err(OpenError);
        };
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| OpenError)?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| OpenError)
    }
}

impl std::fmt::Debug for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobKey([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::STANDARD};

    use super::*;

    fn key(byte: u8) -> JobKey {
        JobKey::from_base64(&STANDARD.encode([byte; 32])).unwrap()
    }

    #[test]
    fn sealed_content_opens_only_with_the_same_key_and_aad() {
        let sealed = key(1).seal(b"123456", b"job-1");
        assert!(!sealed.windows(6).any(|w| w == b"123456"));
        assert_eq!(key(1).open(0, &sealed, b"job-1").unwrap(), b"123456");
        assert_eq!(key(2).open(0, &sealed, b"job-1"), Err(OpenError));
        assert_eq!(key(1).open(0, &sealed, b"job-2"), Err(OpenError));
        assert_eq!(key(1).open(0, &sealed[..5], b"job-1"), Err(OpenError));
        assert_eq!(key(1).open(7, &sealed, b"job-1"), Err(OpenError));
    }

    #[test]
    fn key_lengths_are_checked_and_never_echoed() {
        let two = format!(
            "2:{},1:{}",
            STANDARD.encode([2u8; 32]),
            STANDARD.encode([1u8; 32])
        );
        let ring = JobKey::from_base64(&two).unwrap();
        assert_eq!(ring.current_id(), 2);
        let old = key(1).seal(b"654321", b"a");
        assert!(ring.open(1, &old, b"a").is_ok(), "an old key still opens");
        let err = JobKey::from_base64(&STANDARD.encode([0u8; 16])).unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
        let err = JobKey::from_base64("not base64 secret!").unwrap_err();
        assert!(!err.contains("secret"));
        assert_eq!(format!("{:?}", key(1)), "JobKey([REDACTED])");
    }
}
