//! rediss://: the API runs against a real Redis that speaks only TLS, started here on a free
//! port with a CA and server certificate made for this test (REDIS_TLS_CA_FILE trusts the CA).

use std::{net::TcpListener, path::Path, process::Command, time::Duration};

use crate::helpers::{PHONE, spawn_with};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (tools/services.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate for 127.0.0.1 signed by it.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=otp-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
}

/// A TLS-only redis-server, killed when dropped.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis(dir: &Path) -> TlsRedis {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string()])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts");
    TlsRedis { child, port }
}

#[tokio::test]
async fn the_api_works_over_rediss_with_its_certificate_verified() {
    let dir = std::env::temp_dir().join(format!("otp-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let redis = start_tls_redis(&dir);
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let listening = otp_testkit::eventually(Duration::from_secs(5), || async {
        std::net::TcpStream::connect(("127.0.0.1", redis.port)).is_ok()
    });
    assert!(listening.await, "the TLS Redis did not start");

    let ca = dir.join("ca.pem");
    let app = spawn_with(|c| {
        c.redis.redis_url = Some(url.clone().into());
        c.redis.redis_cluster = false;
        c.redis.redis_tls_ca_file = Some(ca.clone());
    })
    .await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    let code = app.issue_code(PHONE).await;
    assert_eq!(app.verify(PHONE, &code).await.status(), 200);

    // Without the CA the server's certificate is not trusted: Redis counts as down.
    let untrusting = crate::helpers::spawn_unready(|c| {
        c.redis.redis_url = Some(url.clone().into());
        c.redis.redis_cluster = false;
    })
    .await;
    assert_eq!(untrusting.get("/readyz").await.status(), 503);
    assert_eq!(untrusting.request_otp(PHONE).await.status(), 503);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
