//! A real kube-apiserver with etcd, envtest style: binaries built from Go modules by
//! `scripts/install-k8s-test-bins.sh` into a cache outside the repo (`KUBEBUILDER_ASSETS`).
//! Token authentication as a `system:masters` user; RBAC on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use operator::crd::RelayChannel;
use tokio::process::Command;

use crate::servers::Proc;
use crate::{eventually, free_port};

/// How long operator tests wait for a state.
const T: Duration = Duration::from_secs(30);

const TOKEN: &str = "relay-test-admin-token";

/// The folder holding kube-apiserver, etcd and helm.
pub fn assets() -> PathBuf {
    let dir = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        home.join(".cache/relay-test-bins/k8s-1.37.2")
    });
    assert!(
        dir.join("kube-apiserver").exists() && dir.join("etcd").exists(),
        "kube-apiserver and etcd are missing from {}: run scripts/install-k8s-test-bins.sh",
        dir.display()
    );
    dir
}

/// etcd and kube-apiserver, killed on drop.
pub struct KubeApi {
    pub port: u16,
    kubeconfig: PathBuf,
    _etcd: Proc,
    _apiserver: Proc,
}

impl KubeApi {
    pub async fn start(dir: &Path) -> Self {
        let bins = assets();
        let dir = dir.join("kube");
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let (etcd_port, peer_port, port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bins.join("etcd"));
        etcd.arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}"), "--unsafe-no-fsync"]);
        let etcd = Proc::spawn("etcd", &mut etcd, &dir.join("etcd.log"));

        let key = dir.join("sa.key");
        let public = dir.join("sa.pub");
        run("openssl", &["genrsa", "-out", key.to_str().unwrap(), "2048"]).await;
        run("openssl", &["rsa", "-in", key.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]).await;
        std::fs::write(dir.join("tokens.csv"), format!("{TOKEN},admin,admin,system:masters\n")).unwrap();

        let mut api = Command::new(bins.join("kube-apiserver"));
        api.args(["--etcd-servers", &etcd_url, "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1"])
            // The default reconciler refuses a loopback advertise address.
            .args(["--endpoint-reconciler-type", "none"])
            .args(["--secure-port", &port.to_string()])
            .arg("--cert-dir")
            .arg(dir.join("certs"))
            .arg("--token-auth-file")
            .arg(dir.join("tokens.csv"))
            .args(["--authorization-mode", "RBAC", "--service-cluster-ip-range", "10.0.0.0/24"])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .arg("--service-account-key-file")
            .arg(&public)
            .arg("--service-account-signing-key-file")
            .arg(&key)
            .args(["--disable-admission-plugins", "ServiceAccount", "--allow-privileged=true"]);
        let apiserver = Proc::spawn("kube-apiserver", &mut api, &dir.join("kube-apiserver.log"));

        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(port)).unwrap();
        let me = Self { port, kubeconfig, _etcd: etcd, _apiserver: apiserver };
        let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
        let url = format!("https://127.0.0.1:{port}/readyz");
        eventually(Duration::from_secs(60), "kube-apiserver ready", || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).bearer_auth(TOKEN).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        me
    }

    /// A kubeconfig file for processes (the operator binary, kubectl, helm).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub async fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(format!("https://127.0.0.1:{}", self.port).parse().unwrap());
        config.accept_invalid_certs = true;
        config.auth_info.token = Some(TOKEN.to_owned().into());
        kube::Client::try_from(config).unwrap()
    }
}

fn kubeconfig_yaml(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n"
    )
}

async fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().await.unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Installs the generated CRD and waits until it is established.
pub async fn install_crd(client: &kube::Client) {
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/relaychannel.yaml")).unwrap();
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    eventually(T, "CRD established", || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("relaychannels.relay.dev").await.unwrap();
            crd.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        }
    })
    .await;
}

/// Creates a namespace.
pub async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

/// A RelayChannel named `name` with a spec given as JSON.
pub fn channel(name: &str, spec: serde_json::Value) -> RelayChannel {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "relay.dev/v1alpha1", "kind": "RelayChannel", "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// The Ready condition's (status, reason) and the observed generation.
pub async fn ready(api: &Api<RelayChannel>, name: &str) -> Option<(String, String, Option<i64>)> {
    let rc = api.get_opt(name).await.ok()??;
    let status = rc.status?;
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), status.observed_generation))
}

/// Waits until Ready is `status` with `reason` at `generation`.
pub async fn wait_ready(api: &Api<RelayChannel>, name: &str, status: &str, reason: &str, generation: i64) {
    eventually(T, &format!("{name} Ready={status} ({reason}) at generation {generation}"), || async {
        ready(api, name).await == Some((status.into(), reason.into(), Some(generation)))
    })
    .await;
}
