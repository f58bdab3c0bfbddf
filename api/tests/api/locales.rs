//! Messages in the user's language: the request's `locale`, else the number's country, else
//! SMS_DEFAULT_LOCALE; operator templates over the built-in ones; every template checked at
//! start-up.

use serde_json::{Value, json};

use crate::helpers::{PHONE, TestApp, spawn_with};

const JAPAN: &str = "+819012345678";

/// Requests a code for `phone` with `locale`; returns the answer's locale and the SMS text.
async fn sent(app: &TestApp, phone: &str, locale: Option<&str>) -> (String, String) {
    let mut body = json!({ "phoneNumber": phone });
    if let Some(locale) = locale {
        body["locale"] = json!(locale);
    }
    let resp = app.post_json("/api/otp/request", &body).await;
    assert_eq!(resp.status(), 202);
    let answer: Value = resp.json().await.unwrap();
    let (_, content) = app.next_job().await;
    (
        answer["locale"].as_str().unwrap().to_owned(),
        content.message_text(),
    )
}

#[tokio::test]
async fn a_locale_picks_the_language_and_the_country_picks_it_without_one() {
    let app = spawn_with(|_| {}).await;
    let (locale, text) = sent(&app, PHONE, Some("fr")).await;
    assert_eq!(locale, "fr");
    assert!(
        text.starts_with("Votre code de vérification est : "),
        "{text}"
    );

    let (locale, text) = sent(&app, JAPAN, None).await;
    assert_eq!(locale, "ja");
    assert!(text.starts_with("認証コード: "), "{text}");

    // No template for xx-YY: the number's country (US) decides; a malformed tag the same.
    for unknown in ["xx-YY", "not a locale!"] {
        let (locale, text) = sent(&app, PHONE, Some(unknown)).await;
        assert_eq!(locale, "en", "{unknown}");
        assert!(text.starts_with("Your verification code is: "), "{text}");
    }
    let (locale, _) = sent(&app, PHONE, Some("pt-br")).await;
    assert_eq!(locale, "pt-BR");
}

#[tokio::test]
async fn without_country_languages_the_default_locale_applies() {
    let app = spawn_with(|c| {
        c.otp.sms_locale_by_country = false;
        c.otp.sms_default_locale = "es".into();
    })
    .await;
    let (locale, text) = sent(&app, JAPAN, None).await;
    assert_eq!(locale, "es");
    assert!(text.starts_with("Tu código de verificación es: "), "{text}");
}

#[tokio::test]
async fn an_operator_template_wins_and_adds_languages() {
    let dir = std::env::temp_dir().join(format!("otp-templates-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("fr.txt"), "Code Exemple : {code}\n").unwrap();
    std::fs::write(dir.join("ro.txt"), "Codul tău de verificare este: {code}").unwrap();
    let app = spawn_with(|c| c.otp.sms_templates_dir = Some(dir.clone())).await;
    let (locale, text) = sent(&app, PHONE, Some("fr")).await;
    assert_eq!(locale, "fr");
    assert!(text.starts_with("Code Exemple : "), "{text}");
    let (locale, text) = sent(&app, PHONE, Some("ro-RO")).await;
    assert_eq!(locale, "ro");
    assert!(text.starts_with("Codul tău"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_template_with_two_placeholders_stops_the_api_naming_its_locale() {
    let dir = std::env::temp_dir().join(format!("otp-templates-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("de.txt"), "Code {code}, nochmal: {code}").unwrap();
    let mut config = crate::helpers::test_config();
    config.otp.sms_templates_dir = Some(dir.clone());
    let err = otp_api::startup::Application::build(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("SMS_TEMPLATES_DIR/de.txt") && err.contains("2 {code} placeholders"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Right to left, the WebOTP line stays the message's last line, exactly `@origin #code`, and
/// the app hash stays in the text.
#[tokio::test]
async fn an_arabic_message_ends_in_the_origin_line() {
    let app = spawn_with(|c| {
        c.otp.sms_origin = Some("example.com".into());
        c.otp.sms_android_app_hash = Some("FA+9qCX9VSu".into());
    })
    .await;
    let resp = app
        .post_json(
            "/api/otp/request",
            &json!({ "phoneNumber": PHONE, "locale": "ar" }),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let (_, content) = app.next_job().await;
    let text = content.message_text();
    let code = &content.code;
    assert!(text.starts_with("رمز التحقق الخاص بك هو: "), "{text}");
    assert_eq!(
        text.lines().last(),
        Some(format!("@example.com #{code}").as_str())
    );
    assert!(text.contains("\nFA+9qCX9VSu\n"), "{text}");
}
