//! The signup demo (`examples/signup/`, served at `/demo` in development), driven in headless
//! Chromium through chromedriver against the real `otp-api --embedded`: type a number, read the
//! code the console sink prints, type it, and see "verified" with the number as the token's
//! `sub`. A failure saves a screenshot to `target/demo-failure.png`.

use std::{process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::Command;

use crate::helpers::PHONE;

/// chromedriver on a free port; killed with the test.
async fn chromedriver() -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver runs (tools/services.sh installs chromium-driver)");
    let url = format!("http://127.0.0.1:{port}");
    let up = otp_testkit::eventually(Duration::from_secs(15), || async {
        reqwest::get(format!("{url}/status")).await.is_ok()
    });
    assert!(up.await, "chromedriver did not come up");
    (child, url)
}

async fn browser(webdriver: &str) -> Client {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(webdriver)
        .await
        .expect("a headless Chromium session")
}

#[tokio::test]
async fn the_signup_page_verifies_a_number_in_a_real_browser() {
    let mut api = crate::process::embedded_api();
    api.arg("--embedded");
    let (_api, mut lines, port) = crate::process::start_logged(&mut api).await;
    let (_driver, webdriver) = chromedriver().await;
    let browser = browser(&webdriver).await;

    let run = async {
        browser
            .goto(&format!("http://127.0.0.1:{port}/demo"))
            .await?;
        browser
            .find(Locator::Id("phone"))
            .await?
            .send_keys(PHONE)
            .await?;
        browser.find(Locator::Id("send")).await?.click().await?;
        // The code, as the console sink prints it: `[console SMS …] … <code>`.
        let code = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("[console SMS") {
                    return line.rsplit(' ').next().unwrap_or_default().to_owned();
                }
            }
            String::new()
        })
        .await
        .unwrap_or_default();
        assert_eq!(code.len(), 6, "no code printed");
        let field = browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#code-form:not([hidden]) #code"))
            .await?;
        assert_eq!(
            field.attr("autocomplete").await?.as_deref(),
            Some("one-time-code")
        );
        field.send_keys(&code).await?;
        browser.find(Locator::Id("verify")).await?.click().await?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#result:not([hidden])"))
            .await?;
        let verified = browser.find(Locator::Id("verified")).await?.text().await?;
        let sub = browser.find(Locator::Id("sub")).await?.text().await?;
        let signature = browser.find(Locator::Id("signature")).await?.text().await?;
        Ok::<_, fantoccini::error::CmdError>((verified, sub, signature))
    };
    let outcome = run.await;
    if outcome.is_err()
        && let Ok(png) = browser.screenshot().await
    {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/demo-failure.png");
        let _ = std::fs::write(path, png);
    }
    let _ = browser.close().await;
    let (verified, sub, signature) = outcome.expect("the page verified the number");
    assert_eq!(verified, "verified");
    assert_eq!(sub, PHONE);
    // The page checked the token's Ed25519 signature against the JWKS itself (WebCrypto).
    assert!(signature.starts_with("valid"), "{signature}");
}
