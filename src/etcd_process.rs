//! Starting etcd as a child process: the private etcd of `cronmesh standalone`, and the etcd
//! clusters the tests start (temp dirs, free ports). Not used in production deployments, which
//! point at an existing etcd cluster.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One etcd member.
pub struct EtcdProcess {
    child: Option<Child>,
    binary: String,
    args: Vec<String>,
    log: PathBuf,
    /// `http://127.0.0.1:PORT`
    pub client_url: String,
    /// Where `/health` answers over plain HTTP: the client URL, or a metrics URL of its own
    /// when clients must speak TLS.
    health_addr: String,
    pub peer_url: String,
    pub name: String,
    pub data_dir: PathBuf,
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("can bind 127.0.0.1:0")
}

/// The TLS of an etcd's client port: its own certificate, and (`client_ca`) the CA whose
/// client certificates it requires (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl EtcdProcess {
    /// Starts a one-member cluster whose clients speak TLS (`https://`); `/health` is served
    /// on a plain-HTTP metrics port of its own (`metrics_port`).
    pub fn start_single_tls(
        binary: &str,
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        metrics_port: u16,
        tls: &EtcdTls,
    ) -> io::Result<Self> {
        let peer = format!("http://127.0.0.1:{peer_port}");
        let client_url = format!("https://127.0.0.1:{client_port}");
        let mut extra = vec![
            format!("--cert-file={}", tls.cert.display()),
            format!("--key-file={}", tls.key.display()),
            format!("--listen-metrics-urls=http://127.0.0.1:{metrics_port}"),
        ];
        if let Some(ca) = &tls.client_ca {
            extra.push("--client-cert-auth".into());
            extra.push(format!("--trusted-ca-file={}", ca.display()));
        }
        let mut p = Self::new_member(
            binary,
            "default",
            data_dir,
            &client_url,
            &peer,
            &format!("default={peer}"),
            extra,
        )?;
        p.health_addr = format!("127.0.0.1:{metrics_port}");
        p.spawn()?;
        Ok(p)
    }

    /// Starts a one-member cluster.
    pub fn start_single(binary: &str, data_dir: &Path, client_port: u16, peer_port: u16) -> io::Result<Self> {
        let peer = format!("http://127.0.0.1:{peer_port}");
        Self::start_member(
            binary,
            "default",
            data_dir,
            client_port,
            peer_port,
            &format!("default={peer}"),
        )
    }

    /// Starts one member of a (possibly multi-member) cluster.
    pub fn start_member(
        binary: &str,
        name: &str,
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
    ) -> io::Result<Self> {
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut p = Self::new_member(
            binary,
            name,
            data_dir,
            &client_url,
            &peer_url,
            initial_cluster,
            Vec::new(),
        )?;
        p.spawn()?;
        Ok(p)
    }

    fn new_member(
        binary: &str,
        name: &str,
        data_dir: &Path,
        client_url: &str,
        peer_url: &str,
        initial_cluster: &str,
        extra: Vec<String>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data_dir.join("member-data").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={initial_cluster}"),
            "--initial-cluster-state=new".into(),
            "--initial-cluster-token=cronmesh".into(),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
            "--log-level=warn".into(),
        ];
        args.extend(extra);
        Ok(EtcdProcess {
            child: None,
            binary: binary.to_string(),
            args,
            log: data_dir.join("etcd.log"),
            health_addr: client_url.trim_start_matches("http://").to_string(),
            client_url: client_url.to_string(),
            peer_url: peer_url.to_string(),
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
        })
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args);
        // Own process group: a Ctrl-C in the terminal reaches cronmesh, which then drains and
        // stops etcd last. And etcd dies with its parent, so no orphan keeps the ports.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start {:?}: {e} (install etcd: apt-get install etcd-server)",
                        self.binary
                    ),
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/health` answers healthy.
    pub async fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        let addr = self.health_addr.clone();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(report) = crate::child_process::exit_report(c, &self.log, 5)
            {
                return Err(io::Error::other(format!("etcd {report}")));
            }
            if health(&addr).await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("etcd at {} not healthy after {timeout:?}", self.client_url),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops with SIGTERM (SIGKILL after 5 s) and waits.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            crate::child_process::terminate(c, Duration::from_secs(5));
        }
    }

    /// Kills with SIGKILL and waits.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again with the same data and ports (after `stop` or `kill`).
    pub fn restart(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            self.stop();
        }
        // the member is already part of a cluster: it must not try to create one
        for a in self.args.iter_mut() {
            if a == "--initial-cluster-state=new" {
                *a = "--initial-cluster-state=existing".into();
            }
        }
        self.spawn()
    }

    /// The running member's process id (for CPU and memory figures).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn health(addr: &str) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(1000), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).contains("\"health\":\"true\"")
}
