//! Losing RabbitMQ nodes (tools/rabbitmq-cluster.sh: rabbit1..3@localhost on ports 5673..5675):
//! first the node the API is connected to, then the dispatchers' node.

use std::time::{Duration, Instant};

use otp_testkit::Cleanup;

use crate::support::{Load, Plivo, Stack, assert_exactly_once, cluster};

const SCRIPT: &str = "rabbitmq-cluster.sh";
const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// How long after a node is down a request may still get 503: loss detection (at most 500 ms),
/// the reconnect backoff, the election of new queue leaders on the nodes left (a few seconds
/// for the queues the lost node led), and one publish confirm timeout (2 s).
const RECONNECT_GRACE: Duration = Duration::from_secs(8);

/// The cluster's AMQP URL with its nodes in this order (1..=3).
fn nodes(order: [u16; 3]) -> String {
    let urls: Vec<String> = order
        .iter()
        .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5672 + n))
        .collect();
    urls.join(",")
}

/// The nodes (1..=3) that hold connections named `name`.
async fn nodes_of(name: &str) -> Vec<u16> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "-n", "rabbit1@localhost", "list_connections"])
        .args(["--no-table-headers", "port", "client_properties"])
        .output()
        .await
        .expect("rabbitmqctl runs");
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| line.split_whitespace().next()?.parse::<u16>().ok())
        .map(|port| port - 5672)
        .collect()
}

/// Stops node `n` and starts it again after `down`; returns the window in which the API may
/// answer 503.
async fn lose_node(n: u16, down: Duration) -> (Instant, Instant) {
    let from = Instant::now();
    cluster(SCRIPT, &["stop-node", &n.to_string()]).await;
    let stopped = Instant::now();
    tokio::time::sleep(down).await;
    cluster(SCRIPT, &["start-node", &n.to_string()]).await;
    (from, stopped + RECONNECT_GRACE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local RabbitMQ cluster: tools/test.sh --cluster starts it"]
async fn losing_a_rabbitmq_node_loses_and_duplicates_no_sms() {
    let mut stack = Stack::new(REDIS_URL);
    // Node 3 stays up throughout.
    stack.broker_node = Some("rabbit3@localhost".into());
    let _cleanup = Cleanup {
        redis_url: REDIS_URL.into(),
        key_prefix: stack.prefix.clone(),
        amqp_url: nodes([1, 2, 3]),
        queue: stack.queue.clone(),
    };
    let plivo = Plivo::start().await;
    let running = stack
        .start(&nodes([1, 2, 3]), &nodes([2, 3, 1]), &plivo)
        .await;
    assert_eq!(nodes_of("otp-api").await, [1], "the API starts on node 1");
    assert_eq!(nodes_of("otp-dispatcher").await, [2, 2]);

    let load = Load::start(&running.base, 40);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api_node_lost = lose_node(1, Duration::from_secs(5)).await;
    let api_moved_to = nodes_of("otp-api").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dispatcher_node_lost = lose_node(2, Duration::from_secs(5)).await;
    let dispatchers_moved_to = nodes_of("otp-dispatcher").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;

    assert!(
        !api_moved_to.is_empty() && !api_moved_to.contains(&1),
        "the API reconnected to another node by itself: {api_moved_to:?}"
    );
    assert!(
        dispatchers_moved_to.len() == 2 && !dispatchers_moved_to.contains(&2),
        "both dispatchers reconnected to another node by themselves: {dispatchers_moved_to:?}"
    );
    let windows = [api_node_lost, dispatcher_node_lost];
    let (accepted, unavailable) = assert_exactly_once(&stack, &outcomes, &plivo, &windows).await;
    // The service kept working through the drill, not only before it.
    let last_window_end = dispatcher_node_lost.1;
    assert!(
        outcomes
            .iter()
            .any(|o| o.status == Some(202) && o.at > last_window_end),
        "requests were accepted again after the last node loss"
    );
    println!(
        "rabbitmq drill: {} requests, {accepted} accepted and sent exactly once, {unavailable} answered 503",
        outcomes.len()
    );
}
