//! Test helpers: the stand-in intake, a builder that runs the real binary, and run fixtures.

pub mod emitted;
pub mod fixtures;
pub mod github;
pub mod intake;
pub mod postgres;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use intake::{Intake, Reply, API_KEY};

pub const BIN: &str = env!("CARGO_BIN_EXE_workflow-metrics");

/// A temp folder with a ledger and a log folder, and a way to run the binary in it.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// `--ledger`: a SQLite file in `dir`, or a fresh PostgreSQL database.
    pub ledger_arg: String,
}

impl Env {
    /// The ledger the suite runs against: SQLite, or PostgreSQL when
    /// `WORKFLOW_METRICS_TEST_LEDGER=postgres` (`scripts/test` runs the suite both ways).
    #[allow(clippy::disallowed_methods, reason = "scripts/test picks the ledger of the suite")]
    pub fn new() -> Env {
        match std::env::var("WORKFLOW_METRICS_TEST_LEDGER").as_deref() {
            Ok("postgres") => Env::postgres(),
            Ok("sqlite") | Err(_) => Env::sqlite(),
            Ok(other) => panic!("WORKFLOW_METRICS_TEST_LEDGER={other}: expected sqlite or postgres"),
        }
    }

    /// A SQLite ledger, whatever the suite runs against (tests of the file, its lock...).
    pub fn sqlite() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger_arg = dir.path().join("cache/metrics.db").to_string_lossy().into_owned();
        Env { dir, ledger_arg }
    }

    /// A fresh PostgreSQL database on the test server.
    pub fn postgres() -> Env {
        Env { dir: tempfile::tempdir().expect("temp dir"), ledger_arg: postgres::fresh_database() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ledger(&self) -> PathBuf {
        self.path("cache/metrics.db")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.path("log")
    }

    /// Writes a file in the temp folder and returns its path as a string.
    pub fn file(&self, name: &str, content: impl AsRef<[u8]>) -> String {
        let path = self.path(name);
        std::fs::write(&path, content).expect("write fixture");
        path.to_string_lossy().into_owned()
    }

    /// `send` against `intake`, with the ledger and logs in the temp folder and the test key.
    pub fn send(&self, intake: &Intake) -> Run<'_> {
        self.command(["send"]).intake(intake)
    }

    /// The binary with `args`, run in the temp folder, without any DD_ variable from outside.
    pub fn command<const N: usize>(&self, args: [&str; N]) -> Run<'_> {
        Run { env: self, args: args.iter().map(|a| a.to_string()).collect(), vars: vec![], stdin: None, defaults: true }
    }

    /// The log files written so far, oldest first.
    pub fn logs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.log_dir()) else { return vec![] };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        paths.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }

    /// The keys the ledger holds as sent, sorted, as `workflow-metrics ledger list` prints them.
    pub fn sent_keys(&self) -> Vec<String> {
        self.ledger_keys("sent")
    }

    pub fn too_old_keys(&self) -> Vec<String> {
        self.ledger_keys("too-old")
    }

    fn ledger_keys(&self, state: &str) -> Vec<String> {
        let out = self.command(["ledger", "list", "--state", state]).run();
        out.expect_code(0);
        out.stdout.lines().map(str::to_owned).collect()
    }

    /// `workflow-metrics ledger verify` passes (SQLite's integrity check).
    pub fn ledger_is_consistent(&self) {
        self.command(["ledger", "verify"]).run().expect_code(0);
    }
}

pub struct Run<'e> {
    env: &'e Env,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    defaults: bool,
}

#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl<'e> Run<'e> {
    pub fn arg(mut self, arg: impl AsRef<str>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.into(), value.into()));
        self
    }

    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// No --ledger/--log-dir added (to test the defaults, relative to the temp folder).
    pub fn no_defaults(mut self) -> Self {
        self.defaults = false;
        self
    }

    /// The intake's URL and key, and retries in milliseconds with seeded jitter.
    fn intake(self, intake: &Intake) -> Self {
        self.arg("--api-url").arg(intake.url()).var("DD_API_KEY", API_KEY).args([
            "--retry-delay-ms",
            "1",
            "--retry-max-delay-ms",
            "4",
            "--jitter-seed",
            "7",
        ])
    }

    pub fn run(self) -> Output {
        let mut command = Command::new(BIN);
        command.current_dir(self.env.dir.path()).args(&self.args);
        if self.defaults {
            let log_dir = self.env.log_dir();
            let is_send = self.args.first().is_some_and(|a| a == "send");
            if self.args.first().is_some_and(|a| a == "send" || a == "check" || a == "ledger") {
                command.arg("--ledger").arg(&self.env.ledger_arg);
            }
            if is_send {
                command.arg("--log-dir").arg(log_dir);
            }
        }
        for name in [
            "DD_API_KEY",
            "DD_SITE",
            "GITHUB_EVENT_PATH",
            "RUST_LOG",
            "GITHUB_TOKEN",
            "GH_TOKEN",
            "GITHUB_API_URL",
            "WORKFLOW_METRICS_LEDGER",
            "PGPASSWORD",
            "PGPASSFILE",
        ] {
            command.env_remove(name);
        }
        command.envs(self.vars.iter().map(|(k, v)| (k, v)));
        command.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn the binary");
        if let Some(input) = self.stdin {
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let output = child.wait_with_output().expect("wait for the binary");
        Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Output {
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code {} (expected {code})\nstderr:\n{}\nstdout:\n{}",
            self.code, self.stderr, self.stdout
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Sends `signal` (`-9`, `-TERM`, `-INT`) to `pid` with kill(1).
pub fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill");
    assert!(status.success() || signal == "-9");
}

/// Serves `app` on 127.0.0.1 (a free port) from a thread of its own, for the life of the tests.
pub fn serve(app: axum::Router) -> std::net::SocketAddr {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
            sender.send(listener.local_addr().expect("local addr")).expect("send addr");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    receiver.recv().expect("server started")
}

/// A file of `tests/data`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A folder of the workspace's `../shared` (real GitHub payloads, Datadog's spec). The tests that
/// read it fail when it is missing instead of passing without their data.
pub fn shared(folder: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared").join(folder);
    assert!(
        path.is_dir(),
        "{} is missing: these tests read the real payloads and the spec in the workspace's shared/ folder beside the project",
        path.display()
    );
    path
}
