//! HTTP details that protect the service: slow and idle clients are cut off, connections are
//! capped, a too-large body gets its 413, a 405 says what is allowed, answers are never cached.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{PHONE, TestApp, assert_error, spawn_with};

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until the peer closes (or `within` passes): what arrived, as text, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let (read, closed) = crate::connections::read_until_closed(stream, within).await;
    (String::from_utf8_lossy(&read).into_owned(), closed)
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_while_others_are_served() {
    let app = spawn_with(|c| c.http.header_read_timeout_seconds = 2).await;
    let mut slow = connect(&app).await;
    let started = Instant::now();
    let trickle = async {
        for byte in b"POST /api/otp/request HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaa" {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
            if started.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
    };
    let served = async {
        // Meanwhile ordinary requests are answered.
        for _ in 0..3 {
            assert_eq!(app.get("/healthz").await.status(), 200);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let (_, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), trickle),
        served
    );
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(2)).await;
    assert!(closed, "the slow client still holds its connection");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_client_trickling_its_body_gets_408() {
    let app = spawn_with(|c| c.http.body_read_timeout_seconds = 1).await;
    let mut slow = connect(&app).await;
    slow.write_all(
        b"POST /api/otp/request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{",
    )
    .await
    .unwrap();
    let (answer, _) = read_until_closed(&mut slow, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = spawn_with(|c| c.http.keep_alive_timeout_seconds = 1).await;
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle connection stayed open");
}

/// A raw keep-alive connection that has been served once (so it holds a slot).
async fn served_connection(app: &TestApp) -> TcpStream {
    let mut stream = connect(app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .expect("served")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    stream
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let app = spawn_with(|c| {
        c.http.max_connections = 2;
        c.http.keep_alive_timeout_seconds = 2;
    })
    .await;
    // Let the test client's pooled connection idle out, so only ours hold slots.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let first = served_connection(&app).await;
    let _second = served_connection(&app).await;
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let url = format!("{}/healthz", app.base);
    let third = tokio::time::timeout(Duration::from_millis(700), fresh().get(&url).send()).await;
    assert!(
        third.is_err(),
        "a third connection was served beyond MAX_CONNECTIONS=2"
    );
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), fresh().get(&url).send()).await;
    assert_eq!(
        served
            .expect("served once a slot was free")
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_large_body_sent_without_expect_gets_its_413() {
    let app = spawn_with(|_| {}).await;
    let mut client = connect(&app).await;
    let body = vec![b'x'; 1024 * 1024];
    let head = format!(
        "POST /api/otp/request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client
        .write_all(&body)
        .await
        .expect("the server read the whole body");
    let (answer, _) = read_until_closed(&mut client, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("PAYLOAD_TOO_LARGE"));
}

#[tokio::test]
async fn a_405_says_what_is_allowed_and_nothing_is_cached() {
    let app = spawn_with(|_| {}).await;
    let resp = app.get("/api/otp/request").await;
    assert_eq!(resp.headers()["allow"], "POST");
    assert_error(resp, 405, "METHOD_NOT_ALLOWED").await;
    let resp = app
        .client
        .delete(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET");
    let resp = app.get("/api/otp/callbacks/plivo").await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    for resp in [
        app.request_otp(PHONE).await,
        app.verify(PHONE, "123456").await,
    ] {
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    }
}
