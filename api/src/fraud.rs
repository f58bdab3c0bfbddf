//! The fraud guard against SMS pumping: sends and successful verifications are counted per
//! destination prefix (the number without its last FRAUD_GUARD_PREFIX_DROP_DIGITS digits) and
//! per country, over a sliding window. A prefix whose counted sends reach FRAUD_GUARD_MIN_SENDS
//! with a conversion (verified ÷ sent) below FRAUD_GUARD_MIN_CONVERSION is blocked for
//! FRAUD_GUARD_BLOCK_HOURS, renewed while the pattern continues. Sends younger than
//! FRAUD_GUARD_GRACE_SECONDS are not counted, so a code still being typed never counts against
//! its prefix. The accounting runs inside the issue and verify scripts (no extra round trip);
//! this module holds the settings and what a destination's prefix is.

use std::{str::FromStr, time::Duration};

use clap::Args;

use otp_shared::phone::PhoneNumber;

/// FRAUD_GUARD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    /// Everything computed, logged and exported; nothing blocked.
    Monitor,
    Enforce,
}

impl Mode {
    /// As the Lua scripts take it.
    pub fn code(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Monitor => 1,
            Self::Enforce => 2,
        }
    }

    pub fn enabled(self) -> bool {
        self != Self::Off
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "monitor" => Ok(Self::Monitor),
            "enforce" => Ok(Self::Enforce),
            _ => Err(format!("'{s}' is not a mode (off, monitor or enforce)")),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct FraudSettings {
    /// off, monitor (compute, log and export; never block) or enforce.
    #[arg(long, env = "FRAUD_GUARD", default_value = "enforce")]
    pub fraud_guard: Mode,
    /// A destination's prefix is its E.164 number without this many last digits.
    #[arg(long, env = "FRAUD_GUARD_PREFIX_DROP_DIGITS", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(1..=8))]
    pub fraud_guard_prefix_drop_digits: u8,
    /// Minutes of the sliding window sends and verifications are counted over.
    #[arg(long, env = "FRAUD_GUARD_WINDOW_MINUTES", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub fraud_guard_window_minutes: u32,
    /// Seconds a send is left out of the counts, while its code may still be typed.
    #[arg(long, env = "FRAUD_GUARD_GRACE_SECONDS", default_value_t = 120)]
    pub fraud_guard_grace_seconds: u32,
    /// Counted sends in the window before a prefix's conversion can block it.
    #[arg(long, env = "FRAUD_GUARD_MIN_SENDS", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fraud_guard_min_sends: u32,
    /// Conversion (verified ÷ sent, 0 to 1) below which a prefix is blocked.
    #[arg(long, env = "FRAUD_GUARD_MIN_CONVERSION", default_value_t = 0.2,
          value_parser = parse_share)]
    pub fraud_guard_min_conversion: f64,
    /// Hours a block lasts (renewed while the pattern continues).
    #[arg(long, env = "FRAUD_GUARD_BLOCK_HOURS", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=720))]
    pub fraud_guard_block_hours: u32,
    /// Unverified sends a prefix may take within FRAUD_GUARD_GRACE_SECONDS; past it the
    /// prefix is blocked (a burst, before any conversion can be known).
    #[arg(long, env = "FRAUD_GUARD_BURST", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fraud_guard_burst: u32,
    /// Distinct client networks (the per-IP limit's key) that must have sent to a prefix in
    /// the window before either rule blocks it, so one client cannot aim a block at others.
    #[arg(long, env = "FRAUD_GUARD_MIN_CLIENTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fraud_guard_min_clients: u32,
    /// Sends per hour still let through to a blocked prefix; a code verified from them lifts
    /// the block (0: none).
    #[arg(long, env = "FRAUD_GUARD_BLOCKED_SENDS_PER_HOUR", default_value_t = 6)]
    pub fraud_guard_blocked_sends_per_hour: u32,
    /// Comma-separated prefixes never blocked, e.g. +1415555,+4420.
    #[arg(long, env = "FRAUD_GUARD_SAFE_PREFIXES", value_delimiter = ',', value_parser = parse_prefix)]
    pub fraud_guard_safe_prefixes: Vec<String>,
}

fn parse_share(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("must be a share from 0 to 1, e.g. 0.2".into()),
    }
}

/// A prefix as operators write it: `+` and 1 to 15 digits.
pub fn parse_prefix(value: &str) -> Result<String, String> {
    let value = value.trim();
    let digits = value.strip_prefix('+').unwrap_or_default();
    if (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(value.to_owned())
    } else {
        Err(format!("'{value}' is not a prefix like +1415555"))
    }
}

/// What the issue script needs to know about a destination.
#[derive(Debug, Clone)]
pub struct Destination {
    pub prefix: String,
    /// ISO code, or `ZZ` for a number of no single country.
    pub country: String,
    pub safe: bool,
}

/// Every prefix of the number an operator's block may name: `+4`, `+44`, … up to the whole
/// number.
pub fn prefixes_of(phone: &PhoneNumber) -> Vec<&str> {
    let e164 = phone.as_e164();
    (2..=e164.len()).map(|end| &e164[..end]).collect()
}

impl FraudSettings {
    /// The guard off, with the settings' defaults otherwise (operator tools, tests).
    pub fn off() -> Self {
        Self {
            fraud_guard: Mode::Off,
            fraud_guard_prefix_drop_digits: 4,
            fraud_guard_window_minutes: 60,
            fraud_guard_grace_seconds: 120,
            fraud_guard_min_sends: 20,
            fraud_guard_min_conversion: 0.2,
            fraud_guard_block_hours: 12,
            fraud_guard_burst: 30,
            fraud_guard_min_clients: 3,
            fraud_guard_blocked_sends_per_hour: 6,
            fraud_guard_safe_prefixes: Vec::new(),
        }
    }

    pub fn destination(&self, phone: &PhoneNumber) -> Destination {
        let e164 = phone.as_e164();
        let keep = e164
            .len()
            .saturating_sub(self.fraud_guard_prefix_drop_digits.into())
            .max(2);
        let prefix = e164[..keep].to_owned();
        Destination {
            safe: self
                .fraud_guard_safe_prefixes
                .iter()
                .any(|safe| e164.starts_with(safe.as_str())),
            country: phone
                .country()
                .map_or_else(|| "ZZ".to_owned(), |c| c.as_str().to_owned()),
            prefix,
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.fraud_guard_window_minutes) * 60)
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.fraud_guard_grace_seconds.into())
    }

    pub fn block(&self) -> Duration {
        Duration::from_secs(u64::from(self.fraud_guard_block_hours) * 3600)
    }

    /// Per mille, as the scripts take it.
    pub fn min_conversion_per_mille(&self) -> u64 {
        (self.fraud_guard_min_conversion * 1000.0).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_has_the_settings_defaults() {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            fraud: FraudSettings,
        }
        let parsed = <Defaults as clap::Parser>::try_parse_from(["otp", "--fraud-guard=off"]);
        let parsed = parsed.unwrap().fraud;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", FraudSettings::off()));
    }

    fn settings(safe: &[&str]) -> FraudSettings {
        FraudSettings {
            fraud_guard: Mode::Monitor,
            fraud_guard_safe_prefixes: safe.iter().map(|s| s.to_string()).collect(),
            ..FraudSettings::off()
        }
    }

    #[test]
    fn a_prefix_drops_the_last_digits_and_safe_prefixes_match() {
        let phone = PhoneNumber::parse("+14155552671").unwrap();
        let d = settings(&["+1415555"]).destination(&phone);
        assert_eq!(d.prefix, "+1415555");
        assert_eq!(d.country, "US");
        assert!(d.safe);
        assert!(!settings(&["+4420"]).destination(&phone).safe);
        assert!(parse_prefix("+1415555").is_ok());
        assert!(parse_prefix("1415").is_err() && parse_prefix("+14a").is_err());
        assert_eq!(
            prefixes_of(&phone),
            [
                "+1",
                "+14",
                "+141",
                "+1415",
                "+14155",
                "+141555",
                "+1415555",
                "+14155552",
                "+141555526",
                "+1415555267",
                "+14155552671"
            ]
        );
    }
}
