//! The real `otp-api` binary: start-up validation and signal handling.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use crate::helpers::{AMQP_URL, REDIS_URL};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn otp_api() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-api"));
    // A clean environment and a directory without .env: only what the test sets counts.
    cmd.env_clear()
        .current_dir(std::env::temp_dir())
        .env("REDIS_URL", REDIS_URL)
        .env("AMQP_URL", AMQP_URL)
        .env(
            "SMS_QUEUE",
            format!("test.sms.{}", uuid::Uuid::new_v4().simple()),
        )
        .env("PORT", "0")
        .env("OTP_HMAC_KEY", KEY)
        .env("JOB_ENCRYPTION_KEY", KEY)
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn missing_or_bad_settings_stop_the_process_naming_the_variable() {
    for (var, value) in [
        ("OTP_HMAC_KEY", None),
        ("OTP_HMAC_KEY", Some("c2hvcnQ=")),
        ("JOB_ENCRYPTION_KEY", Some("not base64!")),
        ("OTP_LENGTH", Some("4")),
        ("OTP_VALIDITY_SECONDS", Some("900")),
        ("ALLOWED_COUNTRIES", Some("US,ZZ")),
        ("PORT", Some("http")),
        ("LOG_FORMAT", Some("xml")),
    ] {
        let mut cmd = otp_api();
        match value {
            Some(v) => cmd.env(var, v),
            None => cmd.env_remove(var),
        };
        let out = cmd.output().await.expect("otp-api runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value:?} was accepted");
        assert!(stderr.contains(var), "{var}: {stderr}");
        if let Some(secret) = value.filter(|_| var.ends_with("KEY")) {
            assert!(!stderr.contains(secret), "a secret was echoed: {stderr}");
        }
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_gracefully() {
    let mut child = otp_api()
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .spawn()
        .expect("otp-api starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("otp-api listening") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(listening, "otp-api did not start");
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops within the grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push_str(&line);
    }
    assert!(rest.contains("otp-api stopped"), "{rest}");
}
