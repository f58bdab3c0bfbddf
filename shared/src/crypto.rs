//! Keys shared by the binaries, decoded from base64 settings, and the AEAD that seals job content.

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, Generate, KeyInit, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretSlice};

/// AES-GCM's standard nonce length in bytes.
const NONCE_LEN: usize = 12;

/// Decodes a base64 secret of at least `min_len` bytes. The error text never echoes the input.
pub fn decode_key(value: &str, min_len: usize) -> Result<SecretSlice<u8>, String> {
    let bytes = STANDARD
        .decode(value.trim())
        .map_err(|_| "must be base64 (standard alphabet, padded)".to_owned())?;
    if bytes.len() < min_len {
        return Err(format!(
            "must decode to at least {min_len} bytes, got {}",
            bytes.len()
        ));
    }
    Ok(bytes.into())
}

/// The AES-256-GCM key that api and dispatcher share (JOB_ENCRYPTION_KEY).
#[derive(Clone)]
pub struct JobKey(Aes256Gcm);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("sealed job content could not be opened (wrong key, tampered or truncated)")]
pub struct OpenError;

impl JobKey {
    /// Parses a base64 value that decodes to exactly 32 bytes.
    pub fn from_base64(value: &str) -> Result<Self, String> {
        let secret = decode_key(value, 32)?;
        let bytes = secret.expose_secret();
        if bytes.len() != 32 {
            return Err(format!(
                "must decode to exactly 32 bytes, got {}",
                bytes.len()
            ));
        }
        // The length was checked just above, so the key is always well formed.
        let cipher = Aes256Gcm::new_from_slice(bytes).expect("32-byte key");
        Ok(Self(cipher))
    }

    /// Encrypts `plaintext` bound to `aad`; the output is nonce || ciphertext || tag.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = Nonce::generate();
        let ciphertext = self
            .0
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

    /// Reverses [`JobKey::seal`]; fails if the key, the `aad` or any byte differs.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| OpenError)?;
        self.0
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
    use super::*;

    fn key(byte: u8) -> JobKey {
        JobKey::from_base64(&STANDARD.encode([byte; 32])).unwrap()
    }

    #[test]
    fn sealed_content_opens_only_with_the_same_key_and_aad() {
        let sealed = key(1).seal(b"123456", b"job-1");
        assert!(!sealed.windows(6).any(|w| w == b"123456"));
        assert_eq!(key(1).open(&sealed, b"job-1").unwrap(), b"123456");
        assert_eq!(key(2).open(&sealed, b"job-1"), Err(OpenError));
        assert_eq!(key(1).open(&sealed, b"job-2"), Err(OpenError));
        assert_eq!(key(1).open(&sealed[..5], b"job-1"), Err(OpenError));
    }

    #[test]
    fn key_lengths_are_checked_and_never_echoed() {
        let err = JobKey::from_base64(&STANDARD.encode([0u8; 16])).unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
        let err = JobKey::from_base64("not base64 secret!").unwrap_err();
        assert!(!err.contains("secret"));
        assert_eq!(format!("{:?}", key(1)), "JobKey([REDACTED])");
    }
}
