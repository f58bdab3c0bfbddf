//! The self-probe behind `otp-api healthcheck` and `otp-dispatcher healthcheck`: container
//! images carry no curl, so the binary asks its own readiness endpoint.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

/// How long `healthcheck` waits for the readiness endpoint.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// GETs `path` on 127.0.0.1:`port` and returns the HTTP status, within `timeout`.
pub fn http_status(port: u16, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = [0u8; 32];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut head[read..])?;
        if n == 0 {
            break;
        }
        read += n;
    }
    std::str::from_utf8(&head[..read])
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// Runs the probe for a `healthcheck` subcommand: prints the outcome, returns the exit code
/// (0 ready, 1 not).
pub fn healthcheck(port: u16) -> std::process::ExitCode {
    match http_status(port, "/readyz", PROBE_TIMEOUT) {
        Ok(200) => {
            println!("ready");
            std::process::ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("not ready: /readyz answered {status}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            println!("not ready: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
