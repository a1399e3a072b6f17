//! The real `parley` binary as a user runs it: first start with the demo key, restarts, the
//! data-directory lock, offline admin commands, settings errors, TLS, and SIGTERM.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::clean_command;

/// Lines of a node's log (its stderr) kept for failure messages and log checks.
const LOG_LINES: usize = 5_000;

/// A running `parley serve` with its stdout collected line by line, and its log (stderr) read
/// as it comes: a log nobody reads would fill the pipe and block the node at its next line.
pub struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Node {
    pub fn start(configure: impl FnOnce(&mut Command)) -> Node {
        let mut command = clean_command();
        command.args(["serve", "--listen", "127.0.0.1:0"]).stdout(Stdio::piped()).stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        if let Some(stderr) = child.stderr.take() {
            let kept = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut kept = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if kept.len() == LOG_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            });
        }
        Node { child, lines, seen: Vec::new(), log }
    }

    /// The node's log so far (its last lines).
    pub fn log(&self) -> String {
        let kept = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// Waits for a stdout line containing `needle` (bounded: the test fails rather than hangs).
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "parley exited with {status} before printing {needle:?}; stdout so far: {:?}",
                            self.seen
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("parley never printed {needle:?}; stdout: {:?}", self.seen);
    }

    /// The base URL from the start-up line `… listening on http://ADDR`.
    pub fn base_url(&mut self) -> String {
        let line = self.wait_for("listening on");
        line.rsplit(' ').next().unwrap().to_owned()
    }

    /// Collects the remaining start-up lines until the node prints nothing for a moment.
    pub fn drain(&mut self) -> String {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// The process id, to look at its descriptors and threads in `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "parley exited with {status} after SIGTERM");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "parley did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn admin(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    clean_command().arg("admin").args(args).arg("--data-dir").arg(data_dir).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_demo_key_restart_lock_and_offline_admin() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().to_owned();
    let mut node = Node::start(|command| {
        command
            .arg("--data-dir")
            .arg(&dir)
            .env("TEST_POSTGRES_URL", "postgres://ignored")
            .env("PARLEY_URL", "http://x");
    });
    let base = node.base_url();
    let output = node.drain();
    let key = output
        .split_whitespace()
        .find(|word| word.starts_with("pk_") && word.len() > 50)
        .unwrap_or_else(|| panic!("no demo owner key printed: {output}"))
        .to_owned();

    let client = reqwest::Client::new();
    let health: Value = client.get(format!("{base}/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health, json!({ "status": "ok" }));
    assert_eq!(client.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    let document: Value = client.get(format!("{base}/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(document["paths"]["/admin/v1/agents"]["post"].is_object());
    let docs = client.get(format!("{base}/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"), "/docs serves the built-in interactive docs");
    let initializer = client.get(format!("{base}/docs/swagger-initializer.js")).send().await.unwrap();
    assert_eq!(initializer.status(), 200);
    assert!(initializer.text().await.unwrap().contains("/openapi.json"));

    // The demo key creates and lists agents.
    let created: Value = client
        .post(format!("{base}/admin/v1/agents"))
        .bearer_auth(&key)
        .json(&json!({ "name": "From the demo key" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["name"], "From the demo key");
    let agents: Value =
        client.get(format!("{base}/admin/v1/agents")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = agents["items"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Demo assistant", "From the demo key"]);

    // While the server holds the data directory, offline commands refuse.
    let refused = admin(&dir, &["create-tenant", "Blocked"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("in use by a Parley server"), "{message}");

    node.terminate();

    // The database file holds no plain-text key.
    let database = std::fs::read(dir.join("parley.db")).unwrap();
    assert!(!String::from_utf8_lossy(&database).contains(&key[16..]));

    // Offline admin now works and prints JSON with a working key.
    let created = admin(&dir, &["create-tenant", "Offline Co"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(created["tenant"]["name"], "Offline Co");
    let offline_key = created["owner_key"]["secret"].as_str().unwrap().to_owned();
    let tenant_id = created["tenant"]["id"].as_str().unwrap().to_owned();
    let minted = admin(&dir, &["create-key", "--tenant", &tenant_id, "--role", "viewer"]);
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let minted: Value = serde_json::from_slice(&minted.stdout).unwrap();
    let viewer_key = minted["key"]["secret"].as_str().unwrap().to_owned();
    let bad_role = admin(&dir, &["create-key", "--tenant", &tenant_id, "--role", "emperor"]);
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("is not a role"));
    let listed = admin(&dir, &["list-tenants"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 2);

    // A restart keeps everything, prints no key, and says how to mint one.
    let mut node = Node::start(|command| {
        command.arg("--data-dir").arg(&dir);
    });
    let base = node.base_url();
    let output = node.drain();
    assert!(!output.contains("pk_"), "a restart must not print a key: {output}");
    assert!(output.contains("parley admin create-key"), "{output}");
    for token in [&key, &offline_key, &viewer_key] {
        let status = client.get(format!("{base}/admin/v1/agents")).bearer_auth(token).send().await.unwrap().status();
        assert_eq!(status, 200);
    }
    node.terminate();
}

#[test]
fn invalid_settings_stop_start_up_naming_the_key() {
    let data_dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 4] = [
        ("PARLEY_SERVER__LISTEN", "not-an-address", "server.listen"),
        ("PARLEY_SERVR__LISTEN", "127.0.0.1:0", "PARLEY_SERVR__LISTEN"),
        ("PARLEY_OPERATOR_KEY", "short", "operator_key"),
        ("PARLEY_RATE_LIMIT__BURST", "-4", "rate_limit.burst"),
    ];
    for (variable, value, named) in cases {
        let output =
            clean_command().arg("serve").arg("--data-dir").arg(data_dir.path()).env(variable, value).output().unwrap();
        assert!(!output.status.success(), "{variable}={value} must stop start-up");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{variable}={value}: {stderr}");
    }
    let settings = data_dir.path().join("parley.toml");
    std::fs::write(&settings, "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bites = 5\n").unwrap();
    let output = clean_command().arg("serve").arg("--config").arg(&settings).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_body_bites") && stderr.contains("parley.toml"), "{stderr}");
}

#[test]
fn help_and_version() {
    let version = clean_command().arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("parley {}", env!("CARGO_PKG_VERSION")));
    for args in [&["--help"][..], &["serve", "--help"], &["admin", "--help"], &["admin", "create-key", "--help"]] {
        let help = clean_command().args(args).output().unwrap();
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("--config") && text.contains("--data-dir"), "{args:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_configured_certificate() {
    let data_dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = data_dir.path().join("cert.pem");
    let key_path = data_dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let dir = data_dir.path().join("data");
    let mut node = Node::start(|command| {
        command
            .arg("--data-dir")
            .arg(&dir)
            .env("PARLEY_SERVER__TLS__CERT_PATH", &cert_path)
            .env("PARLEY_SERVER__TLS__KEY_PATH", &key_path)
            .env("PARLEY_DEMO__ENABLED", "false");
    });
    let base = node.base_url();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let port = base.rsplit(':').next().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let response = client.get(format!("https://localhost:{port}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // Plain HTTP on the TLS port is not served.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.map(|r| r.status() != 200).unwrap_or(true));
    node.terminate();
}

/// A TURN credential sealed with `parley secrets seal-turn-credential` opens on the node that
/// sealed it; another node's key refuses to start, naming the setting; a credential in the clear
/// works with a warning recommending sealing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_are_sealed_for_the_settings_and_opened_at_start_up() {
    use std::io::Write;
    let data_dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let seal = |dir: &std::path::Path, input: &str| {
        let mut child = clean_command()
            .args(["secrets", "seal-turn-credential", "--data-dir"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let output = seal(data_dir.path(), "turn-secret-binary\n");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let sealed = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(sealed.starts_with("v1.") && !sealed.contains("turn-secret-binary"), "{sealed}");
    let empty = seal(data_dir.path(), "");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("standard input"));

    let settings = |credential: &str| {
        let path = data_dir.path().join(format!("turn-{}.toml", credential.len()));
        std::fs::write(
            &path,
            format!(
                "[webrtc]\nturn_servers = [{{ urls = [\"turn:turn.example.net:3478\"], username = \"parley\", credential = \"{credential}\" }}]\n"
            ),
        )
        .unwrap();
        path
    };
    // `retention run` opens the runtime as `serve` does, then exits.
    let open = |config: &std::path::Path, dir: &std::path::Path| {
        clean_command().args(["retention", "run", "--config"]).arg(config).arg("--data-dir").arg(dir).output().unwrap()
    };
    let sealed_settings = settings(&sealed);
    let output = open(&sealed_settings, data_dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("in the clear"), "{stderr}");

    // Another node's key cannot open it: start-up stops, naming the setting and the entry.
    let output = open(&sealed_settings, other_dir.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`webrtc.turn_servers` entry 1 (`credential`)"), "{stderr}");
    assert!(!stderr.contains(&sealed), "{stderr}");

    // In the clear it still works, with a warning.
    let output = open(&settings("plain-turn-secret"), data_dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("in the clear") && stderr.contains("seal-turn-credential"), "{stderr}");
    assert!(!stderr.contains("plain-turn-secret"), "the credential is never logged: {stderr}");

    // A node serves with the sealed credential.
    let mut node = Node::start(|command| {
        command.arg("--config").arg(&sealed_settings).arg("--data-dir").arg(data_dir.path());
    });
    let base = node.base_url();
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    node.terminate();
}
