//! Who may call the OTP routes: caller keys (`Authorization: Bearer <secret>`, checked against
//! the SHA-256 digests in API_KEYS / API_KEYS_FILE), or the public when PUBLIC_API=true (a
//! browser-facing deployment, which relies on the per-IP limits). A caller is identified once,
//! by the request middleware, before any limit is spent or anything is written; its id goes
//! into the logs, the trace and the metrics (`client` label).

use std::{path::PathBuf, sync::Arc};

use clap::Args;
use poem::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use otp_shared::config::AppEnv;

/// The caller-key settings.
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// Caller keys as `id:sha256-hex-of-secret,...` (ids like `web` or `backend-eu`); callers
    /// send `Authorization: Bearer <secret>`. Make a digest with
    /// `printf %s "$SECRET" | sha256sum`.
    #[arg(long, env = "API_KEYS", value_delimiter = ',', value_parser = ApiKey::parse)]
    pub api_keys: Vec<ApiKey>,
    /// A file of caller keys, one `id:sha256-hex` per line (`#` starts a comment), read at
    /// start; added to API_KEYS.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Let callers without a key use the OTP routes (a browser-facing deployment, relying on
    /// the per-IP limits and the fraud guard). Without keys, production requires it.
    #[arg(long, env = "PUBLIC_API", default_value_t = false, action = clap::ArgAction::Set)]
    pub public_api: bool,
    /// Hourly send budgets per caller key, as `id=n,...`; `*=n` applies to every other key
    /// (public callers have none: the per-IP limits apply to them).
    #[arg(long, env = "API_KEY_MAX_SENDS_PER_HOUR", value_parser = KeyBudgets::parse, default_value = "")]
    pub api_key_max_sends_per_hour: KeyBudgets,
}

/// One declared key: its id and the SHA-256 digest of its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({})", self.id)
    }
}

impl ApiKey {
    /// `id:sha256-hex`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let (id, hex) = value
            .trim()
            .split_once(':')
            .ok_or("each key is id:sha256-hex-of-secret")?;
        let id = parse_id(id)?;
        let hex = hex.trim();
        let mut digest = [0u8; 32];
        let valid = hex.len() == 64
            && hex
                .as_bytes()
                .chunks(2)
                .zip(digest.iter_mut())
                .all(|(pair, byte)| {
                    let text = std::str::from_utf8(pair).unwrap_or("zz");
                    u8::from_str_radix(text, 16).map(|b| *byte = b).is_ok()
                });
        if !valid {
            return Err(format!(
                "key '{id}': the digest must be 64 hex digits (sha256 of the secret)"
            ));
        }
        Ok(Self { id, digest })
    }

    /// A key for `secret` (tests, and the docs' example).
    pub fn for_secret(id: &str, secret: &str) -> Self {
        Self {
            id: id.to_owned(),
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }
}

/// A key id: 1 to 32 of `a-z 0-9 - _`, starting with a letter or digit.
fn parse_id(id: &str) -> Result<String, String> {
    let id = id.trim();
    let ok = (1..=32).contains(&id.len())
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok && id != "public" {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "'{id}' is not a key id: 1 to 32 of a-z, 0-9, - and _ (and not `public`)"
        ))
    }
}

/// Hourly send budgets per key id; `*` for the others; 0 or absent means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyBudgets {
    named: Vec<(String, u32)>,
    others: u32,
}

impl KeyBudgets {
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut budgets = Self::default();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, limit) = entry
                .split_once('=')
                .ok_or_else(|| format!("'{entry}' is not ID=LIMIT (e.g. web=5000, *=1000)"))?;
            let limit: u32 = limit
                .trim()
                .parse()
                .map_err(|_| format!("'{entry}': the limit must be a whole number"))?;
            match id.trim() {
                "*" => budgets.others = limit,
                id => budgets.named.push((parse_id(id)?, limit)),
            }
        }
        Ok(budgets)
    }

    /// The hourly budget of a key; 0 means none. Public callers have none.
    pub fn limit_for(&self, caller: &Caller) -> u32 {
        match caller {
            Caller::Public => 0,
            Caller::Key(id) => self
                .named
                .iter()
                .find(|(named, _)| named.as_str() == &**id)
                .map_or(self.others, |(_, limit)| *limit),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A valid key, by id.
    Key(Arc<str>),
    /// No key, where PUBLIC_API (or development without keys) allows it.
    Public,
}

impl Caller {
    /// The id in logs, traces and the metrics' `client` label.
    pub fn id(&self) -> &str {
        match self {
            Self::Key(id) => id,
            Self::Public => "public",
        }
    }

    pub fn is_keyed(&self) -> bool {
        matches!(self, Self::Key(_))
    }
}

/// The declared keys, and whether a caller without one is let in.
#[derive(Debug)]
pub struct Callers {
    keys: Vec<(Arc<str>, [u8; 32])>,
    public: bool,
}

impl Callers {
    /// The keys of API_KEYS and API_KEYS_FILE. Production without keys needs PUBLIC_API=true;
    /// development without keys lets everyone in (keys, once declared, are required there too,
    /// unless PUBLIC_API=true).
    pub fn load(access: &AccessArgs, env: AppEnv) -> anyhow::Result<Self> {
        let mut keys = access.api_keys.clone();
        if let Some(path) = &access.api_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("API_KEYS_FILE {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if line.is_empty() {
                    continue;
                }
                let key = ApiKey::parse(line)
                    .map_err(|e| anyhow::anyhow!("API_KEYS_FILE line {}: {e}", n + 1))?;
                keys.push(key);
            }
        }
        let mut ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            anyhow::bail!("API_KEYS: the key id '{}' is declared twice", pair[0]);
        }
        for (id, _) in &access.api_key_max_sends_per_hour.named {
            if !ids.contains(&id.as_str()) {
                anyhow::bail!("API_KEY_MAX_SENDS_PER_HOUR names '{id}', which is not a key id");
            }
        }
        if keys.is_empty() && !access.public_api && env == AppEnv::Production {
            anyhow::bail!(
                "production needs caller keys (API_KEYS or API_KEYS_FILE), or PUBLIC_API=true \
                 for a browser-facing deployment that relies on the per-IP limits"
            );
        }
        Ok(Self {
            public: access.public_api || keys.is_empty(),
            keys: keys
                .into_iter()
                .map(|k| (Arc::from(k.id.as_str()), k.digest))
                .collect(),
        })
    }

    /// Everyone in: development without keys, and the tests.
    pub fn open() -> Self {
        Self {
            keys: Vec::new(),
            public: true,
        }
    }

    /// Whether any caller key is declared.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Who may call, as the OpenAPI document states it.
    pub fn access(&self) -> crate::openapi::Access {
        use crate::openapi::Access;
        match (self.keys.is_empty(), self.public) {
            (true, _) => Access::Open,
            (false, true) => Access::KeyOptional,
            (false, false) => Access::KeyRequired,
        }
    }

    /// The ids a `client` label can take: each key's, and `public`.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.keys.iter().map(|(id, _)| id.to_string()).collect();
        labels.push("public".into());
        labels
    }

    /// Who sent `headers`, or `None` for a refusal (401). A bearer secret must match a key
    /// (compared in constant time over every key's digest); without one the caller is public
    /// where that is allowed. With no key declared, an Authorization header is ignored.
    pub fn identify(&self, headers: &HeaderMap) -> Option<Caller> {
        if self.keys.is_empty() {
            return Some(Caller::Public);
        }
        let Some(value) = headers.get(poem::http::header::AUTHORIZATION) else {
            return self.public.then_some(Caller::Public);
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, secret)| secret.trim())
            .filter(|secret| !secret.is_empty())?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // Every key is compared, so the time taken says nothing about which matched.
        let mut found = None;
        for (id, key) in &self.keys {
            if bool::from(key.ct_eq(&digest)) {
                found = Some(id);
            }
        }
        found.map(|id| Caller::Key(id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(keys: &[ApiKey], public: bool) -> AccessArgs {
        AccessArgs {
            api_keys: keys.to_vec(),
            api_keys_file: None,
            public_api: public,
            api_key_max_sends_per_hour: KeyBudgets::default(),
        }
    }

    fn bearer(secret: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        headers
    }

    #[test]
    fn keys_identify_callers_and_anything_else_is_refused() {
        let keys = [
            ApiKey::for_secret("web", "s3cret-web"),
            ApiKey::for_secret("backend-eu", "s3cret-eu"),
        ];
        let callers = Callers::load(&access(&keys, false), AppEnv::Production).unwrap();
        let id = |h: &HeaderMap| callers.identify(h).map(|c| c.id().to_owned());
        assert_eq!(id(&bearer("s3cret-eu")).unwrap(), "backend-eu");
        assert_eq!(id(&bearer("s3cret")), None);
        assert_eq!(id(&HeaderMap::new()), None);
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic czNjcmV0LXdlYg==".parse().unwrap());
        assert_eq!(id(&basic), None);

        let public = Callers::load(&access(&keys, true), AppEnv::Production).unwrap();
        assert_eq!(public.identify(&HeaderMap::new()).unwrap(), Caller::Public);
        assert!(
            public.identify(&bearer("wrong")).is_none(),
            "a wrong key is never public"
        );
        assert_eq!(public.labels(), ["web", "backend-eu", "public"]);
    }

    #[test]
    fn production_needs_keys_or_public_api_and_development_does_not() {
        let err = Callers::load(&access(&[], false), AppEnv::Production).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("API_KEYS") && err.contains("PUBLIC_API"),
            "{err}"
        );
        assert!(Callers::load(&access(&[], true), AppEnv::Production).is_ok());
        let dev = Callers::load(&access(&[], false), AppEnv::Development).unwrap();
        assert_eq!(dev.identify(&bearer("anything")).unwrap(), Caller::Public);
    }

    #[test]
    fn settings_are_checked() {
        let hex = "a".repeat(64);
        assert!(ApiKey::parse(&format!("web:{hex}")).is_ok());
        for bad in [
            format!("Web:{hex}"),
            format!("public:{hex}"),
            "web:abc".to_owned(),
            format!("web:{}", "g".repeat(64)),
            hex.clone(),
        ] {
            assert!(ApiKey::parse(&bad).is_err(), "{bad}");
        }
        assert!(!format!("{:?}", ApiKey::parse(&format!("web:{hex}")).unwrap()).contains(&hex));
        let budgets = KeyBudgets::parse("web=10, *=3").unwrap();
        assert_eq!(budgets.limit_for(&Caller::Key("web".into())), 10);
        assert_eq!(budgets.limit_for(&Caller::Key("eu".into())), 3);
        assert_eq!(budgets.limit_for(&Caller::Public), 0);
        let mut twice = access(
            &[ApiKey::for_secret("a", "1"), ApiKey::for_secret("a", "2")],
            false,
        );
        assert!(Callers::load(&twice, AppEnv::Development).is_err());
        twice.api_keys.pop();
        twice.api_key_max_sends_per_hour = KeyBudgets::parse("b=1").unwrap();
        assert!(Callers::load(&twice, AppEnv::Development).is_err());
    }

    #[test]
    fn a_keys_file_adds_keys() {
        let path = std::env::temp_dir().join(format!("otp-keys-{}", uuid::Uuid::new_v4()));
        let line = |id: &str, secret: &str| {
            let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{id}:{hex}")
        };
        std::fs::write(
            &path,
            format!(
                "# keys\n{}\n\n{}  # eu\n",
                line("web", "a"),
                line("eu", "b")
            ),
        )
        .unwrap();
        let mut settings = access(&[], false);
        settings.api_keys_file = Some(path.clone());
        let callers = Callers::load(&settings, AppEnv::Production).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(callers.identify(&bearer("b")).unwrap().id(), "eu");
    }
}
