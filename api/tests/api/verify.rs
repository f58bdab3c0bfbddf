use std::time::Duration;

use serde_json::json;

use crate::helpers::{PHONE, assert_error, spawn_app, spawn_with};

fn wrong(code: &str) -> String {
    let last = code.as_bytes()[code.len() - 1];
    let flipped = if last == b'9' {
        '0'
    } else {
        char::from(last + 1)
    };
    format!("{}{flipped}", &code[..code.len() - 1])
}

#[tokio::test]
async fn the_right_code_verifies_once() {
    let app = spawn_app().await;
    let code = app.issue_code(PHONE).await;
    let resp = app.verify(PHONE, &code).await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut body: serde_json::Value = resp.json().await.unwrap();
    // The tutorial's fields stay as they were, and a signed token comes beside them (checked
    // in verdict.rs).
    let token = body.as_object_mut().unwrap().remove("token").unwrap();
    assert_eq!(token.as_str().unwrap().split('.').count(), 3, "{token}");
    assert_eq!(
        body,
        json!({"success": true, "message": "OTP verified successfully."})
    );
    assert_error(app.verify(PHONE, &code).await, 400, "INVALID_OTP").await;
}

#[tokio::test]
async fn every_failure_looks_the_same() {
    let app = spawn_app().await;
    let never = app.verify("+14155550100", "123456").await;
    let status = never.status();
    let never: serde_json::Value = never.json().await.unwrap();
    let code = app.issue_code(PHONE).await;
    let wrong_code = app.verify(PHONE, &wrong(&code)).await;
    assert_eq!(wrong_code.status(), status);
    assert_eq!(wrong_code.json::<serde_json::Value>().await.unwrap(), never);
    assert_eq!(
        never,
        json!({"success": false, "code": "INVALID_OTP", "message": "Invalid or expired OTP."})
    );
    // Malformed codes get the same answer too.
    for otp in ["12345", "1234567", "12345a", "١٢٣٤٥٦"] {
        assert_error(app.verify(PHONE, otp).await, 400, "INVALID_OTP").await;
    }
}

#[tokio::test]
async fn fifty_concurrent_verifies_of_the_right_code_give_exactly_one_success() {
    let app = spawn_app().await;
    let code = app.issue_code(PHONE).await;
    let attempts = (0..50).map(|_| app.verify(PHONE, &code));
    let results = futures_util::future::join_all(attempts).await;
    let ok = results
        .iter()
        .filter(|r| r.status().as_u16() == 200)
        .count();
    let invalid = results
        .iter()
        .filter(|r| r.status().as_u16() == 400)
        .count();
    assert_eq!((ok, invalid), (1, 49));
}

#[tokio::test]
async fn too_many_wrong_tries_void_the_code() {
    let app = spawn_with(|c| c.otp.otp_max_attempts = 3).await;
    let code = app.issue_code(PHONE).await;
    for _ in 0..3 {
        assert_error(app.verify(PHONE, &wrong(&code)).await, 400, "INVALID_OTP").await;
    }
    assert_error(app.verify(PHONE, &code).await, 400, "INVALID_OTP").await;
}

#[tokio::test]
async fn a_new_request_replaces_the_old_code_but_keeps_the_failure_count() {
    let app = spawn_with(|c| c.otp.otp_max_attempts = 3).await;
    let old = app.issue_code(PHONE).await;
    assert_error(app.verify(PHONE, &wrong(&old)).await, 400, "INVALID_OTP").await;
    assert_error(app.verify(PHONE, &wrong(&old)).await, 400, "INVALID_OTP").await;
    let new = app.issue_code(PHONE).await;
    if new != old {
        assert_error(app.verify(PHONE, &old).await, 400, "INVALID_OTP").await;
    } else {
        assert_error(app.verify(PHONE, &wrong(&old)).await, 400, "INVALID_OTP").await;
    }
    // Third failure in total: the new code is void too.
    assert_error(app.verify(PHONE, &new).await, 400, "INVALID_OTP").await;
}

#[tokio::test]
async fn a_replaced_code_stops_working_and_the_new_one_works() {
    let app = spawn_app().await;
    let old = app.issue_code(PHONE).await;
    // A replacement may draw the same six digits (one in a million): draw again until it differs.
    let mut new = app.issue_code(PHONE).await;
    while new == old {
        new = app.issue_code(PHONE).await;
    }
    assert_error(app.verify(PHONE, &old).await, 400, "INVALID_OTP").await;
    assert_eq!(app.verify(PHONE, &new).await.status().as_u16(), 200);
}

#[tokio::test]
async fn an_expired_code_does_not_verify() {
    let app = spawn_with(|c| c.otp.otp_validity_seconds = 1).await;
    let code = app.issue_code(PHONE).await;
    // Redis expiry is what is under test here, not our timing: wait past the TTL.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_error(app.verify(PHONE, &code).await, 400, "INVALID_OTP").await;
}
