//! The real fake-plivo binary answers a CAPTCHA provider's siteverify for local runs: the
//! token `pass` passes, anything else fails.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One HTTP/1.1 POST of a form to `port`; the whole answer.
async fn post_form(port: u16, path: &str, form: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    Some(answer)
}

#[tokio::test]
async fn siteverify_passes_the_token_pass_only() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _fake = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-plivo"))
        .env_clear()
        .env("FAKE_PLIVO_PORT", port.to_string())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut answer = None;
    for _ in 0..100 {
        answer = post_form(
            port,
            "/siteverify",
            "secret=s&response=pass&remoteip=203.0.113.7",
        )
        .await;
        if answer.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let passed = answer.expect("fake-plivo answers");
    assert!(passed.starts_with("HTTP/1.1 200"), "{passed}");
    assert!(passed.contains("\"success\":true"), "{passed}");
    let failed = post_form(port, "/siteverify", "secret=s&response=nope")
        .await
        .unwrap();
    assert!(failed.contains("\"success\":false"), "{failed}");
}
