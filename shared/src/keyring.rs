//! Secret keys as operators set them: one base64 key, or a list `id:base64,id:base64` with the
//! current key first, so a key can be rotated without losing a code or a job. And the start-up
//! check that refuses known-bad keys outside development.

use secrecy::{ExposeSecret, SecretSlice, SecretString};

use base64::{Engine, engine::general_purpose::STANDARD};

/// The public development values in `.env.example` (OTP_HMAC_KEY, JOB_ENCRYPTION_KEY).
pub const EXAMPLE_KEYS: [&str; 2] = [
    "ZGV2LW9ubHktaG1hYy1rZXktbm90LWZvci1wcm9kMzI=",
    "ZGV2LW9ubHktam9iLWtleS1ub3QtZm9yLXByb2QtMzI=",
];

/// The provider tokens `.env.example` ships, which production refuses.
pub const EXAMPLE_TOKENS: [&str; 1] = ["development-token"];

/// Production's check of provider tokens (development skips it): a token that is set must be
/// neither empty nor an `.env.example` value. The error names the variable, never the value.
pub fn check_tokens(tokens: &[(&str, Option<&SecretString>)]) -> Result<(), String> {
    for (var, token) in tokens {
        let Some(token) = token.map(|t| t.expose_secret().trim()) else {
            continue;
        };
        if token.is_empty() {
            return Err(format!(
                "{var} is set but empty (APP_ENV=development allows it)"
            ));
        }
        if EXAMPLE_TOKENS.contains(&token) {
            return Err(format!(
                "{var} is the example value of .env.example: set the provider's real token \
                 (APP_ENV=development allows it)"
            ));
        }
    }
    Ok(())
}

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

/// One key of a ring.
pub struct RingKey {
    pub id: u32,
    pub bytes: SecretSlice<u8>,
}

/// Parses a single base64 key (id 0) or `id:base64,id:base64,...` (current first, ids unique).
/// Each key must decode to at least `min_len` bytes. Errors never echo a key.
pub fn parse_ring(value: &str, min_len: usize) -> Result<Vec<RingKey>, String> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Err("must hold a key".into());
    }
    let mut ring: Vec<RingKey> = Vec::with_capacity(entries.len());
    for (n, entry) in entries.iter().enumerate() {
        let (id, key) = match entry.split_once(':') {
            Some((id, key)) => {
                let id = id
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("entry {} must be id:base64 with a numeric id", n + 1))?;
                (id, key)
            }
            None if entries.len() == 1 => (0, *entry),
            None => {
                return Err(format!(
                    "entry {} has no id: with several keys, each is id:base64",
                    n + 1
                ));
            }
        };
        if ring.iter().any(|k| k.id == id) {
            return Err(format!("key id {id} appears twice"));
        }
        let bytes = decode_key(key, min_len).map_err(|e| format!("key {id} {e}"))?;
        ring.push(RingKey { id, bytes });
    }
    Ok(ring)
}

/// Why a key must not be used in production, if it must not.
fn weakness(bytes: &[u8]) -> Option<&'static str> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    if EXAMPLE_KEYS
        .iter()
        .any(|example| STANDARD.decode(example).is_ok_and(|e| e == bytes))
    {
        return Some("is the public example value from .env.example");
    }
    let mut seen = [false; 256];
    for b in bytes {
        seen[usize::from(*b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    let steps: Vec<u8> = bytes.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    let sequence = steps.windows(2).all(|w| w[0] == w[1]);
    // A short pattern repeated (`0123456789abcdef` twice) holds only the pattern's entropy.
    let repeated = (1..=bytes.len() / 2).any(|period| {
        bytes.len().is_multiple_of(period) && bytes.chunks(period).all(|c| c == &bytes[..period])
    });
    if distinct < 16 || sequence || repeated {
        return Some("has obviously low entropy");
    }
    None
}

/// Production's check of keys (development skips it): refuses a key that is a public example
/// or has obviously low entropy, and the same key under two settings. `settings` pairs each
/// variable with its keys.
pub fn check_keys(settings: &[(&str, Vec<&[u8]>)]) -> Result<(), String> {
    let advice = "generate one with `openssl rand -base64 32` (APP_ENV=development allows it)";
    for (var, keys) in settings {
        if let Some(why) = keys.iter().find_map(|k| weakness(k)) {
            return Err(format!("{var} {why}: {advice}"));
        }
    }
    for (i, (a, a_keys)) in settings.iter().enumerate() {
        for (b, b_keys) in &settings[i + 1..] {
            if a_keys.iter().any(|k| b_keys.contains(k)) {
                return Err(format!("{a} and {b} must be different keys: {advice}"));
            }
        }
    }
    Ok(())
}

/// The key bytes of a ring, for [`check_keys`].
pub fn key_bytes(ring: &[RingKey]) -> Vec<&[u8]> {
    ring.iter().map(|k| k.bytes.expose_secret()).collect()
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::STANDARD};

    use super::*;

    #[test]
    fn production_refuses_empty_and_example_tokens_naming_the_variable() {
        let token = |t: &str| Some(SecretString::from(t.to_owned()));
        for (value, why) in [("", "empty"), ("development-token", "example")] {
            let given = token(value);
            let err = check_tokens(&[("PLIVO_AUTH_TOKEN", given.as_ref())]).unwrap_err();
            assert!(
                err.contains("PLIVO_AUTH_TOKEN") && err.contains(why),
                "{err}"
            );
        }
        let real = token("3f9a1c77e0b24d55a8c1");
        assert!(check_tokens(&[("T", real.as_ref()), ("U", None)]).is_ok());
    }

    fn random_key(seed: u8) -> Vec<u8> {
        (0..32u8)
            .map(|i| i.wrapping_mul(151).wrapping_add(seed).rotate_left(3) ^ (i * 7))
            .collect()
    }

    #[test]
    fn a_bare_key_is_id_0_and_a_list_names_its_ids() {
        let k = STANDARD.encode(random_key(1));
        let ring = parse_ring(&k, 32).unwrap();
        assert_eq!(ring[0].id, 0);
        let ring = parse_ring(&format!("2:{k}, 1:{}", STANDARD.encode(random_key(2))), 32).unwrap();
        assert_eq!(ring.iter().map(|k| k.id).collect::<Vec<_>>(), [2, 1]);
        for bad in [
            format!("{k},{k}"),
            format!("1:{k},1:{k}"),
            format!("x:{k}"),
            "1:c2hvcnQ=".to_owned(),
            String::new(),
        ] {
            let err = parse_ring(&bad, 32).err().expect(&bad);
            assert!(!err.contains(&k), "{err}");
        }
    }

    #[test]
    fn weak_keys_are_refused_outside_development() {
        let good = random_key(9);
        let other = random_key(77);
        let example = STANDARD.decode(EXAMPLE_KEYS[1]).unwrap();
        let check = |keys: Vec<&[u8]>| check_keys(&[("JOB_ENCRYPTION_KEY", keys)]);
        assert!(check(vec![&good]).is_ok());
        assert!(check(vec![&example]).unwrap_err().contains("example"));
        assert!(check(vec![&[42u8; 32]]).unwrap_err().contains("entropy"));
        let sequence: Vec<u8> = (0..32).collect();
        assert!(
            check(vec![&good, &sequence])
                .unwrap_err()
                .contains("JOB_ENCRYPTION_KEY")
        );
        let same = check_keys(&[
            ("OTP_HMAC_KEY", vec![&good]),
            ("JOB_ENCRYPTION_KEY", vec![&other, &good]),
        ]);
        assert!(same.unwrap_err().contains("must be different"));
    }
}
