//! The real `otp-dispatcher` binary: start-up validation and SIGTERM.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use crate::helpers::World;

fn otp_dispatcher(world: &World) -> Command {
    // Nothing is sent in these tests: the provider address is a closed port.
    world.process("http://127.0.0.1:9")
}

#[tokio::test]
async fn bad_settings_stop_the_process_naming_the_variable() {
    let world = World::new().await;
    for (var, value) in [
        ("PLIVO_AUTH_TOKEN", None),
        ("JOB_ENCRYPTION_KEY", Some("c2hvcnQ=")),
        ("PLIVO_SENDER_NUMBER", Some("+1")),
        ("SMS_MAX_RPS", Some("0")),
        ("PLIVO_MAX_RPS", Some("0")),
        ("DISPATCHER_CONCURRENCY", Some("lots")),
    ] {
        let mut cmd = otp_dispatcher(&world);
        match value {
            Some(v) => cmd.env(var, v),
            None => cmd.env_remove(var),
        };
        let out = cmd.output().await.expect("otp-dispatcher runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value:?} was accepted");
        assert!(stderr.contains(var), "{var}: {stderr}");
        assert!(
            !stderr.contains("c2hvcnQ="),
            "a secret was echoed: {stderr}"
        );
    }
}

#[tokio::test]
async fn production_refuses_plain_http_to_another_host_and_weak_keys() {
    let world = World::new().await;
    let strong = "ZMRZ8+3uYnNyHVnVirnb0ZrbiLjoLe3uOZqreeRILZ4=";
    for (url, key, var) in [
        ("http://plivo.example.com", strong, "PLIVO_BASE_URL"),
        (
            "https://api.plivo.com",
            otp_shared::keyring::EXAMPLE_KEYS[1],
            "JOB_ENCRYPTION_KEY",
        ),
    ] {
        let out = world
            .process(url)
            .env_remove("APP_ENV")
            .env("JOB_ENCRYPTION_KEY", key)
            .output()
            .await
            .expect("otp-dispatcher runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: started");
        assert!(stderr.contains(var), "{var}: {stderr}");
        assert!(!stderr.contains(key));
    }
}

/// Also: an old setting name (PLIVO_MAX_RPS) still starts the dispatcher, with one warning.
#[tokio::test]
async fn sigterm_stops_the_dispatcher_cleanly() {
    let world = World::new().await;
    let mut child = otp_dispatcher(&world)
        .env("PLIVO_MAX_RPS", "100")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut start = Vec::new();
    let consuming = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("consuming");
            start.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(consuming, "otp-dispatcher did not start consuming");
    let deprecated: Vec<_> = start
        .iter()
        .filter(|l| l.contains("PLIVO_MAX_RPS is deprecated") && l.contains("SMS_MAX_RPS"))
        .collect();
    assert_eq!(deprecated.len(), 1, "{start:#?}");
    assert!(deprecated[0].contains("WARN"), "{}", deprecated[0]);
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within the grace period")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push_str(&line);
    }
    assert!(rest.contains("otp-dispatcher stopped"), "{rest}");
}

#[tokio::test]
async fn healthcheck_exits_0_only_when_the_dispatcher_is_ready() {
    let plivo = wiremock::MockServer::start().await;
    let (world, running) = crate::helpers::start(&plivo).await;
    let probe = |port: u16| {
        let mut cmd = otp_dispatcher(&world);
        cmd.arg("healthcheck")
            .env("DISPATCHER_HTTP_PORT", port.to_string());
        cmd
    };
    let ready = probe(running.health.port()).output().await.unwrap();
    assert!(ready.status.success(), "{ready:?}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = probe(closed).output().await.unwrap();
    assert_eq!(down.status.code(), Some(1), "{down:?}");
}

/// A secret set through `<NAME>_FILE` (the file's contents, trimmed) starts the dispatcher, the
/// way a mounted Kubernetes or Docker secret does; setting both is refused, naming both.
#[tokio::test]
async fn secrets_can_come_from_files() {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let world = World::new().await;
    let dir = std::env::temp_dir().join(format!("otp-secrets-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("job-key");
    std::fs::write(&key_file, format!("{}\n", STANDARD.encode([42u8; 32]))).unwrap();

    let mut child = otp_dispatcher(&world)
        .env_remove("JOB_ENCRYPTION_KEY")
        .env("JOB_ENCRYPTION_KEY_FILE", &key_file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let consuming = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("consuming") {
                return true;
            }
        }
        false
    });
    assert!(consuming.await.unwrap_or(false), "it did not start");
    child.kill().await.unwrap();

    let out = otp_dispatcher(&world)
        .env("JOB_ENCRYPTION_KEY_FILE", &key_file)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("JOB_ENCRYPTION_KEY and JOB_ENCRYPTION_KEY_FILE are both set"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `config check` prints the effective settings with the secrets redacted, and every error.
#[tokio::test]
async fn config_check_lists_every_error_and_shows_no_secret() {
    let world = World::new().await;
    let good = otp_dispatcher(&world)
        .args(["config", "check"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr),
    );
    assert!(good.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("SMS_QUEUE={}", world.queue)),
        "{stdout}"
    );
    assert!(stdout.contains("PLIVO_AUTH_TOKEN=<redacted>"), "{stdout}");
    assert!(
        stdout.contains("DISPATCHER_CONCURRENCY=64 (default)"),
        "{stdout}"
    );
    assert!(!stdout.contains(crate::helpers::AUTH_TOKEN), "{stdout}");

    let bad = otp_dispatcher(&world)
        .args(["config", "check"])
        .env("SMS_MAX_RPS", "many")
        .env("DISPATCHER_CONCURRENCY", "lots")
        .env("JOB_ENCRYPTION_KEY", "c2hvcnQ=")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    for var in [
        "SMS_MAX_RPS",
        "DISPATCHER_CONCURRENCY",
        "JOB_ENCRYPTION_KEY",
    ] {
        assert!(stderr.contains(var), "{var} is not listed: {stderr}");
    }
    assert!(stderr.contains("3 error(s)"), "{stderr}");
    assert!(
        !stderr.contains("c2hvcnQ="),
        "a secret was echoed: {stderr}"
    );
}
