//! One-time codes: generation, the keyed digest stored in Redis, and constant-time checking.

use hmac::{Hmac, Mac};
use rand::{RngExt, rand_core::UnwrapErr, rngs::SysRng};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use otp_shared::phone::PhoneNumber;

type HmacSha256 = Hmac<Sha256>;

/// Allowed code lengths (ASVS 2.7: at least 6 digits).
pub const MIN_LENGTH: usize = 6;
pub const MAX_LENGTH: usize = 10;

/// A freshly generated code. Its plaintext only leaves the process sealed inside a send job.
pub struct OtpCode(SecretString);

impl OtpCode {
    /// `length` uniformly random decimal digits from the operating system's CSPRNG.
    /// Leading zeros are kept; rand's `unbiased` feature makes each digit exactly uniform.
    pub fn generate(length: usize) -> Self {
        // If the OS cannot provide randomness there is no safe code to issue: panicking (one
        // failed request, caught by the server) is the right outcome.
        let mut rng = UnwrapErr(SysRng);
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

/// HMAC-SHA256 under OTP_HMAC_KEY, binding a code to its number and verification id.
#[derive(Clone)]
pub struct CodeHasher {
    key: SecretSlice<u8>,
}

impl CodeHasher {
    pub fn new(key: SecretSlice<u8>) -> Self {
        Self { key }
    }

    fn mac(&self, phone: &PhoneNumber, verification_id: Uuid, code: &str) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(self.key.expose_secret()).expect("HMAC key");
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

    /// The hex digest that is stored instead of the code.
    pub fn digest(&self, phone: &PhoneNumber, verification_id: Uuid, code: &OtpCode) -> String {
        let tag = self.mac(phone, verification_id, code.expose()).finalize();
        hex(&tag.into_bytes())
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
        let stored = unhex(stored_hex).unwrap_or_else(|| vec![0; 32]);
        self.mac(phone, verification_id, candidate.0.expose_secret())
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

    fn hasher() -> CodeHasher {
        CodeHasher::new(vec![9u8; 32].into())
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
