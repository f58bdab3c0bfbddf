//! The signed verdict, checked as an app's backend would: a JWT library (not the code that
//! signs) checks the verify token against the served JWKS: signature, `iss`, `aud`, `exp`, and
//! the `sub` and `vid` claims. A token of an older key still verifies while that key is listed.

use base64::{Engine, engine::general_purpose::STANDARD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use otp_api::verdict::SigningKeys;
use serde_json::{Value, json};

use crate::helpers::{PHONE, TestApp, spawn_with};

fn keys(list: &[(&str, u8)]) -> SigningKeys {
    let text: Vec<String> = list
        .iter()
        .map(|(kid, byte)| format!("{kid}:{}", STANDARD.encode([*byte; 32])))
        .collect();
    SigningKeys::parse(&text.join(",")).unwrap()
}

async fn app_signing_with(list: &[(&str, u8)]) -> TestApp {
    let signing = keys(list);
    spawn_with(move |c| {
        c.tokens.token_signing_keys = Some(signing);
        c.tokens.token_issuer = "https://otp.example.com".into();
        c.tokens.token_audience = "signup-backend".into();
        c.tokens.token_ttl_seconds = 120;
    })
    .await
}

/// Requests and verifies a code; returns the token and the verification id.
async fn verified_token(app: &TestApp, phone: &str) -> (String, String) {
    let resp = app.request_otp(phone).await;
    let vid = resp.json::<Value>().await.unwrap()["verificationId"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = app.next_job().await.1.code;
    let resp = app
        .post_json(
            "/api/otp/verify",
            &json!({ "phoneNumber": phone, "otp": code, "verificationId": vid }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["success"].clone(), body["message"].clone()),
        (json!(true), json!("OTP verified successfully."))
    );
    (body["token"].as_str().unwrap().to_owned(), vid)
}

async fn jwks(app: &TestApp) -> JwkSet {
    let resp = app.get("/.well-known/jwks.json").await;
    assert_eq!(resp.status(), 200);
    let cache = resp.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cache.contains("max-age"), "{cache}");
    resp.json().await.unwrap()
}

/// What an app's backend does with a token: find its key in the JWKS, check everything.
fn check(token: &str, set: &JwkSet) -> Result<Value, jsonwebtoken::errors::Error> {
    let header = jsonwebtoken::decode_header(token)?;
    assert_eq!(header.alg, Algorithm::EdDSA);
    let kid = header.kid.expect("the token names its key");
    let jwk = set.find(&kid).expect("the JWKS lists the token's key");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&["https://otp.example.com"]);
    validation.set_audience(&["signup-backend"]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &validation)?;
    Ok(data.claims)
}

#[tokio::test]
async fn a_verify_token_checks_against_the_jwks_with_its_claims() {
    let app = app_signing_with(&[("2026-12", 7), ("2026-06", 9)]).await;
    let (token, vid) = verified_token(&app, PHONE).await;
    let set = jwks(&app).await;
    assert_eq!(set.keys.len(), 2, "every configured key is published");
    let claims = check(&token, &set).unwrap();
    assert_eq!(claims["sub"], PHONE);
    assert_eq!(claims["vid"], vid.as_str());
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 120);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // Tampered claims, another audience, or another issuer's key: refused.
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(claims.to_string().replace(PHONE, "+14155550100"));
    parts[1] = &forged;
    assert!(
        check(&parts.join("."), &set).is_err(),
        "a changed sub verifies"
    );
    let mut other_audience = Validation::new(Algorithm::EdDSA);
    other_audience.set_audience(&["someone-else"]);
    let jwk = set.find("2026-12").unwrap();
    let decoded = jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_jwk(jwk).unwrap(),
        &other_audience,
    );
    assert!(decoded.is_err(), "another audience accepts it");
    let stranger = app_signing_with(&[("2026-12", 8)]).await;
    assert!(
        check(&token, &jwks(&stranger).await).is_err(),
        "another key verifies it"
    );
}

/// Rotation: a token signed by the key now second in the list still verifies, as long as the
/// key is listed; once it is gone, it does not.
#[tokio::test]
async fn a_token_of_the_previous_key_verifies_while_that_key_is_listed() {
    let before = app_signing_with(&[("2026-06", 9)]).await;
    let (old_token, _) = verified_token(&before, PHONE).await;
    let rotated = app_signing_with(&[("2026-12", 7), ("2026-06", 9)]).await;
    assert!(check(&old_token, &jwks(&rotated).await).is_ok());
    let retired = app_signing_with(&[("2026-12", 7)]).await;
    let set = jwks(&retired).await;
    assert!(set.find("2026-06").is_none());
    let (new_token, _) = verified_token(&retired, "+14155550100").await;
    assert!(check(&new_token, &set).is_ok());
}
