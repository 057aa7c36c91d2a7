//! PocketBase with a superuser, and users made on demand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::Proc;
use crate::{eventually, free_port};

/// A PocketBase user with a fresh token.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: String,
    pub email: String,
    pub password: String,
    pub token: String,
}

/// PocketBase with a superuser; creates users on demand.
pub struct PocketBase {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    admin_token: String,
    http: reqwest::Client,
}

const ADMIN_EMAIL: &str = "admin@relay.test";
const ADMIN_PASSWORD: &str = "admin-password-123";

impl PocketBase {
    pub async fn start(dir: &Path) -> Self {
        let dir = dir.join("pocketbase");
        let status = Command::new("pocketbase")
            .args(["superuser", "upsert", ADMIN_EMAIL, ADMIN_PASSWORD, "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .await
            .expect("pocketbase superuser upsert (run scripts/install-deps.sh)");
        assert!(status.success(), "pocketbase superuser upsert failed");
        let mut pb =
            Self { port: free_port(), dir, proc: None, admin_token: String::new(), http: reqwest::Client::new() };
        pb.restart().await;
        let reply: serde_json::Value = pb
            .post(
                "/api/collections/_superusers/auth-with-password",
                None,
                serde_json::json!({"identity": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
            )
            .await;
        pb.admin_token = reply["token"].as_str().expect("admin token").to_owned();
        pb
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        let hooks = self.dir.join("../pb_hooks");
        std::fs::create_dir_all(&hooks).expect("pb_hooks folder");
        std::fs::write(hooks.join("relay_test_users.pb.js"), include_str!("pb_hooks/relay_test_users.pb.js"))
            .expect("writing the test hook");
        let mut cmd = Command::new("pocketbase");
        cmd.args(["serve", "--http", &format!("127.0.0.1:{}", self.port), "--hooksDir"])
            .arg(&hooks)
            .arg("--dir")
            .arg(&self.dir);
        self.proc = Some(Proc::spawn("pocketbase", &mut cmd, &self.dir.join("../pocketbase.log")));
        let url = format!("{}/api/health", self.url());
        let http = self.http.clone();
        eventually(Duration::from_secs(15), "pocketbase health", || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    }

    async fn post(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> serde_json::Value {
        let mut req = self.http.post(format!("{}{path}", self.url())).json(&body);
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let reply = req.send().await.expect("pocketbase call");
        let status = reply.status();
        let body: serde_json::Value = reply.json().await.expect("pocketbase json");
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    /// Creates a user and logs it in.
    pub async fn create_user(&self, name: &str) -> TestUser {
        let email = format!("{name}-{:06x}@relay.test", rand::random::<u32>() & 0xffffff);
        let password = format!("{name}-password");
        let body = serde_json::json!({"email": email, "password": password, "passwordConfirm": password, "name": name});
        let record = self.post("/api/collections/users/records", Some(&self.admin_token), body).await;
        let id = record["id"].as_str().expect("user id").to_owned();
        let token = self.login(&email, &password).await;
        TestUser { id, email, password, token }
    }

    /// `n` users named `<prefix><i>` (ids start with `prefix`, at most 14 characters), made at
    /// once by the harness's hook (no password hashing per user); returns (id, token) of each.
    /// They cannot log in with a password; their tokens are real PocketBase tokens.
    pub async fn create_users(&self, prefix: &str, n: usize) -> Vec<(String, String)> {
        assert!(!prefix.is_empty() && prefix.len() < 15 && prefix.chars().all(|c| c.is_ascii_alphanumeric()));
        // A bcrypt hash of nothing anyone knows: the users never log in with a password.
        let hash = "$2a$10$AAAAAAAAAAAAAAAAAAAAAOaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let reply = self
            .post(
                "/api/relay-test/users",
                Some(&self.admin_token),
                serde_json::json!({"n": n, "prefix": prefix, "hash": hash}),
            )
            .await;
        reply
            .as_array()
            .expect("a list of users")
            .iter()
            .map(|u| (u["id"].as_str().unwrap().to_owned(), u["token"].as_str().unwrap().to_owned()))
            .collect()
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let reply = self
            .post(
                "/api/collections/users/auth-with-password",
                None,
                serde_json::json!({"identity": email, "password": password}),
            )
            .await;
        reply["token"].as_str().expect("token").to_owned()
    }

    /// Deletes the user's record: PocketBase then refuses its tokens.
    pub async fn delete_user(&self, user: &TestUser) {
        let reply = self
            .http
            .delete(format!("{}/api/collections/users/records/{}", self.url(), user.id))
            .header("Authorization", &self.admin_token)
            .send()
            .await
            .expect("pocketbase delete");
        assert!(reply.status().is_success(), "deleting a user: {}", reply.status());
    }

    /// How long tokens of the users collection live from now on (PocketBase's default: 7 days).
    pub async fn set_token_duration(&self, secs: u64) {
        let reply = self
            .http
            .patch(format!("{}/api/collections/users", self.url()))
            .header("Authorization", &self.admin_token)
            .json(&serde_json::json!({"authToken": {"duration": secs}}))
            .send()
            .await
            .expect("pocketbase patch collection");
        assert!(reply.status().is_success(), "setting the token duration: {}", reply.status());
    }

    /// Changes the user's password: PocketBase then refuses every token issued before.
    pub async fn revoke_tokens(&self, user: &TestUser) {
        let password = format!("{}-rotated", user.password);
        let body = serde_json::json!({"password": password, "passwordConfirm": password});
        let reply = self
            .http
            .patch(format!("{}/api/collections/users/records/{}", self.url(), user.id))
            .header("Authorization", &self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("pocketbase patch");
        assert!(reply.status().is_success(), "revoking tokens: {}", reply.status());
    }
}
