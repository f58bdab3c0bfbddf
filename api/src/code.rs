//! One-time codes: generation, the keyed digest stored in Redis, and constant-time checking.

use hmac::{Hmac, Mac};
use rand::RngExt;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use std::sync::Arc;

use otp_shared::{
    keyring::{RingKey, key_bytes, parse_ring},
    phone::PhoneNumber,
};

type HmacSha256 = Hmac<Sha256>;

/// Allowed code lengths (ASVS 2.7: at least 6 digits).
pub const MIN_LENGTH: usize = 6;
pub const MAX_LENGTH: usize = 10;

/// A freshly generated code. Its plaintext only leaves the process sealed inside a send job.
pub struct OtpCode(SecretString);

impl OtpCode {
    /// `length` uniformly random decimal digits from rand's `ThreadRng`: a ChaCha12 CSPRNG per
    /// thread, seeded and periodically reseeded from the operating system, so a code costs no
    /// system call (a `getrandom` per digit did before). Leading zeros are kept; rand's
    /// `unbiased` feature makes each digit exactly uniform.
    pub fn generate(length: usize) -> Self {
        let mut rng = rand::rng();
        let code: String = (0..length)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect();
        Self(code.into())
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A code as typed by the user: exactly the configured number of ASCII digits.
pub struct CandidateCode(SecretString);

impl CandidateCode {
    pub fn parse(input: &str, length: usize) -> Option<Self> {
        (input.len() == length && input.bytes().all(|b| b.is_ascii_digit()))
            .then(|| Self(input.to_owned().into()))
    }
}

/// OTP_HMAC_KEY: one base64 key (at least 32 bytes), or several with ids (`2:base64,1:base64`)
/// while rotating; new digests use the first. Cheap to clone; never printed.
#[derive(Clone)]
pub struct HmacKey(Arc<Vec<RingKey>>);

impl HmacKey {
    pub fn from_base64(value: &str) -> Result<Self, String> {
        parse_ring(value, 32).map(|ring| Self(Arc::new(ring)))
    }

    /// Every key's bytes, for the start-up weak-key check.
    pub fn key_bytes(&self) -> Vec<&[u8]> {
        key_bytes(&self.0)
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey([REDACTED])")
    }
}

/// HMAC-SHA256 under OTP_HMAC_KEY, binding a code to its number and verification id. A stored
/// digest is `<key id>:<hex>`, or bare hex for key id 0 (as before rotation existed), so a
/// rotated key still checks the codes issued under it.
#[derive(Clone)]
pub struct CodeHasher {
    keys: HmacKey,
}

impl CodeHasher {
    pub fn new(keys: HmacKey) -> Self {
        Self { keys }
    }

    fn mac(
        &self,
        key: &RingKey,
        phone: &PhoneNumber,
        verification_id: Uuid,
        code: &str,
    ) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(key.bytes.expose_secret()).expect("HMAC key");
        // Length-prefixed fields, so no two different inputs share a message.
        for part in [
            phone.as_e164().as_bytes(),
            verification_id.as_bytes().as_slice(),
            code.as_bytes(),
        ] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The digest that is stored instead of the code, under the current key.
    pub fn digest(&self, phone: &PhoneNumber, verification_id: Uuid, code: &OtpCode) -> String {
        let key = &self.keys.0[0];
        let tag = hex(&self
            .mac(key, phone, verification_id, code.expose())
            .finalize()
            .into_bytes());
        match key.id {
            0 => tag,
            id => format!("{id}:{tag}"),
        }
    }

    /// Compares a candidate with a stored hex digest in constant time. A malformed stored digest
    /// (or none: pass an empty string) is a mismatch, checked with the same amount of work.
    pub fn matches(
        &self,
        phone: &PhoneNumber,
        verification_id: Uuid,
        candidate: &CandidateCode,
        stored_hex: &str,
    ) -> bool {
        let (id, hex) = match stored_hex.split_once(':') {
            Some((id, hex)) => (id.parse::<u32>().ok(), hex),
            None => (Some(0), stored_hex),
        };
        // An unknown key id or a malformed digest is checked against the current key, with a
        // tag that cannot match, so every failure costs the same.
        let key = id.and_then(|id| self.keys.0.iter().find(|k| k.id == id));
        let stored = key.and(unhex(hex)).unwrap_or_else(|| vec![0; 32]);
        let key = key.unwrap_or(&self.keys.0[0]);
        self.mac(key, phone, verification_id, candidate.0.expose_secret())
            .verify_slice(&stored)
            .is_ok()
    }
}

/// Lower-case hex, as digests are stored.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(spec: &[(u32, u8)]) -> HmacKey {
        use base64::{Engine, engine::general_purpose::STANDARD};
        let list: Vec<String> = spec
            .iter()
            .map(|(id, byte)| format!("{id}:{}", STANDARD.encode([*byte; 32])))
            .collect();
        HmacKey::from_base64(&list.join(",")).unwrap()
    }

    fn hasher() -> CodeHasher {
        use base64::{Engine, engine::general_purpose::STANDARD};
        CodeHasher::new(HmacKey::from_base64(&STANDARD.encode([9u8; 32])).unwrap())
    }

    #[test]
    fn a_rotated_key_still_checks_the_codes_issued_under_it() {
        let phone = PhoneNumber::parse("+14155552671").unwrap();
        let vid = Uuid::new_v4();
        let code = OtpCode::generate(6);
        let candidate = CandidateCode::parse(code.expose(), 6).unwrap();
        let old = CodeHasher::new(keys(&[(1, 1)])).digest(&phone, vid, &code);
        assert!(old.starts_with("1:"));
        let rotated = CodeHasher::new(keys(&[(2, 2), (1, 1)]));
        assert!(rotated.matches(&phone, vid, &candidate, &old));
        let new = rotated.digest(&phone, vid, &code);
        assert!(new.starts_with("2:"));
        assert!(rotated.matches(&phone, vid, &candidate, &new));
        // Once key 1 is retired, its digests no longer verify.
        assert!(!CodeHasher::new(keys(&[(2, 2)])).matches(&phone, vid, &candidate, &old));
    }

    #[test]
    fn codes_have_the_configured_length_and_only_digits() {
        for len in MIN_LENGTH..=MAX_LENGTH {
            let code = OtpCode::generate(len);
            assert_eq!(code.expose().len(), len);
            assert!(code.expose().bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn every_digit_appears_in_every_position() {
        // 2000 codes: the chance a given digit never shows at a position is 0.9^2000.
        let mut seen = [[false; 10]; 6];
        for _ in 0..2000 {
            for (pos, b) in OtpCode::generate(6).expose().bytes().enumerate() {
                seen[pos][(b - b'0') as usize] = true;
            }
        }
        assert!(
            seen.iter().flatten().all(|s| *s),
            "leading zeros must be possible too"
        );
    }

    #[test]
    fn a_digest_matches_only_its_code_number_and_verification() {
        let phone = PhoneNumber::parse("+14155552671").unwrap();
        let other = PhoneNumber::parse("+14155552672").unwrap();
        let vid = Uuid::new_v4();
        let code = OtpCode::generate(6);
        let digest = hasher().digest(&phone, vid, &code);
        assert_eq!(digest.len(), 64);
        assert!(!digest.contains(code.expose()));
        let right = CandidateCode::parse(code.expose(), 6).unwrap();
        assert!(hasher().matches(&phone, vid, &right, &digest));
        assert!(!hasher().matches(&other, vid, &right, &digest));
        assert!(!hasher().matches(&phone, Uuid::new_v4(), &right, &digest));
        assert!(!hasher().matches(&phone, vid, &right, ""));
        let wrong = if code.expose() == "000000" {
            "000001"
        } else {
            "000000"
        };
        let wrong = CandidateCode::parse(wrong, 6).unwrap();
        assert!(!hasher().matches(&phone, vid, &wrong, &digest));
    }

    #[test]
    fn candidates_must_be_exactly_length_ascii_digits() {
        assert!(CandidateCode::parse("012345", 6).is_some());
        for bad in ["12345", "1234567", "12345a", "١٢٣٤٥٦", "12 345", ""] {
            assert!(CandidateCode::parse(bad, 6).is_none(), "{bad}");
        }
    }
}
