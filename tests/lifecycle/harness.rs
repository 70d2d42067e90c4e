//! The install as a user does it, with nothing of the product replaced: a hub (in-process, with
//! `--public-url`), the Argo CD simulator, a fake Kubernetes API (for the identity Secret and
//! the Deployment self-update reads), the `hub token create` CLI, its printed command run by a
//! real shell (with `helm` standing in as a script that records its arguments), the chart
//! rendered from those arguments by the real Helm engine (tests/chart/render_install.py), and
//! the rendered pods' containers run as processes with exactly their arguments and environment.
//!
//! Two things a container runtime would isolate are mapped: every mount path lives under a
//! per-pod root directory (the variables naming files under a mount are rewritten to match),
//! and the admin port of `run` becomes a free local port (each pod has its own network).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use argocd_gateway::hub::{self, Hub, ServeArgs};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use base64::Engine;
use serde_json::{Value, json};

use crate::fake_api::FakeApi;
pub use crate::ports::free_port;

pub const BIN: &str = env!("CARGO_BIN_EXE_argocd-gateway");
pub const WAIT: Duration = Duration::from_secs(60);
/// Bound on one CLI command: commands that wait carry their own `--timeout` (up to 180 s in
/// these tests); this only catches a hang.
const COMMAND_WAIT: Duration = Duration::from_secs(300);

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart tests' Python with the Helm engine (tests/chart/venv.sh makes it once).
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(root().join("tests/chart/venv.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/chart/venv.sh");
        assert!(out.status.success(), "tests/chart/venv.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// A running process's result.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

pub async fn output(cmd: tokio::process::Command) -> Output {
    output_within(cmd, COMMAND_WAIT).await
}

/// Like [`output`], for a command that waits on purpose for up to `within`.
pub async fn output_within(mut cmd: tokio::process::Command, within: Duration) -> Output {
    cmd.kill_on_drop(true).stdin(Stdio::null());
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .expect("the command finished in time")
        .expect("the command ran");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Hub, simulator, fake Kubernetes API and a working directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub hub: Hub,
    pub admin_token_file: PathBuf,
    pub admin: String,
    pub sim: SimHandle,
    pub argocd_token: String,
    pub kube: FakeApi,
    pub kubeconfig: PathBuf,
    pub http: reqwest::Client,
}

impl Env {
    /// Everything running; `tls` chooses how the simulator serves.
    pub async fn start(tls: SimTls) -> Env {
        Self::start_with(SimOptions {
            tls,
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(options: SimOptions) -> Env {
        argocd_gateway::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let grpc_port = free_port();
        let hub = hub::start(ServeArgs {
            hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            grpc_addr: format!("127.0.0.1:{grpc_port}").parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            public_url: Some(format!("https://localhost:{grpc_port}")),
            health_check_interval: Duration::from_secs(3600),
            ..ServeArgs::new(dir.path().join("hub"))
        })
        .await
        .expect("hub starts");
        let admin_token_file = hub.admin_token_path.clone();
        let admin = std::fs::read_to_string(&admin_token_file).unwrap().trim().to_owned();
        let sim = Simulator::start(options).await.unwrap();
        sim.add_synthetic_apps(5);
        let argocd_token = sim.add_token(TokenSpec::account("gateway"));
        let kube = FakeApi::new();
        let server = kube.serve().await;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
            ),
        )
        .unwrap();
        // Where the user runs helm: the chart at ./charts, and helm itself, which only
        // records what it was asked.
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("bin")).unwrap();
        std::os::unix::fs::symlink(root().join("charts"), work.join("charts")).unwrap();
        let shim = work.join("bin/helm");
        std::fs::write(&shim, "#!/bin/sh\nprintf '%s\\0' \"$@\" > \"$HELM_ARGV\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        Env {
            dir,
            hub,
            admin_token_file,
            admin,
            sim,
            argocd_token,
            kube,
            kubeconfig,
            http: reqwest::Client::new(),
        }
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn hub_api(&self) -> String {
        format!("http://{}", self.hub.http_addr)
    }

    pub async fn api(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.hub_api()))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The `hub …` CLI against this hub.
    pub fn hub_cli(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("hub")
            .args(args)
            .arg("--hub-api")
            .arg(self.hub_api())
            .arg("--admin-token-file")
            .arg(&self.admin_token_file);
        cmd
    }

    /// `hub token create` with `flags`; the printed command and token.
    pub async fn token_create(&self, flags: &[&str]) -> Printed {
        let mut cmd = self.hub_cli(&["token", "create"]);
        cmd.args(flags);
        let out = output(cmd).await;
        assert_eq!(out.code, Some(0), "{}", out.text());
        let field = |name: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("no {name} in\n{}", out.stdout))
        };
        let mut command = Vec::new();
        for line in out.stdout.lines().skip_while(|l| !l.starts_with("helm upgrade")) {
            command.push(line);
            if !line.ends_with('\\') {
                break;
            }
        }
        assert!(!command.is_empty(), "no helm command in\n{}", out.stdout);
        Printed {
            command: command.join("\n"),
            token: field("token:"),
            id: field("id:"),
            stderr: out.stderr,
        }
    }

    /// Runs `command` in a shell where `helm` records its arguments; returns them.
    pub async fn shell_helm_argv(&self, command: &str) -> Vec<String> {
        let argv_file = self.work().join("helm.argv");
        let _ = std::fs::remove_file(&argv_file);
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg("-c")
            .arg(command)
            .current_dir(self.work())
            .env("HELM_ARGV", &argv_file)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.work().join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        let out = output(cmd).await;
        assert_eq!(
            out.code,
            Some(0),
            "the printed command failed in bash:\n{command}\n{}",
            out.text()
        );
        let raw = std::fs::read(&argv_file).expect("helm was called");
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8(a.to_vec()).unwrap())
            .collect()
    }

    /// Renders a helm invocation with the real Helm engine, from the working directory.
    pub async fn render(&self, argv: &[String]) -> Rendered {
        let argv_file = self.work().join("render.argv");
        let mut raw = Vec::new();
        for a in argv {
            raw.extend_from_slice(a.as_bytes());
            raw.push(0);
        }
        std::fs::write(&argv_file, raw).unwrap();
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(root().join("tests/chart/render_install.py"))
            .arg("--argv")
            .arg(&argv_file)
            .arg("--cwd")
            .arg(self.work());
        let out = output(cmd).await;
        assert_eq!(out.code, Some(0), "render_install.py failed:\n{}", out.text());
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    /// The printed command rendered; panics if the chart refused it.
    pub async fn install(&self, printed: &Printed) -> Rendered {
        let argv = self.shell_helm_argv(&printed.command).await;
        let r = self.render(&argv).await;
        assert!(
            r.ok,
            "the chart refused the printed command: {}",
            r.error.as_deref().unwrap_or("")
        );
        r
    }

    /// A rendered pod, ready to run.
    pub fn pod(&self, r: &Rendered, kind: &str, suffix: &str) -> Pod {
        let name = format!("{}{suffix}", r.fullname());
        let spec = r.pod_spec(kind, &name);
        let pod_root = self.dir.path().join("pods").join(format!("{kind}-{name}"));
        let _ = std::fs::remove_dir_all(&pod_root);
        Pod::materialise(r, &spec, &pod_root, &format!("{name}-pod"))
    }

    /// Runs a pod's container to its end.
    pub async fn run_to_end(&self, pod: &Pod) -> Output {
        output(pod.command(&self.kubeconfig)).await
    }

    /// Starts a pod's container; its log (stderr) is collected as it comes.
    pub fn spawn(&self, pod: &Pod) -> Running {
        let mut cmd = pod.command(&self.kubeconfig);
        cmd.kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the container starts");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        Running { _child: child, log }
    }

    /// Polls `f` until true (bounded by [`WAIT`]).
    pub async fn until<F, Fut>(&self, what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not within {WAIT:?}: {what}");
    }

    pub async fn token_status(&self, id: &str) -> Value {
        let (status, v) = self
            .api(reqwest::Method::GET, &format!("/api/v1/registration-tokens/{id}"))
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    pub async fn gateways(&self) -> Vec<Value> {
        let (status, v) = self.api(reqwest::Method::GET, "/api/v1/gateways").await;
        assert_eq!(status, 200, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

/// A running container; killed when dropped.
pub struct Running {
    _child: tokio::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// What `hub token create` printed.
pub struct Printed {
    pub command: String,
    pub token: String,
    pub id: String,
    pub stderr: String,
}

/// The chart as the Helm engine rendered it.
#[derive(Debug, serde::Deserialize)]
pub struct Rendered {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default, rename = "createNamespace")]
    pub create_namespace: bool,
    #[serde(default)]
    pub values: Value,
    #[serde(default)]
    pub docs: Vec<Value>,
    #[serde(default)]
    pub notes: String,
}

impl Rendered {
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    /// The Deployment's name (the release's full name).
    pub fn fullname(&self) -> String {
        self.docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .and_then(|d| d["metadata"]["name"].as_str())
            .expect("a Deployment")
            .to_owned()
    }

    pub fn pod_spec(&self, kind: &str, name: &str) -> Value {
        let doc = self
            .find(kind, name)
            .unwrap_or_else(|| panic!("no {kind}/{name} rendered"));
        match kind {
            "CronJob" => doc["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
            _ => doc["spec"]["template"]["spec"].clone(),
        }
    }

    /// The plain environment of a workload's container, without running anything.
    pub fn container_env(&self, kind: &str, name: &str) -> HashMap<String, String> {
        self.pod_spec(kind, name)["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
            .collect()
    }

    /// The data of a rendered Secret, decoded.
    pub fn secret_data(&self, name: &str) -> Option<HashMap<String, Vec<u8>>> {
        let s = self.find("Secret", name)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Some(
            s["data"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), b64.decode(v.as_str().unwrap_or("")).unwrap()))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }
}

/// A container ready to run: its arguments and environment, its mounts on disk.
pub struct Pod {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The admin address `run` was given, mapped to a free local port.
    #[allow(dead_code)]
    pub admin: Option<String>,
    pub root: PathBuf,
}

impl Pod {
    fn materialise(r: &Rendered, spec: &Value, root: &Path, pod_name: &str) -> Pod {
        std::fs::create_dir_all(root).unwrap();
        let containers = spec["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        assert!(
            c.get("command").is_none(),
            "the image's entrypoint runs the binary: {c}"
        );
        let volumes: HashMap<&str, &Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let path = m["mountPath"].as_str().unwrap().to_owned();
            let host = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&host).unwrap();
            let vol = volumes[m["name"].as_str().unwrap()];
            let files: Vec<(String, Vec<u8>)> = if let Some(secret) = vol.get("secret") {
                let name = secret["secretName"].as_str().unwrap();
                let data = r.secret_data(name).unwrap_or_else(|| {
                    assert_eq!(
                        secret["optional"],
                        json!(true),
                        "Secret {name} is neither rendered nor optional"
                    );
                    HashMap::new()
                });
                match secret["items"].as_array() {
                    Some(items) => items
                        .iter()
                        .filter_map(|i| {
                            let key = i["key"].as_str().unwrap();
                            data.get(key)
                                .map(|d| (i["path"].as_str().unwrap().to_owned(), d.clone()))
                        })
                        .collect(),
                    None => data.into_iter().collect(),
                }
            } else if let Some(cm) = vol.get("configMap") {
                let name = cm["name"].as_str().unwrap();
                let doc = r.find("ConfigMap", name).unwrap_or_else(|| panic!("ConfigMap {name}"));
                doc["data"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap().as_bytes().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                assert!(vol.get("emptyDir").is_some(), "unexpected volume {vol}");
                vec![]
            };
            for (file, data) in files {
                std::fs::write(host.join(file), data).unwrap();
            }
            mounts.push((path, host));
        }
        // Longest mount path first, so nested mounts map to the right directory.
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let map_path = |value: &str| -> String {
            value
                .split(',')
                .map(|part| {
                    for (path, host) in &mounts {
                        if part == path || part.starts_with(&format!("{path}/")) {
                            return format!("{}{}", host.display(), &part[path.len()..]);
                        }
                    }
                    part.to_owned()
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let namespace = &r.namespace;
        let mut env = Vec::new();
        let mut admin = None;
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                map_path(v)
            } else {
                match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.namespace") => namespace.clone(),
                    Some("metadata.name") => pod_name.to_owned(),
                    other => panic!("unexpected env source {other:?} in {e}"),
                }
            };
            let value = if name == "ARGOCD_GATEWAY_ADMIN_ADDR" {
                let mapped = format!("127.0.0.1:{}", free_port());
                admin = Some(mapped.clone());
                mapped
            } else {
                value
            };
            env.push((name, value));
        }
        let args = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        Pod {
            args,
            env,
            admin,
            root: root.to_owned(),
        }
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The container's process: its arguments and only its environment, plus the
    /// KUBECONFIG that stands in for the pod's service account.
    pub fn command(&self, kubeconfig: &Path) -> tokio::process::Command {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.exec(kubeconfig, &args)
    }

    /// Another command in the same container, as `kubectl exec` runs it: the container's
    /// environment, other arguments.
    pub fn exec(&self, kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KUBECONFIG", kubeconfig)
            .current_dir(&self.root);
        cmd
    }
}
