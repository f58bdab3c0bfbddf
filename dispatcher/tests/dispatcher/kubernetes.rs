//! deploy/kubernetes/ as a cluster would take it. tools/test.sh validates the core kinds
//! against the Kubernetes schemas (kubernetes-validate); this checks what a schema cannot:
//! the KEDA objects' structure, that every variable the manifests set is one its binary reads,
//! that secrets come from the template, and the probes, users and limits of each workload.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::compose::read_by;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");

/// Every object of every manifest, by `kind/name`.
fn objects() -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for file in manifests() {
        let text = std::fs::read_to_string(format!("{DIR}/{file}")).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let object = Value::deserialize(document).unwrap_or_else(|e| panic!("{file}: {e}"));
            let kind = object["kind"].as_str().expect("a kind");
            let name = object["metadata"]["name"].as_str().expect("a name");
            let id = format!("{kind}/{name}");
            let previous = objects.insert(id.clone(), object);
            assert!(previous.is_none(), "{id} is defined twice");
        }
    }
    objects
}

/// The manifests, kustomization.yaml left out.
fn manifests() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

fn str_of(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value:?} is not a string"))
}

fn keys_of(map: &Value) -> BTreeSet<String> {
    map.as_mapping()
        .map(|m| m.keys().map(|k| str_of(k).to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(format!("{DIR}/kustomization.yaml")).unwrap();
    let kustomization: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut listed: Vec<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| str_of(r).to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, manifests());
}

#[test]
fn each_workload_runs_unprivileged_with_limits_and_the_right_probes() {
    let objects = objects();
    let secret = &objects["Secret/otp-secrets"];
    let secrets = keys_of(&secret["stringData"]);
    for (_, value) in secret["stringData"].as_mapping().unwrap() {
        assert_eq!(str_of(value), "", "the Secret template holds no values");
    }
    let workloads = [
        (
            "otp-api",
            read_by(otp_api::config::Config::command()),
            "admin",
        ),
        (
            "otp-dispatcher",
            read_by(otp_dispatcher::config::Config::command()),
            "health",
        ),
    ];
    for (name, reads, probe_port) in workloads {
        let pod = &objects[&format!("Deployment/{name}")]["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::from(true));
        assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(10001));
        let [container] = pod["containers"].as_sequence().unwrap().as_slice() else {
            panic!("{name} has one container");
        };
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], Value::from(true));
        assert_eq!(security["allowPrivilegeEscalation"], Value::from(false));
        for bound in ["requests", "limits"] {
            let set = keys_of(&container["resources"][bound]);
            assert!(
                set.contains("cpu") && set.contains("memory"),
                "{name} {bound}"
            );
        }
        // Liveness never depends on Redis or RabbitMQ; readiness does.
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(str_of(&get["path"]), path, "{name} {probe}");
            assert_eq!(str_of(&get["port"]), probe_port, "{name} {probe}");
        }

        // Every variable set is one this binary reads; secrets come from the template.
        let mut set = BTreeSet::new();
        for source in container["envFrom"].as_sequence().unwrap() {
            let map = str_of(&source["configMapRef"]["name"]);
            set.extend(keys_of(&objects[&format!("ConfigMap/{map}")]["data"]));
        }
        for var in container["env"].as_sequence().unwrap() {
            set.insert(str_of(&var["name"]).to_owned());
            let reference = &var["valueFrom"]["secretKeyRef"];
            if !reference.is_null() {
                assert_eq!(str_of(&reference["name"]), "otp-secrets");
                assert!(secrets.contains(str_of(&reference["key"])), "{var:?}");
            }
        }
        let unread: Vec<_> = set.difference(&reads).collect();
        assert!(unread.is_empty(), "{name} does not read {unread:?}");

        // The ports the settings name are the ones the container opens.
        let ports: BTreeMap<String, u64> = container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    str_of(&p["name"]).to_owned(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        let config = &objects[&format!("ConfigMap/{name}")]["data"];
        let expected = match name {
            "otp-api" => vec![("PORT", "http"), ("ADMIN_PORT", "admin")],
            _ => vec![("DISPATCHER_HTTP_PORT", "health")],
        };
        for (setting, port) in expected {
            assert_eq!(
                str_of(&config[setting]),
                ports[port].to_string(),
                "{setting}"
            );
        }
    }
    // What both read is set once, for both.
    let both: BTreeSet<String> = read_by(otp_api::config::Config::command())
        .intersection(&read_by(otp_dispatcher::config::Config::command()))
        .cloned()
        .collect();
    let shared = keys_of(&objects["ConfigMap/otp-shared"]["data"]);
    assert!(shared.is_subset(&both), "{:?}", shared.difference(&both));
}

#[test]
fn the_metrics_ports_are_open_to_the_monitoring_namespace_only() {
    let objects = objects();
    for (name, metrics_port) in [("otp-api", 9464), ("otp-dispatcher", 3001)] {
        let rules = objects[&format!("NetworkPolicy/{name}")]["spec"]["ingress"]
            .as_sequence()
            .unwrap()
            .clone();
        for rule in rules {
            let ports: Vec<u64> = rule["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_u64().unwrap())
                .collect();
            if ports.contains(&metrics_port) {
                let from = rule["from"]
                    .as_sequence()
                    .expect("a metrics rule names its sources");
                for source in from {
                    let namespace =
                        &source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"];
                    assert_eq!(str_of(namespace), "monitoring");
                    assert!(source["podSelector"].is_null() && source["ipBlock"].is_null());
                }
            }
        }
    }
}

#[test]
fn keda_scales_the_dispatchers_on_the_send_queue() {
    let objects = objects();
    let scaled = &objects["ScaledObject/otp-dispatcher"];
    assert_eq!(str_of(&scaled["apiVersion"]), "keda.sh/v1alpha1");
    let spec = &scaled["spec"];
    let target = str_of(&spec["scaleTargetRef"]["name"]);
    assert!(objects.contains_key(&format!("Deployment/{target}")));
    assert_eq!(target, "otp-dispatcher");
    let (min, max) = (
        spec["minReplicaCount"].as_u64().expect("minReplicaCount"),
        spec["maxReplicaCount"].as_u64().expect("maxReplicaCount"),
    );
    assert!(1 <= min && min <= max, "{min}..{max}");

    let [trigger] = spec["triggers"].as_sequence().unwrap().as_slice() else {
        panic!("one trigger");
    };
    assert_eq!(str_of(&trigger["type"]), "rabbitmq");
    let metadata = trigger["metadata"].as_mapping().expect("trigger metadata");
    for (key, value) in metadata {
        assert!(
            value.is_string(),
            "KEDA wants strings: {key:?} is {value:?}"
        );
    }
    assert_eq!(str_of(&trigger["metadata"]["mode"]), "QueueLength");
    assert!(str_of(&trigger["metadata"]["value"]).parse::<u32>().is_ok());
    // The queue SMS_QUEUE names by default, and in the ConfigMap.
    let command = otp_dispatcher::config::Config::command();
    let sms_queue = command
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == "SMS_QUEUE"))
        .unwrap();
    let default = sms_queue.get_default_values()[0].to_string_lossy();
    assert_eq!(str_of(&trigger["metadata"]["queueName"]), default);
    let configured = &objects["ConfigMap/otp-shared"]["data"]["SMS_QUEUE"];
    assert_eq!(str_of(configured), default);

    // The broker URL comes from a Secret of the template, through a TriggerAuthentication.
    let auth = str_of(&trigger["authenticationRef"]["name"]);
    let auth = &objects[&format!("TriggerAuthentication/{auth}")];
    assert_eq!(str_of(&auth["apiVersion"]), "keda.sh/v1alpha1");
    let refs = auth["spec"]["secretTargetRef"].as_sequence().unwrap();
    assert!(refs.iter().any(|r| str_of(&r["parameter"]) == "host"));
    for reference in refs {
        let secret = &objects[&format!("Secret/{}", str_of(&reference["name"]))];
        assert!(keys_of(&secret["stringData"]).contains(str_of(&reference["key"])));
    }
}
