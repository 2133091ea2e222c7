//! Starting a MongoDB-compatible server as a child process, for the tests and the load tests:
//! `secantusd-py` (PyPI `secantusdb`), a single-node server that speaks the MongoDB wire
//! protocol and presents itself as a one-member replica set, so change streams work. It is a
//! stand-in for `mongod`, installed by `scripts/test.sh` into `target/mongo-venv`; never used in
//! production, where masters point at a real MongoDB replica set.
//!
//! The binary is `$CRONMESH_TEST_SECANTUSD`, else `target/mongo-venv/bin/secantusd-py` of this
//! workspace. Under CI (`CI=true`) a missing binary is a failure, never a skip.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that names the server binary.
pub const BINARY_ENV: &str = "CRONMESH_TEST_SECANTUSD";

/// The stand-in server's binary, if it is installed.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(BINARY_ENV) {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mongo-venv/bin/secantusd-py");
    p.exists().then_some(p)
}

/// Whether a missing server must fail the test (CI) rather than skip it.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The binary, or `None` after printing why the caller skips (panics under CI).
pub fn binary_or_skip(what: &str) -> Option<PathBuf> {
    match find_binary() {
        Some(b) => Some(b),
        None if required() => panic!(
            "{what}: the MongoDB stand-in server is not installed ({BINARY_ENV} unset and no target/mongo-venv/bin/secantusd-py); scripts/test.sh installs it"
        ),
        None => {
            // Visible in the test output on purpose.
            eprintln!("SKIPPED: {what}: no MongoDB stand-in server (run scripts/test.sh once, or set {BINARY_ENV})");
            None
        }
    }
}

/// One server process.
pub struct MongoProcess {
    child: Option<Child>,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    pub port: u16,
    /// `mongodb://127.0.0.1:PORT` (add `/DB` for a database).
    pub uri: String,
}

impl MongoProcess {
    /// Starts the server with its data in `data_dir` on `port`.
    pub fn start(binary: &Path, data_dir: &Path, port: u16) -> io::Result<Self> {
        Self::start_with(binary, data_dir, port, &[])
    }

    /// Like `start`, with more server flags (e.g. `--oplog-max-entries N`).
    pub fn start_with(binary: &Path, data_dir: &Path, port: u16, extra: &[&str]) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let mut args: Vec<String> = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--storage-path".into(),
            data_dir.join("db").display().to_string(),
            "--log-level".into(),
            "WARNING".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = MongoProcess {
            child: None,
            binary: binary.to_path_buf(),
            args,
            log: data_dir.join("server.log"),
            port,
            uri: format!("mongodb://127.0.0.1:{port}"),
        };
        p.spawn()?;
        Ok(p)
    }

    /// Starts one on a free port in `dir`, waits until it answers (retrying on a port taken
    /// meanwhile); `None` when the server is not installed (after saying so; panics under CI).
    pub async fn start_for_tests(dir: &Path, what: &str) -> Option<MongoProcess> {
        Self::start_for_tests_with(dir, what, &[]).await
    }

    /// Like `start_for_tests`, with more server flags.
    pub async fn start_for_tests_with(dir: &Path, what: &str, extra: &[&str]) -> Option<MongoProcess> {
        let binary = binary_or_skip(what)?;
        let mut last = String::new();
        for attempt in 0..3 {
            let d = dir.join(format!("mongo-{attempt}"));
            match Self::start_with(&binary, &d, crate::etcd_process::free_port(), extra) {
                Ok(mut p) => match p.wait_ready(Duration::from_secs(30)).await {
                    Ok(()) => return Some(p),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        panic!("{what}: the MongoDB stand-in server did not start: {last}");
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the server answers a `ping`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(report) = crate::child_process::exit_report(c, &self.log, 8)
            {
                return Err(io::Error::other(format!("the MongoDB server {report}")));
            }
            if crate::logstore::mongodb_answers(&self.uri).await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the MongoDB server at {} did not answer within {timeout:?}", self.uri),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops with SIGTERM (SIGKILL after 10 s) and waits.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            crate::child_process::terminate(c, Duration::from_secs(10));
        }
    }

    /// Starts again with the same data and port (after `stop`).
    pub fn restart(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn()
    }

    /// The server's process id (for CPU and memory figures).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for MongoProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
