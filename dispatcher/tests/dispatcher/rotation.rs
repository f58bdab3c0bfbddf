//! Key rotation loses no code and no job: a code issued and a job sealed under key 1 still
//! verify and send after both services restart with `2:<new>,1:<old>`, and new codes use key 2.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};
use wiremock::MockServer;

use otp_api::config::HmacKey;
use otp_shared::crypto::JobKey;
use otp_testkit::{eventually, wait_for};

use crate::{
    end_to_end::{api_config, spawn_api_with},
    helpers::{World, accepted, plivo_call, spawn_dispatcher, wait_api_ready},
};

fn ring(entries: &[(u32, u8)]) -> String {
    entries
        .iter()
        .map(|(id, seed)| {
            let key: Vec<u8> = (0..32u8)
                .map(|i| i.wrapping_mul(97) ^ seed.wrapping_mul(31))
                .collect();
            format!("{id}:{}", STANDARD.encode(key))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The codes the fake provider received, by destination.
async fn sms_code(plivo: &MockServer, dst: &str) -> Option<String> {
    plivo.received_requests().await?.iter().rev().find_map(|r| {
        let body: Value = serde_json::from_slice(&r.body).ok()?;
        (body["dst"] == dst).then(|| {
            body["text"]
                .as_str()
                .unwrap()
                .chars()
                .filter(char::is_ascii_digit)
                .collect()
        })
    })
}

async fn wait_for_sms(plivo: &MockServer, dst: &str) -> String {
    let code = wait_for(Duration::from_secs(5), || sms_code(plivo, dst));
    code.await.unwrap_or_else(|| panic!("no SMS to {dst}"))
}

#[tokio::test]
async fn codes_and_jobs_from_the_old_key_survive_a_rotation() {
    let plivo = MockServer::start().await;
    plivo_call()
        .respond_with(accepted("rot"))
        .expect(2)
        .mount(&plivo)
        .await;
    let world = World::new().await;
    let http = reqwest::Client::new();
    let old = "+14155550170";
    let new = "+14155550171";

    // Before: key 1 only. The API issues a code; no dispatcher runs, so its job waits, sealed.
    let mut before = api_config(&world);
    before.otp.otp_hmac_key = HmacKey::from_base64(&ring(&[(1, 1)])).unwrap();
    before.otp.job_encryption_key = JobKey::from_base64(&ring(&[(1, 11)])).unwrap();
    let (base, stop) = spawn_api_with(before).await;
    wait_api_ready(&http, &base).await;
    let resp = http
        .post(format!("{base}/api/otp/request"))
        .json(&json!({ "phoneNumber": old }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let old_vid = resp.json::<Value>().await.unwrap()["verificationId"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(stop);
    let stopped = eventually(Duration::from_secs(5), || async {
        http.get(format!("{base}/healthz")).send().await.is_err()
    });
    assert!(stopped.await, "the first API did not stop");

    // After: both services restart with the new key first and the old one still listed.
    let mut after = api_config(&world);
    after.otp.otp_hmac_key = HmacKey::from_base64(&ring(&[(2, 2), (1, 1)])).unwrap();
    after.otp.job_encryption_key = JobKey::from_base64(&ring(&[(2, 22), (1, 11)])).unwrap();
    let mut dispatcher_config = world.config(&plivo.uri());
    dispatcher_config.job_encryption_key = after.otp.job_encryption_key.clone();
    let _dispatcher = spawn_dispatcher(dispatcher_config).await;
    let (base, _stop) = spawn_api_with(after).await;
    wait_api_ready(&http, &base).await;

    // The job sealed under key 1 is sent, and its code (digest under key 1) verifies.
    let code = wait_for_sms(&plivo, old).await;
    let verify = json!({ "phoneNumber": old, "otp": code, "verificationId": old_vid });
    let resp = http
        .post(format!("{base}/api/otp/verify"))
        .json(&verify)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // New codes use key 2: the stored digest names it, and the job's envelope too.
    let resp = http
        .post(format!("{base}/api/otp/request"))
        .json(&json!({ "phoneNumber": new }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let digest: String = redis::cmd("HGET")
        .arg(world.keys().code(new))
        .arg("digest")
        .query_async(&mut world.redis.clone())
        .await
        .unwrap();
    assert!(digest.starts_with("2:"), "{digest}");
    let code = wait_for_sms(&plivo, new).await;
    let verify = json!({ "phoneNumber": new, "otp": code });
    let resp = http
        .post(format!("{base}/api/otp/verify"))
        .json(&verify)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    plivo.verify().await;
}
