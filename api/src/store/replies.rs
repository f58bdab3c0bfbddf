//! The Lua scripts' replies, read into types (`FromRedisValue`): a reply the code does not
//! understand is a parse error (`StoreError::Corrupt`), never a string compared later.

use redis::{FromRedisValue, ParsingError, Value};
use uuid::Uuid;

use super::{BlockRule, FraudSignal, LimitKind};

/// A script's array reply, read field by field.
struct Fields(std::vec::IntoIter<Value>);

impl Fields {
    fn of(value: Value, len: usize, script: &str) -> Result<Self, ParsingError> {
        match value {
            Value::Array(items) if items.len() == len => Ok(Self(items.into_iter())),
            other => Err(format!("{script} replied {other:?}").into()),
        }
    }

    fn next<T: FromRedisValue>(&mut self) -> Result<T, ParsingError> {
        T::from_redis_value(self.0.next().expect("the length was checked"))
    }
}

/// What refused a request in `guard.lua`, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GuardVerdict {
    Pass,
    /// A manual block, or the fraud guard enforcing one ([`Guarded::signal`] says which).
    Blocked,
    Refused(LimitKind),
}

/// `guard.lua`'s reply: `{outcome, limit, reset, fraud, sent_ms, rule}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Guarded {
    pub verdict: GuardVerdict,
    /// The refusing budget's limit and seconds to its reset.
    pub limit: i64,
    pub reset: i64,
    pub signal: FraudSignal,
    /// The send time the fraud guard counted (ms; 0: none).
    pub sent_ms: i64,
}

impl Guarded {
    /// What a request that needs no `guard.lua` gets: passed, nothing counted.
    pub fn pass() -> Self {
        Self {
            verdict: GuardVerdict::Pass,
            limit: 0,
            reset: 0,
            signal: FraudSignal::Clear,
            sent_ms: 0,
        }
    }
}

impl FromRedisValue for Guarded {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut f = Fields::of(value, 6, "guard.lua")?;
        let verdict = match f.next::<String>()?.as_str() {
            "ok" => GuardVerdict::Pass,
            "blocked" => GuardVerdict::Blocked,
            "country" => GuardVerdict::Refused(LimitKind::CountrySendsPerHour),
            "global" => GuardVerdict::Refused(LimitKind::TotalSendsPerHour),
            "key" => GuardVerdict::Refused(LimitKind::KeySendsPerHour),
            other => return Err(format!("guard outcome '{other}'").into()),
        };
        let (limit, reset) = (f.next()?, f.next()?);
        let fraud: String = f.next()?;
        let sent_ms = f.next()?;
        let rule: String = f.next()?;
        Ok(Self {
            verdict,
            limit,
            reset,
            signal: signal(&fraud, &rule)?,
            sent_ms,
        })
    }
}

/// `guard.lua`'s `fraud` and `rule` answers.
fn signal(fraud: &str, rule: &str) -> Result<FraudSignal, ParsingError> {
    let rule = match rule {
        "" => None,
        "conversion" => Some(BlockRule::Conversion),
        "burst" => Some(BlockRule::Burst),
        other => return Err(format!("fraud rule '{other}'").into()),
    };
    Ok(match (fraud, rule) {
        ("", _) => FraudSignal::Clear,
        ("blocked", _) => FraudSignal::Blocked,
        ("new_block", Some(rule)) => FraudSignal::NewBlock(rule),
        ("trickle", new) => FraudSignal::Trickle { new },
        ("manual", _) => FraudSignal::Manual,
        ("error", _) => FraudSignal::Unavailable,
        (other, _) => return Err(format!("fraud signal '{other}'").into()),
    })
}

/// `issue.lua`'s reply: `{outcome, limit, remaining, reset, replaced}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NumberIssued {
    /// The number's limit that refused the code, if one did.
    pub refused: Option<LimitKind>,
    /// The hourly limit (limit 0 when off), or the refusing one.
    pub limit: i64,
    pub remaining: i64,
    pub reset: i64,
    /// The verification whose code this one replaced.
    pub replaced: Option<Uuid>,
}

impl FromRedisValue for NumberIssued {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut f = Fields::of(value, 5, "issue.lua")?;
        let refused = match f.next::<String>()?.as_str() {
            "ok" => None,
            "cooldown" => Some(LimitKind::ResendCooldown),
            "hourly" => Some(LimitKind::SendsPerHour),
            other => return Err(format!("issue outcome '{other}'").into()),
        };
        let (limit, remaining, reset) = (f.next()?, f.next()?, f.next()?);
        let replaced = optional_id(f.next()?)?;
        Ok(Self {
            refused,
            limit,
            remaining,
            reset,
            replaced,
        })
    }
}

/// `verify_begin.lua`'s reply: `{outcome, limit, remaining, reset, vid, digest}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VerifyBegun {
    /// The number's verify limit refused the call.
    pub over_limit: bool,
    pub limit: i64,
    pub remaining: i64,
    pub reset: i64,
    /// The live code's (verification id, hex digest).
    pub record: Option<(Uuid, String)>,
}

impl FromRedisValue for VerifyBegun {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut f = Fields::of(value, 6, "verify_begin.lua")?;
        let over_limit = match f.next::<String>()?.as_str() {
            "ok" => false,
            "number" => true,
            other => return Err(format!("verify outcome '{other}'").into()),
        };
        let (limit, remaining, reset) = (f.next()?, f.next()?, f.next()?);
        let vid = optional_id(f.next()?)?;
        let digest: String = f.next()?;
        Ok(Self {
            over_limit,
            limit,
            remaining,
            reset,
            record: vid.map(|vid| (vid, digest)),
        })
    }
}

/// `verify_finish.lua`'s reply: `{consumed, sent_ms}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct VerifyFinished {
    pub consumed: bool,
    /// When the fraud guard counted the consumed code's send (ms; 0: not counted).
    pub sent_ms: i64,
    /// This failure used up the last attempt (the code is void now).
    pub exhausted: bool,
}

impl FromRedisValue for VerifyFinished {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut f = Fields::of(value, 3, "verify_finish.lua")?;
        let consumed = match f.next::<i64>()? {
            0 => false,
            1 => true,
            other => return Err(format!("verify_finish consumed {other}").into()),
        };
        Ok(Self {
            consumed,
            sent_ms: f.next()?,
            exhausted: f.next::<i64>()? == 1,
        })
    }
}

/// `idempotency.lua`'s reply: `{'claimed', ''}` or `{'existing', record}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyClaim {
    Claimed,
    /// The JSON record already stored under the key.
    Existing(String),
}

impl FromRedisValue for KeyClaim {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut f = Fields::of(value, 2, "idempotency.lua")?;
        let outcome: String = f.next()?;
        let record: String = f.next()?;
        match outcome.as_str() {
            "claimed" => Ok(Self::Claimed),
            "existing" => Ok(Self::Existing(record)),
            other => Err(format!("idempotency outcome '{other}'").into()),
        }
    }
}

/// A verification id, or '' for none.
fn optional_id(text: String) -> Result<Option<Uuid>, ParsingError> {
    if text.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(&text)
        .map(Some)
        .map_err(|_| format!("verification id '{text}'").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn replies_are_read_into_types_and_surprises_are_errors() {
        let guarded =
            Guarded::from_redis_value(array(&["blocked", "0", "0", "trickle", "5", "burst"]))
                .unwrap();
        assert_eq!(guarded.verdict, GuardVerdict::Blocked);
        assert_eq!(
            guarded.signal,
            FraudSignal::Trickle {
                new: Some(BlockRule::Burst)
            }
        );
        assert_eq!(guarded.sent_ms, 5);
        assert!(Guarded::from_redis_value(array(&["maybe", "0", "0", "", "0", ""])).is_err());
        assert!(Guarded::from_redis_value(array(&["ok", "0", "0", "", "0", "luck"])).is_err());
        assert!(Guarded::from_redis_value(array(&["ok", "0"])).is_err());

        let vid = Uuid::new_v4().to_string();
        let issued =
            NumberIssued::from_redis_value(array(&["cooldown", "1", "0", "3", &vid])).unwrap();
        assert_eq!(issued.refused, Some(LimitKind::ResendCooldown));
        assert_eq!(issued.replaced.map(|v| v.to_string()), Some(vid.clone()));
        assert!(NumberIssued::from_redis_value(array(&["ok", "0", "0", "0", "x"])).is_err());

        let begun = VerifyBegun::from_redis_value(array(&["ok", "5", "4", "900", "", ""])).unwrap();
        assert_eq!((begun.over_limit, begun.record), (false, None));
        assert_eq!(
            KeyClaim::from_redis_value(array(&["existing", "{}"])).unwrap(),
            KeyClaim::Existing("{}".into())
        );
        let finished = Value::Array(vec![Value::Int(2), Value::Int(0)]);
        assert!(VerifyFinished::from_redis_value(finished).is_err());
    }
}
