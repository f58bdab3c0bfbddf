//! The SMS text: the operator's template, plus the lines that let phones fill the code in by
//! themselves, checked at start-up against SMS segment sizes.
//!
//! - `SMS_ORIGIN` adds the origin-bound last line `@example.com #123456` that Safari and
//!   Chrome's WebOTP read (WICG sms-one-time-codes: it must be the message's last line).
//! - `SMS_ANDROID_APP_HASH` adds the 11-character app hash Android's SMS Retriever looks for.

/// Characters of the GSM 03.38 default alphabet, and of its extension table (which cost two).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENDED: &str = "^{}\\[~]|€\u{c}";

/// How a message is encoded on the air, and so how much fits in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 160 septets in one segment, 153 per segment when split.
    Gsm7,
    /// 70 UTF-16 units in one segment, 67 per segment when split.
    Ucs2,
}

/// The template actually sent: `template`, then the app hash, then the origin-bound line, each
/// `{code}` replaced by the dispatcher.
pub fn full_template(template: &str, origin: Option<&str>, app_hash: Option<&str>) -> String {
    let mut text = template.to_owned();
    if app_hash.is_some() || origin.is_some() {
        text.push_str("\n\n");
    }
    if let Some(hash) = app_hash {
        text.push_str(hash);
        if origin.is_some() {
            text.push('\n');
        }
    }
    if let Some(origin) = origin {
        text.push_str(&format!("@{origin} #{{code}}"));
    }
    text
}

/// The encoding and number of segments `text` takes.
pub fn segments(text: &str) -> (Encoding, usize) {
    let gsm: Option<usize> = text
        .chars()
        .map(|c| {
            if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENDED.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .sum();
    let (encoding, units, single, multi) = match gsm {
        Some(septets) => (Encoding::Gsm7, septets, 160, 153),
        None => (Encoding::Ucs2, text.encode_utf16().count(), 70, 67),
    };
    let count = if units <= single {
        1
    } else {
        units.div_ceil(multi)
    };
    (encoding, count)
}

/// SMS_ORIGIN: a host name (optionally with a port), as WebOTP compares it with the page's.
pub fn parse_origin(value: &str) -> Result<String, String> {
    let value = value.trim();
    let (host, port) = value.rsplit_once(':').unwrap_or((value, ""));
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0);
    if host_ok && port_ok {
        Ok(value.to_ascii_lowercase())
    } else {
        Err("must be a host name such as example.com (no scheme, no path)".into())
    }
}

/// SMS_ANDROID_APP_HASH: exactly 11 characters of the base64 alphabet.
pub fn parse_app_hash(value: &str) -> Result<String, String> {
    let value = value.trim();
    let ok = value.len() == 11
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if ok {
        Ok(value.to_owned())
    } else {
        Err("must be exactly 11 characters of the base64 alphabet (A-Z a-z 0-9 + /)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autofill_lines_are_appended_byte_for_byte() {
        let t = "Your verification code is: {code}";
        assert_eq!(full_template(t, None, None), t);
        assert_eq!(
            full_template(t, Some("example.com"), None).replace("{code}", "123456"),
            "Your verification code is: 123456\n\n@example.com #123456"
        );
        assert_eq!(
            full_template(t, None, Some("FA+9qCX9VSu")).replace("{code}", "123456"),
            "Your verification code is: 123456\n\nFA+9qCX9VSu"
        );
        assert_eq!(
            full_template(t, Some("example.com"), Some("FA+9qCX9VSu")).replace("{code}", "123456"),
            "Your verification code is: 123456\n\nFA+9qCX9VSu\n@example.com #123456"
        );
    }

    #[test]
    fn segments_follow_gsm7_and_ucs2_sizes() {
        assert_eq!(segments(&"a".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"a".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"a".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"a".repeat(307)), (Encoding::Gsm7, 3));
        // Extension characters take two septets.
        assert_eq!(segments(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"€".repeat(81)), (Encoding::Gsm7, 2));
        assert_eq!(segments(&"é".repeat(160)), (Encoding::Gsm7, 1));
        // One character outside GSM-7 makes it all UCS-2.
        assert_eq!(
            segments(&format!("{}ł", "a".repeat(69))),
            (Encoding::Ucs2, 1)
        );
        assert_eq!(
            segments(&format!("{}ł", "a".repeat(70))),
            (Encoding::Ucs2, 2)
        );
        assert_eq!(segments("Код: 123456"), (Encoding::Ucs2, 1));
    }

    #[test]
    fn origins_and_app_hashes_are_checked() {
        assert_eq!(parse_origin("Example.com").unwrap(), "example.com");
        assert!(parse_origin("app.example.com:8443").is_ok());
        for bad in [
            "https://example.com",
            "example.com/path",
            "",
            "-a.com",
            "a..com",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
        assert!(parse_app_hash("FA+9qCX9VSu").is_ok());
        for bad in ["FA+9qCX9VS", "FA+9qCX9VSu1", "FA+9qCX9VS-"] {
            assert!(parse_app_hash(bad).is_err(), "{bad}");
        }
    }
}
