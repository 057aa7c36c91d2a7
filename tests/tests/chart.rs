//! The Helm chart: lint, render with the default and the production example values, assert what
//! matters, and have a real kube-apiserver validate every rendered object (server-side dry run).

use std::path::{Path, PathBuf};
use std::process::Command;

use relay_tests::kube_api::{KubeApi, assets};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm(args: &[&str]) -> String {
    let out = Command::new(assets().join("helm")).args(args).current_dir(root()).output().expect("helm");
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render(extra: &[&str]) -> (String, Vec<Value>) {
    let mut args = vec!["template", "rel", "charts/relay", "--namespace", "relay", "--kube-version", "1.37.2"];
    args.extend_from_slice(extra);
    let yaml = helm(&args);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    (yaml, docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

fn env_of(container: &Value) -> std::collections::BTreeMap<String, Value> {
    container["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone())).collect()
}

#[test]
fn the_chart_lints_strictly_with_default_and_example_values() {
    helm(&["lint", "--strict", "charts/relay", "--kube-version", "1.37.2"]);
    helm(&["lint", "--strict", "charts/relay", "--kube-version", "1.37.2", "-f", "examples/values-production.yaml"]);
    // The schema refuses nonsense.
    let out = Command::new(assets().join("helm"))
        .args(["lint", "--strict", "charts/relay", "--set", "relay.config.undeclaredChannels=maybe"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success(), "values.schema.json must refuse undeclaredChannels=maybe");
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let generated = std::fs::read_to_string(root().join("crds/relaychannel.yaml")).unwrap();
    let shipped = std::fs::read_to_string(root().join("charts/relay/crds/relaychannel.yaml")).unwrap();
    assert_eq!(shipped, generated, "charts/relay/crds/ drifted from crds/: copy crds/relaychannel.yaml");
}

#[test]
fn rendered_objects_wire_probes_ports_settings_and_least_privilege() {
    let (_, docs) = render(&[]);
    let relay = find(&docs, "Deployment", "rel-relay");
    let c = &relay["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<_> =
        c["ports"].as_array().unwrap().iter().map(|p| (p["name"].clone(), p["containerPort"].clone())).collect();
    assert_eq!(ports, [(Value::from("grpc"), Value::from(50051)), (Value::from("admin"), Value::from(9090))]);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe} on the admin port");
        assert_eq!(c[probe]["httpGet"]["path"], path);
    }
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(relay["spec"]["template"]["spec"]["automountServiceAccountToken"], false);
    assert!(c["lifecycle"]["preStop"].is_object(), "streams drain before the pod stops");

    // Every setting of the configuration table comes from values.
    let env = env_of(c);
    for (name, value) in [
        ("RELAY_LISTEN", "0.0.0.0:50051"),
        ("RELAY_ADMIN_LISTEN", "0.0.0.0:9090"),
        ("RELAY_NATS_URL", "nats://nats:4222"),
        ("RELAY_REDIS_URL", "redis://redis-master:6379"),
        ("RELAY_POCKETBASE_URL", "http://pocketbase:8090"),
        ("RELAY_POCKETBASE_COLLECTION", "users"),
        ("RELAY_UNDECLARED_CHANNELS", "deny"),
    ] {
        assert_eq!(env.get(name).map(|e| e["value"].clone()), Some(Value::from(value)), "{name}");
    }
    let (_, changed) = render(&[
        "--set",
        "relay.config.undeclaredChannels=allow,relay.grpcPort=7000,relay.config.pocketbaseCollection=members",
        "--set",
        "redis.existingSecret=backends,redis.existingSecretKey=redis",
    ]);
    let c2 = &find(&changed, "Deployment", "rel-relay")["spec"]["template"]["spec"]["containers"][0];
    let env = env_of(c2);
    assert_eq!(env["RELAY_UNDECLARED_CHANNELS"]["value"], "allow");
    assert_eq!(env["RELAY_LISTEN"]["value"], "0.0.0.0:7000");
    assert_eq!(env["RELAY_POCKETBASE_COLLECTION"]["value"], "members");
    assert_eq!(
        env["RELAY_REDIS_URL"]["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "backends", "key": "redis"})
    );

    // The Service exposes both ports.
    let svc = find(&docs, "Service", "rel-relay");
    let names: Vec<_> = svc["spec"]["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["grpc", "admin"]);

    // RBAC names only what the operator needs.
    let role = find(&docs, "ClusterRole", "rel-relay-operator");
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for r in rule["resources"].as_array().unwrap() {
            for v in rule["verbs"].as_array().unwrap() {
                granted.push(format!(
                    "{}/{}:{}",
                    rule["apiGroups"][0].as_str().unwrap(),
                    r.as_str().unwrap(),
                    v.as_str().unwrap()
                ));
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "events.k8s.io/events:create",
            "events.k8s.io/events:patch",
            "relay.dev/relaychannels/finalizers:update",
            "relay.dev/relaychannels/status:get",
            "relay.dev/relaychannels/status:patch",
            "relay.dev/relaychannels:get",
            "relay.dev/relaychannels:list",
            "relay.dev/relaychannels:patch",
            "relay.dev/relaychannels:watch",
        ]
    );
    let leader = find(&docs, "Role", "rel-relay-operator-leader");
    assert!(leader["rules"].as_array().unwrap().iter().all(|r| r["resources"] == serde_json::json!(["leases"])));
    let op = &find(&docs, "Deployment", "rel-relay-operator")["spec"]["template"]["spec"];
    assert_eq!(op["serviceAccountName"], "rel-relay-operator");
    assert_eq!(env_of(&op["containers"][0])["OPERATOR_LEASE_NAME"]["value"], "rel-relay-operator");
}

#[test]
fn tls_cas_and_nats_credentials_come_from_secrets() {
    let (yaml, docs) = render(&["-f", "examples/values-production.yaml"]);
    for (deployment, prefix, backends) in [
        ("rel-relay", "RELAY", &["nats", "redis", "pocketbase"][..]),
        ("rel-relay-operator", "OPERATOR", &["nats", "redis"][..]),
    ] {
        let spec = &find(&docs, "Deployment", deployment)["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        let env = env_of(c);
        let mounts: Vec<&str> =
            c["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
        let volumes: Vec<(&str, &str)> = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v["secret"]["secretName"].as_str().unwrap()))
            .collect();
        for backend in backends {
            let var = format!("{prefix}_{}_CA_FILE", backend.to_uppercase());
            assert_eq!(env[&var]["value"], format!("/etc/relay/{backend}-ca/ca.crt"), "{deployment} {var}");
            assert!(mounts.contains(&format!("/etc/relay/{backend}-ca").as_str()), "{deployment}: {mounts:?}");
            assert!(
                volumes.contains(&(format!("{backend}-ca").as_str(), "relay-backends-ca")),
                "{deployment}: {volumes:?}"
            );
        }
        assert_eq!(env[&format!("{prefix}_NATS_CREDS_FILE")]["value"], "/etc/relay/nats-creds/nats.creds");
        assert!(volumes.contains(&("nats-creds", "relay-nats-creds")));
        assert!(c["volumeMounts"].as_array().unwrap().iter().all(|m| m["readOnly"] == true));
        assert_eq!(env[&format!("{prefix}_REDIS_URL")]["valueFrom"]["secretKeyRef"]["name"], "relay-backends");
    }
    let relay = &find(&docs, "Deployment", "rel-relay")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_of(relay)["RELAY_CLIENT_IP_HEADER"]["value"], "x-real-ip");
    assert_eq!(env_of(relay)["RELAY_REDIS_MODE"]["value"], "cluster");
    assert_eq!(env_of(relay)["RELAY_REDIS_WAIT_REPLICAS"]["value"], "1");
    assert!(!yaml.contains("password"), "no secret in the rendered chart");
    // Without TLS values nothing is mounted.
    let (_, plain) = render(&[]);
    assert!(find(&plain, "Deployment", "rel-relay")["spec"]["template"]["spec"]["volumes"].is_null());
}

/// The README's install steps name objects the chart makes: `helm install NAME charts/relay`, then
/// `deploy/...` and `svc/...` that must exist under that release name.
#[test]
fn the_readmes_kubernetes_steps_name_objects_the_chart_makes() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let install = readme.split("## Install on Kubernetes").nth(1).expect("an install section");
    let release =
        install.split_whitespace().skip_while(|w| *w != "install").nth(1).expect("helm install <release> charts/relay");
    let yaml = helm(&["template", release, "charts/relay", "--namespace", "relay", "--kube-version", "1.37.2"]);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let named: Vec<(String, String)> = docs
        .iter()
        .filter(|d| !d.is_null())
        .map(|d| (d["kind"].as_str().unwrap().to_owned(), d["metadata"]["name"].as_str().unwrap().to_owned()))
        .collect();
    let mut checked = 0;
    for word in install.split(|c: char| c.is_whitespace() || c == '`') {
        let (kind, name) = match word.split_once('/') {
            Some(("deploy", n)) => ("Deployment", n),
            Some(("svc", n)) => ("Service", n),
            _ => continue,
        };
        assert!(
            named.iter().any(|(k, n)| k == kind && n == name),
            "README names {kind} {name}, which `helm install {release}` does not make; it makes {named:?}"
        );
        checked += 1;
    }
    assert!(checked >= 3, "the README's steps name the deployments and the service ({checked} found)");
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_api_server_accepts_every_rendered_object_and_example() {
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeApi::start(dir.path()).await;
    let kc = kube.kubeconfig().to_owned();
    kubectl(&kc, &["apply", "--server-side", "-f", root().join("charts/relay/crds").to_str().unwrap()], None);
    kubectl(&kc, &["wait", "--for=condition=Established", "crd/relaychannels.relay.dev", "--timeout=30s"], None);
    kubectl(&kc, &["create", "namespace", "relay"], None);
    for values in [None, Some("examples/values-production.yaml")] {
        let (yaml, docs) = render(&values.map(|v| vec!["-f", v]).unwrap_or_default());
        // The Prometheus operator's kinds need its CRDs, which this API server lacks.
        const PROMETHEUS_OPERATOR: [&str; 3] = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];
        let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect();
        let applicable: Vec<&str> = yaml
            .split("\n---")
            .filter(|d| !PROMETHEUS_OPERATOR.iter().any(|k| d.contains(&format!("kind: {k}"))))
            .collect();
        let out = kubectl(
            &kc,
            &["apply", "--server-side", "--dry-run=server", "-n", "relay", "-f", "-"],
            Some(&applicable.join("\n---")),
        );
        let applied = out.lines().count();
        let expected = kinds.iter().filter(|k| !PROMETHEUS_OPERATOR.contains(&k.as_str())).count();
        assert_eq!(applied, expected, "every object accepted ({values:?}):\n{out}");
    }
    let out = kubectl(
        &kc,
        &["apply", "--server-side", "--dry-run=server", "-f", root().join("examples/channels").to_str().unwrap()],
        None,
    );
    assert_eq!(out.lines().count(), 4, "{out}");
}

#[test]
fn redis_modes_reach_the_relay_and_the_operator_and_sentinel_needs_a_master_name() {
    let (_, docs) = render(&[
        "--set",
        "redis.mode=sentinel",
        "--set",
        "redis.masterName=mymaster",
        "--set",
        "redis.waitReplicas=2",
    ]);
    for (deployment, prefix) in [("rel-relay", "RELAY"), ("rel-relay-operator", "OPERATOR")] {
        let env = env_of(&find(&docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]);
        assert_eq!(env[&format!("{prefix}_REDIS_MODE")]["value"], "sentinel", "{deployment}");
        assert_eq!(env[&format!("{prefix}_REDIS_MASTER_NAME")]["value"], "mymaster", "{deployment}");
    }
    let relay = env_of(&find(&docs, "Deployment", "rel-relay")["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(relay["RELAY_REDIS_WAIT_REPLICAS"]["value"], "2");
    let out = Command::new(assets().join("helm"))
        .args(["template", "rel", "charts/relay", "--set", "redis.mode=sentinel"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success(), "sentinel without a master name must be refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("masterName"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The Grafana dashboard and the Prometheus rules the chart ships: rendered when enabled, the rules
/// exactly as `files/alerts.yaml` (which `promtool check rules` accepts), and every metric they
/// name exported by a live relay or operator.
#[tokio::test]
async fn the_dashboard_and_alert_rules_ship_and_name_only_metrics_that_exist() {
    let (_, docs) =
        render(&["--set", "monitoring.dashboard.enabled=true", "--set", "monitoring.prometheusRule.enabled=true"]);
    let configmap = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a dashboard ConfigMap with the sidecar's label");
    let dashboard: Value = serde_json::from_str(configmap["data"]["relay.json"].as_str().unwrap()).unwrap();
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    let rules_file = root().join("charts/relay/files/alerts.yaml");
    let file: Value = serde_saphyr::from_str(&std::fs::read_to_string(&rules_file).unwrap()).unwrap();
    assert_eq!(rule["spec"]["groups"], file["groups"], "the PrometheusRule ships files/alerts.yaml as it is");

    let out = Command::new(assets().join("promtool")).arg("check").arg("rules").arg(&rules_file).output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut exprs: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for group in file["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            exprs.push(r["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() > 20, "{exprs:?}");

    // A live relay and a live operator (standalone, nothing declared) say what they export.
    let stack = relay_tests::Stack::with(relay_tests::StackOptions { relays: 1, ..Default::default() }).await;
    let declared = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("examples/channels/chat.yaml"), declared.path().join("chat.yaml")).unwrap();
    let operator =
        relay_tests::OperatorProc::start(&stack, &["--standalone", declared.path().to_str().unwrap()], &[]).await;
    relay_tests::eventually(std::time::Duration::from_secs(15), "the operator applied chat", || async {
        operator.metrics().await.contains("relay_operator_channel_ready{")
    })
    .await;
    let exported = format!("{}{}", stack.relays[0].metrics().await, operator.metrics().await);
    let families: std::collections::BTreeSet<&str> =
        exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    for expr in &exprs {
        for name in metric_names(expr) {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|base| families.contains(base)))
                .unwrap_or(&name);
            assert!(families.contains(family), "{name} (in `{expr}`) is not exported; exported: {families:?}");
        }
    }
}

/// The metric names in a PromQL expression: words that start with `relay_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("relay_") {
        let start = i + at;
        let word_start = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end =
            expr[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(expr.len(), |n| start + n);
        if word_start {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}
