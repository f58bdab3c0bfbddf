//! The signed verdict: a successful verify also returns a JWT the app's backend can trust
//! without calling back, signed with Ed25519 (`alg: EdDSA`) by the current key of
//! TOKEN_SIGNING_KEYS and checkable against the public keys served at
//! `/.well-known/jwks.json`. Every configured key is published, so a key added last in the
//! list is published before it signs, and tokens of a retiring key keep verifying while it is
//! listed.
//!
//! The token is assembled here (three base64url parts) and signed with aws-lc-rs, which the
//! TLS stack already brings; the tests check it with a JWT library.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use bytes::Bytes;
use clap::Args;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use otp_shared::{
    config::{AppEnv, SecretParser},
    phone::PhoneNumber,
};

/// The verdict token settings.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Keys that sign verify tokens: `kid:base64-of-a-32-byte-seed,...`, the current key first
    /// (make a seed with `openssl rand -base64 32`). Required in production; development
    /// without it signs with a key made at start.
    #[arg(long, env = "TOKEN_SIGNING_KEYS", hide_env_values = true, value_parser = SecretParser(SigningKeys::parse))]
    pub token_signing_keys: Option<SigningKeys>,
    /// The tokens' `iss` claim.
    #[arg(long, env = "TOKEN_ISSUER", default_value = "otp-api")]
    pub token_issuer: String,
    /// The tokens' `aud` claim: what the app's backend expects.
    #[arg(long, env = "TOKEN_AUDIENCE", default_value = "signup")]
    pub token_audience: String,
    /// Seconds a token is valid (`exp` - `iat`).
    #[arg(long, env = "TOKEN_TTL_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub token_ttl_seconds: u32,
}

/// Signing keys by id, the current one first. Never printed.
#[derive(Clone)]
pub struct SigningKeys(Vec<(String, [u8; 32])>);

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.0.iter().map(|(kid, _)| kid.as_str()).collect();
        write!(f, "SigningKeys({kids:?})")
    }
}

impl SigningKeys {
    /// `kid:base64-seed,...`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (kid, seed) = entry
                .split_once(':')
                .ok_or("each key is kid:base64-of-a-32-byte-seed")?;
            let kid = kid.trim();
            let id_ok = (1..=64).contains(&kid.len())
                && kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !id_ok {
                return Err(format!(
                    "'{kid}' is not a key id (1 to 64 of A-Z a-z 0-9 - _ .)"
                ));
            }
            let seed: [u8; 32] = STANDARD
                .decode(seed.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| format!("key '{kid}': the seed must be 32 bytes of base64"))?;
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(format!("the key id '{kid}' is listed twice"));
            }
            keys.push((kid.to_owned(), seed));
        }
        if keys.is_empty() {
            return Err("at least one key is needed".into());
        }
        Ok(Self(keys))
    }

    /// One key made now (development without TOKEN_SIGNING_KEYS).
    fn ephemeral() -> Self {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        Self(vec![(format!("dev-{}", Uuid::new_v4().simple()), seed)])
    }

    /// The seeds, for the production key checks.
    pub fn seeds(&self) -> Vec<&[u8]> {
        self.0.iter().map(|(_, seed)| seed.as_slice()).collect()
    }
}

/// Signs verify tokens and publishes the keys that check them.
pub struct Verdicts {
    kid: String,
    signer: Ed25519KeyPair,
    issuer: String,
    audience: String,
    ttl: time::Duration,
    /// `/.well-known/jwks.json`, rendered once.
    jwks: Bytes,
}

impl std::fmt::Debug for Verdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verdicts(kid={})", self.kid)
    }
}

impl Verdicts {
    /// Production requires TOKEN_SIGNING_KEYS; development makes a key when it is unset.
    pub fn from_args(args: &TokenArgs, env: AppEnv) -> anyhow::Result<Self> {
        let keys = match &args.token_signing_keys {
            Some(keys) => keys.clone(),
            None if env == AppEnv::Development => {
                tracing::warn!(
                    "TOKEN_SIGNING_KEYS is unset: verify tokens are signed with a key made at \
                     start, which the next start forgets"
                );
                SigningKeys::ephemeral()
            }
            None => anyhow::bail!(
                "TOKEN_SIGNING_KEYS is required in production: kid:base64-of-a-32-byte-seed \
                 (make a seed with `openssl rand -base64 32`)"
            ),
        };
        let pair = |seed: &[u8; 32]| {
            Ed25519KeyPair::from_seed_unchecked(seed)
                .map_err(|_| anyhow::anyhow!("TOKEN_SIGNING_KEYS: a seed is not a usable key"))
        };
        let mut published = Vec::new();
        for (kid, seed) in &keys.0 {
            let public = pair(seed)?.public_key().as_ref().to_vec();
            published.push(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(public),
                "kid": kid,
                "use": "sig",
                "alg": "EdDSA",
            }));
        }
        let (kid, seed) = &keys.0[0];
        Ok(Self {
            kid: kid.clone(),
            signer: pair(seed)?,
            issuer: args.token_issuer.clone(),
            audience: args.token_audience.clone(),
            ttl: time::Duration::seconds(args.token_ttl_seconds.into()),
            jwks: Bytes::from(json!({ "keys": published }).to_string()),
        })
    }

    /// The token for a verified code: `sub` is the number (E.164), `vid` the verification.
    pub fn token(&self, phone: &PhoneNumber, verification_id: Uuid) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.kid });
        let claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": phone.as_e164(),
            "vid": verification_id,
            "iat": now,
            "exp": now + self.ttl.whole_seconds(),
            "jti": otp_shared::ids::random_uuid(),
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.signer.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// `/.well-known/jwks.json`: every configured key's public half.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_never_print() {
        let seed = STANDARD.encode([7u8; 32]);
        let keys = SigningKeys::parse(&format!("k2:{seed}, k1:{seed}")).unwrap();
        assert_eq!(keys.0.len(), 2);
        assert!(!format!("{keys:?}").contains(&seed));
        for bad in [
            "k1".to_owned(),
            format!("k 1:{seed}"),
            "k1:c2hvcnQ=".to_owned(),
            format!("k1:{seed},k1:{seed}"),
            String::new(),
        ] {
            assert!(SigningKeys::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn production_needs_signing_keys() {
        let args = TokenArgs {
            token_signing_keys: None,
            token_issuer: "otp-api".into(),
            token_audience: "signup".into(),
            token_ttl_seconds: 300,
        };
        let err = Verdicts::from_args(&args, AppEnv::Production).unwrap_err();
        assert!(err.to_string().contains("TOKEN_SIGNING_KEYS"), "{err}");
        let dev = Verdicts::from_args(&args, AppEnv::Development).unwrap();
        let jwks: serde_json::Value = serde_json::from_slice(&dev.jwks()).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], dev.kid.as_str());
    }
}
