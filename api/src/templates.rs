//! SMS texts in the user's language. A request's `locale` (BCP 47) picks the template; without
//! one (or with one that has no template), the number's country picks its main language when
//! SMS_LOCALE_BY_COUNTRY is on; SMS_DEFAULT_LOCALE is the last fallback. The built-in templates
//! ([`BUILT_IN`]) can be overridden, and languages added, by `<locale>.txt` files in
//! SMS_TEMPLATES_DIR; SMS_TEMPLATE, if set, is the default locale's. Every template is checked
//! at start-up: exactly one `{code}`, and within SMS_MAX_SEGMENTS with the autofill lines.

use std::collections::HashMap;

use otp_shared::phone::CountryCode;

use crate::{config::OtpSettings, sms_text};

/// The placeholder the dispatcher replaces with the code.
const PLACEHOLDER: &str = "{code}";

/// The built-in templates, by locale. Each says "your verification code is" in the language's
/// usual form, with the code at the end, where phones' autofill and a reader's eye find it.
pub const BUILT_IN: [(&str, &str); 25] = [
    ("en", "Your verification code is: {code}"),
    ("es", "Tu código de verificación es: {code}"),
    ("pt", "O seu código de verificação é: {code}"),
    ("pt-BR", "Seu código de verificação é: {code}"),
    ("fr", "Votre code de vérification est : {code}"),
    ("de", "Ihr Bestätigungscode lautet: {code}"),
    ("it", "Il tuo codice di verifica è: {code}"),
    ("nl", "Je verificatiecode is: {code}"),
    ("pl", "Twój kod weryfikacyjny to: {code}"),
    ("tr", "Doğrulama kodunuz: {code}"),
    ("ru", "Ваш код подтверждения: {code}"),
    ("uk", "Ваш код підтвердження: {code}"),
    ("ar", "رمز التحقق الخاص بك هو: {code}"),
    ("he", "קוד האימות שלך הוא: {code}"),
    ("hi", "आपका सत्यापन कोड है: {code}"),
    ("bn", "আপনার যাচাইকরণ কোড: {code}"),
    ("id", "Kode verifikasi Anda adalah: {code}"),
    ("ms", "Kod pengesahan anda ialah: {code}"),
    ("vi", "Mã xác minh của bạn là: {code}"),
    ("th", "รหัสยืนยันของคุณคือ: {code}"),
    ("ja", "認証コード: {code}"),
    ("ko", "인증 코드: {code}"),
    ("zh-Hans", "您的验证码是：{code}"),
    ("zh-Hant", "您的驗證碼是：{code}"),
    ("sw", "Nambari yako ya uthibitisho ni: {code}"),
];

/// A country's main language, among the built-in ones (ISO 3166 → locale).
const BY_COUNTRY: &[(&str, &str)] = &[
    ("AR", "es"),
    ("BO", "es"),
    ("CL", "es"),
    ("CO", "es"),
    ("CR", "es"),
    ("CU", "es"),
    ("DO", "es"),
    ("EC", "es"),
    ("ES", "es"),
    ("GT", "es"),
    ("HN", "es"),
    ("MX", "es"),
    ("NI", "es"),
    ("PA", "es"),
    ("PE", "es"),
    ("PY", "es"),
    ("SV", "es"),
    ("UY", "es"),
    ("VE", "es"),
    ("PT", "pt"),
    ("AO", "pt"),
    ("MZ", "pt"),
    ("BR", "pt-BR"),
    ("FR", "fr"),
    ("LU", "fr"),
    ("MC", "fr"),
    ("SN", "fr"),
    ("CI", "fr"),
    ("DE", "de"),
    ("AT", "de"),
    ("CH", "de"),
    ("LI", "de"),
    ("IT", "it"),
    ("SM", "it"),
    ("NL", "nl"),
    ("BE", "nl"),
    ("SR", "nl"),
    ("PL", "pl"),
    ("TR", "tr"),
    ("RU", "ru"),
    ("BY", "ru"),
    ("KZ", "ru"),
    ("KG", "ru"),
    ("UA", "uk"),
    ("AE", "ar"),
    ("BH", "ar"),
    ("DZ", "ar"),
    ("EG", "ar"),
    ("IQ", "ar"),
    ("JO", "ar"),
    ("KW", "ar"),
    ("LB", "ar"),
    ("LY", "ar"),
    ("MA", "ar"),
    ("OM", "ar"),
    ("PS", "ar"),
    ("QA", "ar"),
    ("SA", "ar"),
    ("SD", "ar"),
    ("SY", "ar"),
    ("TN", "ar"),
    ("YE", "ar"),
    ("IL", "he"),
    ("IN", "hi"),
    ("BD", "bn"),
    ("ID", "id"),
    ("MY", "ms"),
    ("BN", "ms"),
    ("VN", "vi"),
    ("TH", "th"),
    ("JP", "ja"),
    ("KR", "ko"),
    ("CN", "zh-Hans"),
    ("TW", "zh-Hant"),
    ("HK", "zh-Hant"),
    ("MO", "zh-Hant"),
    ("TZ", "sw"),
    ("KE", "sw"),
];

/// The templates, complete with the autofill lines, by canonical locale tag.
#[derive(Debug, Clone)]
pub struct Templates {
    by_locale: HashMap<String, String>,
    default: String,
    by_country: bool,
}

/// Where a template came from, for the start-up errors.
fn source(locale: &str, from_file: bool, from_setting: bool) -> String {
    match (from_setting, from_file) {
        (true, _) => format!("SMS_TEMPLATE (locale {locale})"),
        (false, true) => format!("SMS_TEMPLATES_DIR/{locale}.txt"),
        (false, false) => format!("the built-in template of {locale}"),
    }
}

impl Templates {
    /// The built-in templates, SMS_TEMPLATES_DIR's files over them, SMS_TEMPLATE over the
    /// default locale's; each checked. The error names the locale, where it came from, and why.
    pub fn load(settings: &OtpSettings) -> Result<Self, String> {
        let default = canonical(&settings.sms_default_locale).ok_or_else(|| {
            format!(
                "SMS_DEFAULT_LOCALE '{}' is not a BCP 47 tag such as en or pt-BR",
                settings.sms_default_locale
            )
        })?;
        let mut raw: HashMap<String, (String, bool, bool)> = BUILT_IN
            .iter()
            .map(|(locale, text)| ((*locale).to_owned(), ((*text).to_owned(), false, false)))
            .collect();
        if let Some(dir) = &settings.sms_templates_dir {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| format!("SMS_TEMPLATES_DIR {}: {e}", dir.display()))?;
            for entry in entries {
                let path = entry
                    .map_err(|e| format!("SMS_TEMPLATES_DIR {}: {e}", dir.display()))?
                    .path();
                if path.extension().is_none_or(|ext| ext != "txt") {
                    continue;
                }
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                let locale = canonical(stem).ok_or_else(|| {
                    format!(
                        "SMS_TEMPLATES_DIR/{stem}.txt: '{stem}' is not a BCP 47 tag such as \
                         fr or pt-BR"
                    )
                })?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("SMS_TEMPLATES_DIR/{stem}.txt: {e}"))?;
                let text = text.trim_end_matches(['\n', '\r']).to_owned();
                raw.insert(locale, (text, true, false));
            }
        }
        if let Some(text) = &settings.sms_template {
            raw.insert(default.clone(), (text.clone(), false, true));
        }
        if !raw.contains_key(&default) {
            return Err(format!(
                "SMS_DEFAULT_LOCALE {default} has no template: add SMS_TEMPLATES_DIR/{default}.txt \
                 or set SMS_TEMPLATE"
            ));
        }
        let mut by_locale = HashMap::with_capacity(raw.len());
        for (locale, (text, from_file, from_setting)) in raw {
            let named = source(&locale, from_file, from_setting);
            let complete = check(&text, settings).map_err(|why| format!("{named}: {why}"))?;
            by_locale.insert(locale, complete);
        }
        Ok(Self {
            by_locale,
            default,
            by_country: settings.sms_locale_by_country,
        })
    }

    /// The locale and template for a request: its `requested` locale if a template serves it,
    /// else the `country`'s language (SMS_LOCALE_BY_COUNTRY), else the default.
    pub fn choose(&self, requested: Option<&str>, country: Option<CountryCode>) -> (&str, &str) {
        if let Some(raw) = requested {
            match canonical(raw) {
                Some(tag) => {
                    if let Some(found) = self.lookup(&tag) {
                        return found;
                    }
                }
                None => tracing::debug!(locale = %raw.chars().take(40).collect::<String>(),
                    "a malformed locale; falling back"),
            }
        }
        let by_country = country
            .filter(|_| self.by_country)
            .and_then(|c| BY_COUNTRY.iter().find(|(code, _)| *code == c.as_str()))
            .and_then(|(_, locale)| self.lookup(locale));
        by_country.unwrap_or_else(|| {
            let (locale, text) = self
                .by_locale
                .get_key_value(&self.default)
                .expect("checked");
            (locale, text)
        })
    }

    /// The most specific template for `tag`: itself, then its Chinese script (`zh-TW` →
    /// `zh-Hant`), then without its last subtags (`pt-PT` → `pt`).
    fn lookup(&self, tag: &str) -> Option<(&str, &str)> {
        let mut candidate = chinese_script(tag).unwrap_or(tag).to_owned();
        loop {
            if let Some((locale, text)) = self.by_locale.get_key_value(&candidate) {
                return Some((locale, text));
            }
            let (shorter, _) = candidate.rsplit_once('-')?;
            candidate = shorter.to_owned();
        }
    }

    /// The locales with a template, sorted.
    pub fn locales(&self) -> Vec<&str> {
        let mut locales: Vec<&str> = self.by_locale.keys().map(String::as_str).collect();
        locales.sort_unstable();
        locales
    }
}

/// Chinese by script: Traditional for Taiwan, Hong Kong and Macao, Simplified otherwise.
fn chinese_script(tag: &str) -> Option<&'static str> {
    let mut parts = tag.split('-');
    if parts.next()? != "zh" {
        return None;
    }
    match parts.next() {
        Some("Hant" | "TW" | "HK" | "MO") => Some("zh-Hant"),
        Some("Hans" | "CN" | "SG") | None => Some("zh-Hans"),
        Some(_) => None,
    }
}

/// The template with its autofill lines, if it has exactly one `{code}` and, with a code of
/// OTP_LENGTH digits, fits in SMS_MAX_SEGMENTS.
fn check(template: &str, settings: &OtpSettings) -> Result<String, String> {
    let placeholders = template.matches(PLACEHOLDER).count();
    if placeholders != 1 {
        return Err(format!(
            "has {placeholders} {PLACEHOLDER} placeholders; it needs exactly one"
        ));
    }
    let complete = sms_text::full_template(
        template,
        settings.sms_origin.as_deref(),
        settings.sms_android_app_hash.as_deref(),
    );
    let sample = complete.replace(PLACEHOLDER, &"0".repeat(settings.otp_length.into()));
    let (encoding, segments) = sms_text::segments(&sample);
    if segments > settings.sms_max_segments.into() {
        return Err(format!(
            "takes {segments} SMS segments ({encoding:?}) with SMS_ORIGIN and \
             SMS_ANDROID_APP_HASH, more than SMS_MAX_SEGMENTS={}",
            settings.sms_max_segments
        ));
    }
    Ok(complete)
}

/// A BCP 47 tag in its canonical case (`pt-br` → `pt-BR`, `zh-hant` → `zh-Hant`), or `None`
/// when it is not one: a 2- or 3-letter language, then subtags of 1 to 8 letters or digits.
pub fn canonical(raw: &str) -> Option<String> {
    let raw = raw.trim().replace('_', "-");
    if raw.is_empty() || raw.len() > 35 {
        return None;
    }
    let mut parts = raw.split('-');
    let language = parts.next()?;
    if !(2..=3).contains(&language.len()) || !language.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let mut tag = language.to_ascii_lowercase();
    for part in parts {
        if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        tag.push('-');
        match part.len() {
            // A script: Hant, Latn.
            4 if part.bytes().all(|b| b.is_ascii_alphabetic()) => {
                tag.push_str(&part[..1].to_ascii_uppercase());
                tag.push_str(&part[1..].to_ascii_lowercase());
            }
            // A region: BR, 419.
            2 | 3 => tag.push_str(&part.to_ascii_uppercase()),
            _ => tag.push_str(&part.to_ascii_lowercase()),
        }
    }
    Some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OtpSettings {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Otp {
            #[command(flatten)]
            otp: OtpSettings,
        }
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        Otp::try_parse_from(["test", "--otp-hmac-key", key, "--job-encryption-key", key])
            .unwrap()
            .otp
    }

    #[test]
    fn tags_are_canonical_and_malformed_ones_refused() {
        assert_eq!(canonical("pt-br").as_deref(), Some("pt-BR"));
        assert_eq!(canonical("ZH_hant").as_deref(), Some("zh-Hant"));
        assert_eq!(canonical("es-419").as_deref(), Some("es-419"));
        for bad in [
            "",
            "e",
            "english",
            "fr--CA",
            "fr-CA!",
            "1a",
            &"a".repeat(40),
        ] {
            assert_eq!(canonical(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_built_in_template_has_one_placeholder_and_fits() {
        let mut s = settings();
        // The default limit (2 segments) with both autofill lines and a long origin: a UCS-2
        // text (any letter outside GSM-7, such as Portuguese ã) fits 67 characters a segment.
        s.sms_origin = Some("accounts.login.example.com".into());
        s.sms_android_app_hash = Some("FA+9qCX9VSu".into());
        s.otp_length = 10;
        let templates = Templates::load(&s).unwrap();
        assert_eq!(templates.locales().len(), BUILT_IN.len());
        for (locale, _) in BUILT_IN {
            assert_eq!(templates.choose(Some(locale), None).0, locale);
        }
        for (country, locale) in BY_COUNTRY {
            assert!(
                BUILT_IN.iter().any(|(l, _)| l == locale),
                "{country}: {locale}"
            );
        }
    }

    #[test]
    fn the_locale_falls_back_by_subtag_script_country_and_default() {
        let templates = Templates::load(&settings()).unwrap();
        let country = |c: &str| Some(c.parse::<CountryCode>().unwrap());
        assert_eq!(templates.choose(Some("pt-PT"), None).0, "pt");
        assert_eq!(templates.choose(Some("PT-br"), None).0, "pt-BR");
        assert_eq!(templates.choose(Some("zh-TW"), None).0, "zh-Hant");
        assert_eq!(templates.choose(Some("zh"), None).0, "zh-Hans");
        assert_eq!(templates.choose(Some("fr-CA"), country("US")).0, "fr");
        assert_eq!(templates.choose(Some("xx-YY"), country("JP")).0, "ja");
        assert_eq!(
            templates.choose(Some("not a tag"), country("BR")).0,
            "pt-BR"
        );
        assert_eq!(templates.choose(None, country("US")).0, "en");
        assert_eq!(templates.choose(None, None).0, "en");
        let mut off = settings();
        off.sms_locale_by_country = false;
        off.sms_default_locale = "de".into();
        let templates = Templates::load(&off).unwrap();
        assert_eq!(templates.choose(None, country("JP")).0, "de");
    }

    #[test]
    fn a_template_with_two_placeholders_or_too_long_is_refused_by_name() {
        let mut s = settings();
        s.sms_template = Some("{code} {code}".into());
        let error = Templates::load(&s).unwrap_err();
        assert!(
            error.contains("SMS_TEMPLATE (locale en)") && error.contains("2 {code}"),
            "{error}"
        );
        let mut s = settings();
        s.sms_max_segments = 1;
        s.sms_template = Some(format!("{} {{code}}", "x".repeat(160)));
        let error = Templates::load(&s).unwrap_err();
        assert!(error.contains("SMS_MAX_SEGMENTS=1"), "{error}");
        let mut s = settings();
        s.sms_default_locale = "xx".into();
        assert!(
            Templates::load(&s)
                .unwrap_err()
                .contains("SMS_DEFAULT_LOCALE xx")
        );
    }
}
