//! One cgroup (v2) per run, so that a run's kill reaches every process it started, also those
//! that left its process group with `setsid` or a double fork.
//!
//! At start the worker finds its own cgroup (`/proc/self/cgroup`, the `0::` line) and the
//! cgroup2 mount, and creates `cronmesh-{id}.{pid}/` under it; each run gets `run-{run_id}/`
//! there. The child is born in its run's cgroup (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7;
//! before that, or where a seccomp filter refuses `clone3`, it writes `0` to the cgroup's
//! `cgroup.procs` before it execs), so everything it forks starts inside. When the
//! run ends, `cgroup.kill` (Linux 5.14; before that, SIGKILL to each member of `cgroup.procs`)
//! kills what is left and the directory is removed. The worker needs to be allowed to create
//! cgroups (root, or a delegated subtree: systemd's `Delegate=yes`); otherwise `detect` says
//! why and runs are only killed by process group. Directories of workers that died are cleaned
//! up by the next worker that starts beside them.
//!
//! No controller is enabled: the cgroups only group processes (`cgroup.kill`, `cgroup.events`),
//! so the "no internal processes" rule never applies and the worker stays in its own cgroup.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The parent cgroup of this worker's runs.
#[derive(Debug)]
pub struct RunCgroups {
    base: PathBuf,
    /// `cgroup.kill` exists (Linux 5.14 and later).
    has_kill: bool,
}

/// One run's cgroup. The child is born in it (`clone3` with `CLONE_INTO_CGROUP` and `dir_fd`),
/// or, where the kernel lacks that, writes itself into `procs` before it execs.
#[derive(Debug)]
pub struct RunCgroup {
    dir: PathBuf,
    dir_fd: OwnedFd,
    procs: OwnedFd,
    has_kill: bool,
}

/// open(2) of `path` with `flags`, close-on-exec.
fn open_fd(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open(2) with a valid C string; a non-negative result is a descriptor we own.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Where the cgroup2 hierarchy is mounted and this process' place in it.
fn own_cgroup_dir() -> Result<PathBuf, String> {
    let own =
        std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process is in no cgroup v2 hierarchy (cgroup v1 only)")?
        .trim()
        .to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    for line in mounts.lines() {
        // id parent major:minor root mountpoint options ... - fstype source superoptions
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (Some(root), Some(mountpoint)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let Some(rest) = path.strip_prefix(root.trim_end_matches('/')) else {
            continue;
        };
        return Ok(PathBuf::from(mountpoint).join(rest.trim_start_matches('/')));
    }
    Err("no cgroup2 file system is mounted".into())
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

impl RunCgroups {
    /// Sets up `cronmesh-{worker_id}.{pid}/` under this process' cgroup, or says why it cannot.
    pub fn detect(worker_id: &str) -> Result<Self, String> {
        let own = own_cgroup_dir()?;
        let base = own.join(format!("cronmesh-{worker_id}.{}", std::process::id()));
        match std::fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", base.display())),
        }
        let has_kill = base.join("cgroup.kill").exists();
        let me = RunCgroups { base, has_kill };
        me.clean_up_after_dead_workers(&own);
        Ok(me)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Kills and removes the run cgroups of workers beside this one whose process is gone (a
    /// SIGKILLed worker leaves its cgroups, and possibly escaped processes, behind).
    fn clean_up_after_dead_workers(&self, own: &Path) {
        let Ok(entries) = std::fs::read_dir(own) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("cronmesh-")
                .and_then(|rest| rest.rsplit_once('.'))
                .and_then(|(_, pid)| pid.parse::<i32>().ok())
            else {
                continue;
            };
            if pid_alive(pid) {
                continue;
            }
            let dir = e.path();
            if let Ok(runs) = std::fs::read_dir(&dir) {
                for r in runs.flatten().filter(|r| r.path().is_dir()) {
                    kill_dir(&r.path(), self.has_kill);
                    let _ = remove_when_empty_blocking(&r.path());
                }
            }
            if std::fs::remove_dir(&dir).is_ok() {
                tracing::info!(cgroup = %dir.display(), "removed the run cgroups of a worker that died");
            }
        }
    }

    /// Creates the cgroup of one run.
    pub fn create(&self, run_id: &str) -> io::Result<RunCgroup> {
        let dir = self.base.join(format!("run-{run_id}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let fds = open_fd(&dir, libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|d| Ok((d, open_fd(&dir.join("cgroup.procs"), libc::O_WRONLY)?)));
        match fds {
            Ok((dir_fd, procs)) => Ok(RunCgroup {
                dir,
                dir_fd,
                procs,
                has_kill: self.has_kill,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }
}

impl Drop for RunCgroups {
    fn drop(&mut self) {
        // every run's cgroup is gone by now (or will be cleaned up by the next worker)
        let _ = std::fs::remove_dir(&self.base);
    }
}

fn kill_dir(dir: &Path, has_kill: bool) {
    if has_kill && std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    // older kernels: every member, a few rounds (a fork may race with the first)
    for _ in 0..3 {
        let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            return;
        };
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid read from the run's own cgroup.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn remove_when_empty_blocking(dir: &Path) -> io::Result<()> {
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    std::fs::remove_dir(dir)
}

impl RunCgroup {
    /// The descriptor the child writes `0` to (before exec) to enter the cgroup.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The cgroup's directory, for `clone3`'s `CLONE_INTO_CGROUP`.
    pub fn dir_fd(&self) -> RawFd {
        self.dir_fd.as_raw_fd()
    }

    pub fn dir_path(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL to every process of the run.
    pub fn kill(&self) {
        kill_dir(&self.dir, self.has_kill);
    }

    /// Kills what is left and removes the cgroup (waiting up to 1 s for the processes to go).
    pub async fn kill_and_remove(self) {
        self.kill();
        for _ in 0..100 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        tracing::warn!(cgroup = %self.dir.display(), "a run's cgroup still has processes 1 s after SIGKILL; left for the next start to clean up");
    }
}
