//! The executor: runs one command as `shell -c command` in its own process group, with its
//! environment and working directory, a timeout (TERM, grace, KILL), head+tail output capture
//! and resource usage. Kills go to the whole process group, so a shell's children die with it.
//!
//! Exit is observed through a pidfd (no SIGCHLD handler, no thread per run) and the child is
//! reaped with `wait4`, which also returns its CPU time and peak RSS. When the shell exits,
//! anything left in its process group is killed, so no orphan keeps running (or keeps the output
//! pipe open) after its run is recorded.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub shell: String,
    pub command: String,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub timeout: Option<Duration>,
    /// TERM → KILL delay after a timeout.
    pub timeout_grace: Duration,
    /// TERM → KILL delay after a kill request.
    pub kill_grace: Duration,
    /// Bytes of output kept (half head, half tail).
    pub max_output: usize,
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The command exited or died on its own.
    Exited,
    TimedOut,
    /// Killed on request; the reason is recorded.
    Killed(String),
}

/// Everything observed about a finished process.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub ending: Ending,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub output: String,
    pub output_truncated_bytes: u64,
    pub cpu_ms: i64,
    pub max_rss_kb: i64,
    pub duration: Duration,
}

/// A started process.
pub struct Child {
    pid: libc::pid_t,
    pidfd: AsyncFd<OwnedFd>,
    output: JoinHandle<Capture>,
    started: Instant,
}

/// Starts the command. Synchronous (fork/exec takes well under a millisecond).
pub fn spawn(spec: &ExecSpec) -> io::Result<Child> {
    let (reader, writer) = io::pipe()?;
    let writer2 = writer.try_clone()?;
    let mut cmd = Command::new(&spec.shell);
    cmd.arg("-c")
        .arg(&spec.command)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    let child = cmd.spawn()?;
    drop(cmd); // closes our copies of the pipe's write end, so EOF comes when the group is gone
    let pid = child.id() as libc::pid_t;
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill_group(pid, libc::SIGKILL);
            return Err(e);
        }
    };
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    let limit = spec.max_output;
    let output = tokio::spawn(async move {
        let mut cap = Capture::new(limit);
        let mut rx = receiver;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => cap.push(&buf[..n]),
            }
        }
        cap
    });
    // SAFETY: `pidfd` is an open descriptor owned by the AsyncFd for its whole lifetime.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Child {
        pid,
        pidfd,
        output,
        started: Instant::now(),
    })
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the process, enforcing the timeout and acting on kill requests (`Some(reason)`
    /// sent on `kill`).
    pub async fn wait(self, spec: &ExecSpec, mut kill: watch::Receiver<Option<String>>) -> ExecResult {
        let deadline = spec.timeout.map(|t| self.started + t);
        let mut ending = Ending::Exited;
        let mut hard_kill_at: Option<Instant> = None;
        let mut kill_open = true;
        let (status, usage) = loop {
            tokio::select! {
                ready = self.pidfd.readable() => {
                    match ready {
                        Ok(mut guard) => {
                            if let Some(r) = reap(self.pid) {
                                break r;
                            }
                            guard.clear_ready();
                        }
                        Err(_) => {
                            // cannot poll: fall back to a blocking reap on a blocking thread
                            let pid = self.pid;
                            if let Ok(Some(r)) = tokio::task::spawn_blocking(move || reap_blocking(pid)).await {
                                break r;
                            }
                        }
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && ending == Ending::Exited => {
                    ending = Ending::TimedOut;
                    kill_group(self.pid, libc::SIGTERM);
                    hard_kill_at = Some(Instant::now() + spec.timeout_grace);
                }
                changed = kill.changed(), if kill_open && ending == Ending::Exited => {
                    match changed {
                        Err(_) => kill_open = false,
                        Ok(()) => {
                            if let Some(reason) = kill.borrow_and_update().clone() {
                                ending = Ending::Killed(reason);
                                kill_group(self.pid, libc::SIGTERM);
                                hard_kill_at = Some(Instant::now() + spec.kill_grace);
                            }
                        }
                    }
                }
                _ = sleep_until(hard_kill_at.unwrap_or_else(Instant::now)), if hard_kill_at.is_some() => {
                    kill_group(self.pid, libc::SIGKILL);
                    hard_kill_at = None;
                }
            }
        };
        let duration = self.started.elapsed();
        // Whatever the shell left behind in its group goes with it.
        kill_group(self.pid, libc::SIGKILL);
        let cap = match tokio::time::timeout(Duration::from_secs(1), self.output).await {
            Ok(Ok(c)) => c,
            _ => {
                let mut c = Capture::new(0);
                c.note = Some("output incomplete: a process outside the run's group kept the pipe open".into());
                c
            }
        };
        let (output, truncated) = cap.finish();
        let (exit_code, signal) = if libc::WIFEXITED(status) {
            (Some(libc::WEXITSTATUS(status)), None)
        } else if libc::WIFSIGNALED(status) {
            (None, Some(libc::WTERMSIG(status)))
        } else {
            (None, None)
        };
        let tv_ms = |tv: libc::timeval| tv.tv_sec * 1000 + tv.tv_usec / 1000;
        ExecResult {
            ending,
            exit_code,
            signal,
            output,
            output_truncated_bytes: truncated,
            cpu_ms: tv_ms(usage.ru_utime) + tv_ms(usage.ru_stime),
            max_rss_kb: usage.ru_maxrss,
            duration,
        }
    }
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative return is a new file descriptor we now own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // pidfds are created close-on-exec by the kernel; make it non-blocking for epoll use.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(owned.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(owned.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(owned)
}

fn reap(pid: libc::pid_t) -> Option<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value for the out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    (r == pid).then_some((status, usage))
}

fn reap_blocking(pid: libc::pid_t) -> Option<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: as in `reap`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as in `reap`.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    (r == pid).then_some((status, usage))
}

/// Each run holds a few descriptors (pidfd, output pipe): raises the soft descriptor limit to
/// the hard one, as servers do, so thousands of concurrent runs (or feed subscribers) do not hit
/// the usual 1,024.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Sends `sig` to the process group led by `pgid` (errors such as "no such group" are expected
/// once it is gone and ignored).
pub fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Keeps the first and last halves of a stream, and counts what fell between.
struct Capture {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
    note: Option<String>,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Capture {
            head_cap: limit / 2,
            tail_cap: limit - limit / 2,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
            note: None,
        }
    }

    fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < self.head_cap {
            let n = (self.head_cap - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
        } else {
            self.tail.extend(data);
            let over = self.tail.len().saturating_sub(self.tail_cap);
            self.tail.drain(..over);
        }
    }

    /// The kept text (lossy UTF-8) and the number of bytes dropped from the middle.
    fn finish(self) -> (String, u64) {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let dropped = self.total - kept;
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if dropped > 0 {
            out.push_str(&format!("\n[... {dropped} bytes omitted ...]\n"));
        }
        let tail: Vec<u8> = self.tail.into_iter().collect();
        out.push_str(&String::from_utf8_lossy(&tail));
        if let Some(n) = self.note {
            out.push_str(&format!("\n[{n}]"));
        }
        (out, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cmd: &str) -> ExecSpec {
        ExecSpec {
            shell: "/bin/sh".into(),
            command: cmd.into(),
            env: vec![("GREETING".into(), "hello".into())],
            workdir: None,
            timeout: None,
            timeout_grace: Duration::from_millis(300),
            kill_grace: Duration::from_millis(300),
            max_output: 1024,
        }
    }

    async fn run(s: &ExecSpec) -> ExecResult {
        let (_tx, rx) = watch::channel(None);
        spawn(s).unwrap().wait(s, rx).await
    }

    #[tokio::test]
    async fn captures_output_env_and_exit_code() {
        let r = run(&spec("echo $GREETING; echo err >&2; exit 3")).await;
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.ending, Ending::Exited);
        assert_eq!(r.output, "hello\nerr\n");
        assert_eq!(r.output_truncated_bytes, 0);
    }

    #[tokio::test]
    async fn keeps_head_and_tail_of_long_output() {
        let r = run(&spec("printf 'A%.0s' $(seq 1 2000); printf 'Z%.0s' $(seq 1 2000)")).await;
        assert_eq!(r.output_truncated_bytes, 4000 - 1024);
        assert!(r.output.starts_with(&"A".repeat(512)));
        assert!(r.output.ends_with(&"Z".repeat(512)));
        assert!(r.output.contains("2976 bytes omitted"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let mut s = spec("sleep 30; echo done");
        s.timeout = Some(Duration::from_millis(200));
        let t = std::time::Instant::now();
        let r = run(&s).await;
        assert_eq!(r.ending, Ending::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(!r.output.contains("done"));
    }

    #[tokio::test]
    async fn kill_request_stops_shell_and_children_even_if_they_ignore_term() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child.pid");
        let s = spec(&format!(
            "trap '' TERM; (trap '' TERM; sleep 600) & echo $! > {}; wait",
            marker.display()
        ));
        let (tx, rx) = watch::channel(None);
        let child = spawn(&s).unwrap();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { child.wait(&s, rx).await }
        });
        while !marker.exists() || std::fs::read_to_string(&marker).unwrap().trim().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let grandchild: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        let t = std::time::Instant::now();
        tx.send(Some("test".into())).unwrap();
        let r = waiter.await.unwrap();
        assert_eq!(r.ending, Ending::Killed("test".into()));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // the grandchild is gone too, within the second (SIGKILL is delivered asynchronously)
        let gone = || {
            // SAFETY: signal 0 only checks for existence.
            (unsafe { libc::kill(grandchild, 0) }) != 0 || is_zombie(grandchild)
        };
        while !gone() && t.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(gone(), "grandchild {grandchild} survived");
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    }

    #[tokio::test]
    async fn reports_cpu_and_memory() {
        let r = run(&spec("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")).await;
        assert_eq!(r.exit_code, Some(0));
        assert!(r.max_rss_kb > 0);
        assert!(r.cpu_ms >= 0);
    }

    #[tokio::test]
    async fn missing_workdir_or_shell_fails_to_spawn() {
        let mut s = spec("true");
        s.workdir = Some("/nonexistent/dir".into());
        assert!(spawn(&s).is_err());
        let mut s = spec("true");
        s.shell = "/bin/no-such-shell".into();
        assert!(spawn(&s).is_err());
    }
}
