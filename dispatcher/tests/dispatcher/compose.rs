//! No Docker engine runs on the development machines, so docker-compose.yml and the Dockerfile
//! are guarded by parsing them: services, builds and targets, healthchecks, no host port on the
//! dispatcher, and every environment name documented and read by some binary.

use std::collections::BTreeSet;

use clap::CommandFactory;
use serde_yaml_ng::Value;

const COMPOSE: &str = include_str!("../../../docker-compose.yml");
const DOCKERFILE: &str = include_str!("../../../Dockerfile");
const ENV_EXAMPLE: &str = include_str!("../../../.env.example");
const FAKE_PLIVO: &str = include_str!("../../../tools/fake-plivo/src/main.rs");

/// Variables both binaries read outside clap: the OpenTelemetry SDK's, and the log filter.
const OTEL_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_ENDPOINT", "RUST_LOG"];

fn compose() -> Value {
    let mut doc: Value = serde_yaml_ng::from_str(COMPOSE).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("merge keys resolve");
    doc
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["services"]
        .get(name)
        .unwrap_or_else(|| panic!("service {name} is missing"))
}

/// The variables one binary's settings read (clap), and the OpenTelemetry SDK's.
pub fn read_by(command: clap::Command) -> BTreeSet<String> {
    let files = otp_shared::settings::secrets(&command)
        .into_iter()
        .map(|(var, _)| otp_shared::settings::file_variable(&var));
    let mut vars: BTreeSet<String> = files.collect();
    vars.extend(
        command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned()),
    );
    vars.extend(OTEL_VARS.iter().map(|v| v.to_string()));
    vars
}

/// Every variable some binary reads: clap settings of both services, fake-plivo's (from its
/// source), and the OpenTelemetry SDK's.
fn read_by_a_binary() -> BTreeSet<String> {
    let mut vars = read_by(otp_api::config::Config::command());
    vars.extend(read_by(otp_dispatcher::config::Config::command()));
    for part in FAKE_PLIVO.split("env = \"").skip(1) {
        vars.insert(part.split('"').next().unwrap().to_owned());
    }
    vars
}

fn documented() -> BTreeSet<String> {
    ENV_EXAMPLE
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('#').trim().split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
        })
        .collect()
}

#[test]
fn the_compose_stack_scales_has_healthchecks_and_starts_in_order() {
    let doc = compose();
    for name in [
        "redis",
        "rabbitmq",
        "fake-plivo",
        "jaeger",
        "prometheus",
        "grafana",
        "api",
        "dispatcher",
    ] {
        service(&doc, name);
    }
    let target = |name: &str| {
        service(&doc, name)["build"]["target"]
            .as_str()
            .map(str::to_owned)
    };
    // One service builds each image; the others run it, so a clean machine's parallel build
    // does not build one tag twice.
    assert_eq!(target("api").as_deref(), Some("runtime"));
    assert_eq!(target("dispatcher"), None);
    assert_eq!(
        service(&doc, "dispatcher")["image"],
        service(&doc, "api")["image"]
    );
    assert_eq!(
        service(&doc, "dispatcher")["pull_policy"].as_str(),
        Some("never")
    );
    assert_eq!(target("fake-plivo").as_deref(), Some("fake-plivo"));

    let services = doc["services"].as_mapping().unwrap();
    for (name, svc) in services {
        let restart = svc["restart"].as_str();
        assert_eq!(
            restart,
            Some("unless-stopped"),
            "{name:?} has a restart policy"
        );
        // Published on loopback only: nothing of the stack is reachable from the network.
        for port in svc["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(port.starts_with("127.0.0.1:"), "{name:?} publishes {port}");
        }
    }
    // A supported RabbitMQ (4.x), whose queue defaults the topology sets explicitly.
    let rabbitmq = service(&doc, "rabbitmq")["image"].as_str().unwrap();
    assert!(rabbitmq.starts_with("rabbitmq:4."), "{rabbitmq}");
    // Grafana gets the dashboard and its data source from deploy/grafana/.
    let volumes: Vec<&str> = service(&doc, "grafana")["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for dir in [
        "./deploy/grafana/provisioning:",
        "./deploy/grafana/dashboards:",
    ] {
        assert!(volumes.iter().any(|v| v.starts_with(dir)), "{volumes:?}");
    }

    let dispatcher = service(&doc, "dispatcher");
    assert!(
        dispatcher.get("ports").is_none(),
        "the dispatcher must map no host port"
    );
    for (name, probe) in [
        ("api", "otp-api"),
        ("dispatcher", "otp-dispatcher"),
        ("fake-plivo", "fake-plivo"),
    ] {
        let test = &service(&doc, name)["healthcheck"]["test"];
        let words: Vec<&str> = test
            .as_sequence()
            .expect(name)
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(words, ["CMD", probe, "healthcheck"], "{name}");
    }
    let condition = |svc: &str, dep: &str| {
        service(&doc, svc)["depends_on"][dep]["condition"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(condition("dispatcher", "fake-plivo"), "service_healthy");
    for svc in ["api", "dispatcher"] {
        assert_eq!(condition(svc, "redis"), "service_healthy");
        assert_eq!(condition(svc, "rabbitmq"), "service_healthy");
        let grace = service(&doc, svc)["stop_grace_period"]
            .as_str()
            .unwrap_or("0s");
        let grace: u64 = grace.trim_end_matches('s').parse().unwrap();
        assert!(
            grace > 15,
            "{svc}: stop_grace_period must exceed DRAIN_SECONDS + SHUTDOWN_GRACE_SECONDS (5 + 10)"
        );
        let env = &service(&doc, svc)["environment"];
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(),
            Some("http://jaeger:4318")
        );
    }
}

#[test]
fn every_compose_variable_is_documented_and_read_by_a_binary() {
    let doc = compose();
    let (read, documented) = (read_by_a_binary(), documented());
    for name in ["api", "dispatcher", "fake-plivo"] {
        let env = service(&doc, name)["environment"].as_mapping().expect(name);
        for key in env.keys().filter_map(Value::as_str) {
            assert!(
                documented.contains(key),
                "{name}: {key} is not in .env.example"
            );
            assert!(read.contains(key), "{name}: {key} is read by no binary");
        }
    }
    for var in read.iter().filter(|v| v.starts_with("FAKE_PLIVO_")) {
        assert!(documented.contains(var), "{var} is not in .env.example");
    }
}

/// `.env.example` is the one place every variable is documented: it names nothing that no
/// binary reads (each binary's own test checks that it names everything the binary reads).
#[test]
fn env_example_documents_only_what_a_binary_reads() {
    let read = read_by_a_binary();
    let stale: Vec<String> = documented().difference(&read).cloned().collect();
    assert!(
        stale.is_empty(),
        ".env.example documents what no binary reads: {stale:?}"
    );
}

#[test]
fn the_production_image_holds_only_the_two_services() {
    let stages: Vec<(String, Vec<&str>)> = DOCKERFILE
        .split("\nFROM ")
        .skip(1)
        .map(|stage| {
            let name = stage
                .lines()
                .next()
                .unwrap()
                .rsplit(" AS ")
                .next()
                .unwrap()
                .trim()
                .to_owned();
            (name, stage.lines().collect())
        })
        .collect();
    let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.last(),
        Some(&"runtime"),
        "the default target is the production image"
    );
    assert!(names.contains(&"fake-plivo"));
    let copies = |stage: &str| -> String {
        stages
            .iter()
            .find(|(n, _)| n == stage)
            .unwrap()
            .1
            .iter()
            .filter(|l| l.starts_with("COPY --from=build"))
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    };
    let runtime = copies("runtime");
    assert!(runtime.contains("otp-api") && runtime.contains("otp-dispatcher"));
    assert!(
        !runtime.contains("fake-plivo"),
        "fake-plivo prints codes: not in production"
    );
    assert!(copies("fake-plivo").contains("fake-plivo"));
    // Kubernetes' runAsNonRoot checks a numeric user without reading /etc/passwd.
    for (name, lines) in &stages[2..] {
        let user = lines.iter().find_map(|l| l.strip_prefix("USER "));
        let numeric = user.and_then(|u| u.split_once(':')).is_some_and(|(u, g)| {
            u.parse::<u32>().is_ok_and(|u| u > 0) && g.parse::<u32>().is_ok()
        });
        assert!(
            numeric,
            "stage {name} runs as {user:?}, not a numeric non-root uid:gid"
        );
    }
}

const CONFIGURATION_DOC: &str = include_str!("../../../docs/configuration.md");

/// docs/configuration.md as the settings define it: every variable each binary reads (their
/// doc comments, defaults, and who reads it), once. Regenerate with
/// `OTP_WRITE_CONFIGURATION_DOC=1 cargo test -p otp-dispatcher --test dispatcher configuration`.
fn configuration_reference() -> String {
    struct Setting {
        var: String,
        default: String,
        help: String,
        readers: Vec<&'static str>,
    }
    let mut settings: Vec<Setting> = Vec::new();
    let mut deprecated = Vec::new();
    for (binary, command) in [
        ("otp-api", otp_api::config::Config::command()),
        ("otp-dispatcher", otp_dispatcher::config::Config::command()),
    ] {
        for arg in command.get_arguments() {
            let Some(var) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else {
                continue;
            };
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace('|', "\\|");
            if arg.is_hide_set() {
                let entry = format!("| `{var}` | {help} |");
                if !deprecated.contains(&entry) {
                    deprecated.push(entry);
                }
                continue;
            }
            if let Some(known) = settings.iter_mut().find(|s| s.var == var) {
                known.readers.push(binary);
                continue;
            }
            let mut default = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",");
            // A default the code applies (a setting with an old name) is stated in its help.
            let mut help = help;
            if let Some((text, stated)) = help.split_once(" [default: ") {
                default = stated.trim_end_matches(']').to_owned();
                help = text.to_owned();
            }
            settings.push(Setting {
                var,
                default: if default.is_empty() {
                    String::new()
                } else {
                    format!("`{default}`")
                },
                help,
                readers: vec![binary],
            });
        }
    }
    let mut doc = String::from(
        "# Configuration\n\n\
         Every setting the two binaries read, generated from their definitions (the same text as\n\
         `otp-api --help` and `otp-dispatcher --help`); a test fails when this file and the code\n\
         disagree. [`.env.example`](../.env.example) is a working example with the same names, and\n\
         [Operations](operations.md#configuration) says how values are read and checked.\n\n\
         - [Read by both binaries](#read-by-both-binaries)\n\
         - [otp-api](#otp-api)\n\
         - [otp-dispatcher](#otp-dispatcher)\n\
         - [Read outside the settings](#read-outside-the-settings)\n\
         - [Secrets from files](#secrets-from-files)\n\
         - [Deprecated names](#deprecated-names)\n",
    );
    for (title, readers) in [
        ("Read by both binaries", &["otp-api", "otp-dispatcher"][..]),
        ("otp-api", &["otp-api"][..]),
        ("otp-dispatcher", &["otp-dispatcher"][..]),
    ] {
        doc.push_str(&format!(
            "\n## {title}\n\n| Variable | Default | Meaning |\n|---|---|---|\n"
        ));
        for s in settings.iter().filter(|s| s.readers == readers) {
            doc.push_str(&format!("| `{}` | {} | {} |\n", s.var, s.default, s.help));
        }
    }
    doc.push_str(
        "\n## Read outside the settings\n\n| Variable | Meaning |\n|---|---|\n\
         | `RUST_LOG` | What is logged (default `info`), e.g. `info,otp_api=debug`; traces are not filtered by it. |\n\
         | `OTEL_EXPORTER_OTLP_ENDPOINT` | Export traces over OTLP/HTTP to this endpoint when set (the standard OpenTelemetry variable). |\n",
    );
    doc.push_str(
        "\n## Secrets from files\n\nEach secret below is also read from `<NAME>_FILE`: the path of a \
         file holding the value (trimmed), the way Kubernetes and Docker mount secrets. Setting both \
         is an error.\n\n| Variable | Holds |\n|---|---|\n",
    );
    let mut secrets: Vec<String> = [
        otp_api::config::Config::command(),
        otp_dispatcher::config::Config::command(),
    ]
    .iter()
    .flat_map(otp_shared::settings::secrets)
    .map(|(var, _)| {
        let file = otp_shared::settings::file_variable(&var);
        format!("| `{file}` | `{var}` |\n")
    })
    .collect();
    secrets.sort();
    secrets.dedup();
    doc.push_str(&secrets.concat());
    doc.push_str(
        "\n## Deprecated names\n\nStill read, with a warning at start; the new name wins when both are set.\n\n\
         | Variable | Meaning |\n|---|---|\n",
    );
    for line in deprecated {
        doc.push_str(&line);
        doc.push('\n');
    }
    doc
}

#[test]
fn the_configuration_reference_is_what_the_binaries_read() {
    let generated = configuration_reference();
    if std::env::var_os("OTP_WRITE_CONFIGURATION_DOC").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        std::fs::write(path, &generated).unwrap();
        return;
    }
    for var in read_by_a_binary()
        .iter()
        .filter(|v| !v.starts_with("FAKE_PLIVO_"))
    {
        assert!(
            CONFIGURATION_DOC.contains(&format!("| `{var}` |")),
            "docs/configuration.md does not name {var}"
        );
    }
    assert!(
        CONFIGURATION_DOC == generated,
        "docs/configuration.md is not what the settings define; regenerate it with \
         OTP_WRITE_CONFIGURATION_DOC=1 cargo test -p otp-dispatcher --test dispatcher configuration"
    );
}

const ALERTS: &str = include_str!("../../../deploy/prometheus/alerts.yml");
const OPERATIONS_DOC: &str = include_str!("../../../docs/operations.md");

/// Every alert has a severity, a summary and a runbook that exists: a `###` section of
/// docs/operations.md whose anchor is the runbook_url's. (promtool checks the expressions and
/// the unit tests show each alert firing; tools/test.sh runs both.)
#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_section() {
    let doc: Value = serde_yaml_ng::from_str(ALERTS).expect("alerts.yml is YAML");
    let anchors: Vec<String> = OPERATIONS_DOC
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|heading| {
            heading
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    let rules = doc["groups"][0]["rules"].as_sequence().expect("rules");
    assert!(rules.len() >= 12, "{} alerts", rules.len());
    for rule in rules {
        let name = rule["alert"].as_str().expect("an alert name");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity"
        );
        let summary = rule["annotations"]["summary"].as_str().unwrap_or_default();
        assert!(!summary.is_empty(), "{name}: summary");
        let runbook = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let anchor = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {runbook}"));
        assert_eq!(
            anchor,
            name.to_lowercase(),
            "{name}: the anchor is the alert's name"
        );
        assert!(
            anchors.iter().any(|a| a == anchor),
            "{name}: no section #{anchor}"
        );
    }
}
