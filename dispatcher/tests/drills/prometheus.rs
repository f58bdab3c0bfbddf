//! The alert rules and the dashboard on a real Prometheus (the distribution's `prometheus`,
//! which tools/services.sh installs): it scrapes one real otp-api and two real otp-dispatchers
//! under steady load, with the shipped rules (deploy/prometheus/alerts.yml) evaluated every
//! second. The fake provider goes down: OtpProviderBreakerOpen must fire; it comes back: the
//! alert must resolve. Then every query of the Grafana dashboard (deploy/grafana/) runs against
//! this Prometheus: each must parse and run, and the core panels must return series.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::process::{Child, Command};

use otp_testkit::{Cleanup, SINGLE_REDIS_URL};

use crate::support::{Load, Plivo, Stack, eventually, free_port};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const ALERT: &str = "OtpProviderBreakerOpen";
/// Panels that must show data in a stack that serves requests (by title): the core ones, and
/// the budget, which this drill configures.
const CORE_PANELS: [&str; 7] = [
    "Requests by route and status",
    "Codes issued, sent and delivered",
    "Queue depth",
    "Provider latency p99",
    "Provider answers by class",
    "Breaker state (0 closed, 1 open, 2 half-open)",
    "Send budget used this hour",
];

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Prometheus on a free loopback port, scraping `api` and `dispatchers` every second and
/// evaluating the shipped rules every second; killed when dropped.
async fn prometheus(dir: &std::path::Path, api: u16, dispatchers: [u16; 2]) -> (Child, String) {
    let rules = repository().join("deploy/prometheus/alerts.yml");
    let config = format!(
        "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
         rule_files: [{rules:?}]\n\
         scrape_configs:\n\
         \x20 - job_name: otp-api\n\
         \x20   static_configs: [{{ targets: ['127.0.0.1:{api}'] }}]\n\
         \x20 - job_name: otp-dispatcher\n\
         \x20   static_configs: [{{ targets: ['127.0.0.1:{}', '127.0.0.1:{}'] }}]\n",
        dispatchers[0], dispatchers[1]
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts (tools/services.sh installs it)");
    (child, format!("http://127.0.0.1:{port}"))
}

/// The `data` of a Prometheus API answer; panics unless its status is `success`.
async fn api(http: &reqwest::Client, url: String) -> Value {
    let body: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "success", "{url}: {body}");
    body["data"].clone()
}

async fn query(http: &reqwest::Client, prometheus: &str, expr: &str) -> Vec<Value> {
    let url =
        reqwest::Url::parse_with_params(&format!("{prometheus}/api/v1/query"), [("query", expr)])
            .unwrap();
    let data = api(http, url.to_string()).await;
    data["result"].as_array().cloned().unwrap_or_default()
}

/// The state of the breaker alert for plivo (`pending`, `firing`), or `None` when inactive.
async fn alert_state(http: &reqwest::Client, prometheus: &str) -> Option<String> {
    let data = api(http, format!("{prometheus}/api/v1/alerts")).await;
    data["alerts"].as_array().unwrap().iter().find_map(|alert| {
        let labels = &alert["labels"];
        (labels["alertname"] == ALERT && labels["provider"] == "plivo")
            .then(|| alert["state"].as_str().unwrap().to_owned())
    })
}

#[tokio::test]
#[ignore = "starts Prometheus and the real binaries; tools/test.sh runs it"]
async fn the_breaker_alert_fires_and_resolves_and_the_dashboard_queries_run() {
    let plivo = Plivo::start().await;
    let mut stack = Stack::new(SINGLE_REDIS_URL);
    // A short cooldown: once the provider is back, the next probe closes the breaker.
    // Budgets and the fraud guard's monitor mode, so their panels have series to show.
    stack.env = [
        ("BREAKER_COOLDOWN_SECONDS", "3"),
        ("RETRY_MIN_DELAY_MS", "50"),
        ("RETRY_MAX_DELAY_MS", "200"),
        ("MAX_SENDS_PER_HOUR", "1000000"),
        ("MAX_SENDS_PER_COUNTRY_PER_HOUR", "US=1000000"),
        ("FRAUD_GUARD", "monitor"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    let _cleanup = Cleanup {
        redis_url: SINGLE_REDIS_URL.into(),
        key_prefix: stack.prefix.clone(),
        amqp_url: AMQP_URL.into(),
        queue: stack.queue.clone(),
    };
    let (_api, base) = stack.api(AMQP_URL).await;
    let ports = [free_port(), free_port()];
    let _dispatchers = [
        stack.dispatcher_on(ports[0], AMQP_URL, &plivo.uri()).await,
        stack.dispatcher_on(ports[1], AMQP_URL, &plivo.uri()).await,
    ];
    let api_port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let dir = std::env::temp_dir().join(format!("otp-prometheus-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_prometheus, prometheus) = prometheus(&dir, api_port, ports).await;
    let http = reqwest::Client::new();
    let load = Load::start(&base, 20);

    // Every target scraped, and SMS going out.
    let healthy = eventually(Duration::from_secs(60), || async {
        let api = reqwest::get(format!("{prometheus}/-/ready")).await;
        if !api.is_ok_and(|r| r.status().is_success()) {
            return false;
        }
        let up = query(&http, &prometheus, "sum(up)").await;
        let sent = query(&http, &prometheus, "sum(otp_sends_total)").await;
        let value = |result: &[Value]| {
            result.first().map_or(0.0, |r| {
                r["value"][1].as_str().unwrap().parse::<f64>().unwrap()
            })
        };
        value(&up) == 3.0 && value(&sent) > 0.0
    });
    assert!(
        healthy.await,
        "Prometheus does not see three targets sending"
    );
    assert_eq!(alert_state(&http, &prometheus).await, None);

    // The provider goes down: the breaker opens, and after its minute the alert fires.
    plivo.set_down(true);
    let fired = eventually(Duration::from_secs(150), || async {
        alert_state(&http, &prometheus).await.as_deref() == Some("firing")
    });
    assert!(fired.await, "{ALERT} did not fire");

    // Every dashboard query runs against this Prometheus; the core panels show series.
    let dashboard =
        std::fs::read_to_string(repository().join("deploy/grafana/dashboards/otp.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut empty_core = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let mut series = 0;
        for target in panel["targets"].as_array().unwrap() {
            // What Grafana substitutes for its interval variable.
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            series += query(&http, &prometheus, &expr).await.len();
        }
        // The panel's evaluation, for the record (`--nocapture`).
        eprintln!("panel {title:?}: {series} series");
        if CORE_PANELS.contains(&title) && series == 0 {
            empty_core.push(title);
        }
    }
    assert!(
        empty_core.is_empty(),
        "core panels without data: {empty_core:?}"
    );
    for title in CORE_PANELS {
        assert!(
            panels.iter().any(|p| p["title"] == title),
            "the dashboard has no panel {title:?}"
        );
    }

    // The provider comes back: the breaker closes, and the alert resolves.
    plivo.set_down(false);
    let resolved = eventually(Duration::from_secs(90), || async {
        alert_state(&http, &prometheus).await.is_none()
    });
    assert!(resolved.await, "{ALERT} did not resolve");
    load.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
