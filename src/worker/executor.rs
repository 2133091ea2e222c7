//! The executor: runs one command as `shell -c command` in its own process group, with its
//! environment and working directory, a timeout (TERM, grace, KILL), head+tail output capture
//! and resource usage. Kills go to the whole process group, so a shell's children die with it.
//!
//! Exit is observed through a pidfd (no SIGCHLD handler, no thread per run) and the child is
//! reaped with `wait4`, which also returns its CPU time and peak RSS. When the shell exits,
//! anything left in its process group is killed, so no orphan keeps running (or keeps the output
//! pipe open) after its run is recorded.

use super::cgroup::{RunCgroup, RunCgroups};
use crate::cluster::run_as::RunAsRefusal;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The command's whole environment: nothing else of the worker's reaches it.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub timeout: Option<Duration>,
    /// TERM → KILL delay after a timeout.
    pub timeout_grace: Duration,
    /// TERM → KILL delay after a kill request.
    pub kill_grace: Duration,
    /// Bytes of output kept (half head, half tail).
    pub max_output: usize,
    /// Where runs get their own cgroup (None: killed by process group only).
    pub cgroups: Option<Arc<RunCgroups>>,
    /// Names the run's cgroup.
    pub run_id: String,
    /// stderr in a pipe of its own (its bytes marked in `stderr_spans`); otherwise it shares
    /// stdout's pipe, so the output keeps the exact order of writes.
    pub separate_stderr: bool,
    /// The user the command runs as (`run_as`), looked up before the spawn; None: the
    /// worker's own.
    pub identity: Option<Arc<Identity>>,
    /// Start the shell now but hold it at a gate until [`Gate::open`]: its stdin is the gate's
    /// pipe until then, and the command runs only after one line arrives on it (the shell's
    /// own `read`), with stdin from /dev/null as without a gate. Only for shells that take
    /// `read` and `exec` ([`can_gate`]); the others start ungated.
    pub gate: bool,
}

/// Whether `shell` is a POSIX shell that can hold a command at a gate (`read`, `exec`).
pub fn can_gate(shell: &str) -> bool {
    let name = std::path::Path::new(shell)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    matches!(
        name,
        "sh" | "dash" | "bash" | "ash" | "ksh" | "mksh" | "zsh" | "busybox"
    ) && !shell.contains(char::is_whitespace)
}

/// The gated form of a command: the shell waits for a line on stdin (the gate), then puts
/// stdin back to /dev/null and runs the command, on the same line (so its line numbers are
/// its own). EOF instead of a line (the worker is gone) exits 125 and runs nothing.
fn gated_command(command: &str) -> String {
    format!("IFS= read -r _ || exit 125; exec </dev/null; {command}")
}

/// The gate of a held process: one line written to it lets the command run.
pub struct Gate(io::PipeWriter);

impl Gate {
    /// Lets the held command run now. An error: the process is gone (it ran nothing).
    pub fn open(self) -> io::Result<()> {
        let mut w = self.0;
        io::Write::write_all(&mut w, b"\n")
    }
}

/// A user to run a command as: what `getpwnam_r` and `getgrouplist` say, read in the worker
/// before the spawn, so that the child between fork and exec only makes three system calls
/// (`setgroups`, `setgid`, `setuid`) with what is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Every group the user is in, its primary group included: the run's supplementary
    /// groups, none of the worker's.
    pub groups: Vec<libc::gid_t>,
    pub home: String,
    pub shell: String,
}

impl Identity {
    /// Looks `user` up in the system's user database (NSS: `/etc/passwd`, LDAP, …).
    pub fn lookup(user: &str) -> Result<Identity, RunAsRefusal> {
        use std::ffi::{CStr, CString};
        let lookup_failed = |reason: String| RunAsRefusal::Lookup {
            user: user.into(),
            reason,
        };
        let name = CString::new(user).map_err(|_| lookup_failed("the name has a NUL byte".into()))?;
        // SAFETY: sysconf has no memory effects.
        let hint = unsafe { libc::sysconf(libc::_SC_GETPW_R_SIZE_MAX) };
        let mut buf: Vec<libc::c_char> = vec![0; if hint > 0 { hint as usize } else { 16 * 1024 }];
        // SAFETY: zeroed passwd is a valid out-parameter.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        loop {
            // SAFETY: every pointer is valid for the call; buf's length is passed.
            let r = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
            match r {
                libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
                // no entry (getpwnam_r(3): these errors mean "not found" on some systems)
                0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM if found.is_null() => {
                    return Err(RunAsRefusal::UnknownUser { user: user.into() });
                }
                0 => break,
                e => return Err(lookup_failed(io::Error::from_raw_os_error(e).to_string())),
            }
        }
        // SAFETY: getpwnam_r succeeded: the strings point into buf, alive here.
        let text = |p: *const libc::c_char| unsafe {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let (uid, gid, home, shell) = (pw.pw_uid, pw.pw_gid, text(pw.pw_dir), text(pw.pw_shell));
        let mut groups: Vec<libc::gid_t> = vec![0; 64];
        loop {
            let mut n = groups.len() as libc::c_int;
            // SAFETY: groups has room for n entries; getgrouplist writes at most n and says how
            // many it needs in n.
            let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
            if r >= 0 {
                groups.truncate(n.max(0) as usize);
                break;
            }
            if groups.len() >= 1 << 16 {
                return Err(lookup_failed("it is in more than 65536 groups".into()));
            }
            groups.resize((n.max(0) as usize).max(groups.len() * 2), 0);
        }
        Ok(Identity {
            user: user.into(),
            uid,
            gid,
            groups,
            home,
            shell,
        })
    }
}

/// Drops the process to `uid`, `gid` and exactly `groups`: `setgroups`, `setgid`, then
/// `setuid` (as root, `setuid` sets the real, effective and saved uid: there is no way back).
/// Raw system calls: glibc's wrappers would signal every thread of the worker to change them
/// all (a vfork-like child shares the worker's memory); in the child only its own thread
/// changes, which is what is wanted. Returns the failed call's errno.
///
/// # Safety
/// Only in a child between fork/clone and exec, with `groups` valid for `ngroups` entries. It
/// is async-signal-safe: no allocation, no lock.
unsafe fn switch_identity(
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: *const libc::gid_t,
    ngroups: usize,
) -> Result<(), libc::c_int> {
    // SAFETY: see the function's contract.
    unsafe {
        let errno = || *libc::__errno_location();
        if libc::syscall(libc::SYS_setgroups, ngroups, groups) != 0 {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_setgid, gid) != 0 {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_setuid, uid) != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Why a command could not be started. The message names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("working directory {dir:?} {problem} on this worker")]
    Workdir { dir: String, problem: String },
    #[error("could not start {shell:?}: {source}")]
    Shell {
        shell: String,
        #[source]
        source: io::Error,
    },
    #[error("could not create the run's cgroup under {base}: {source}")]
    Cgroup {
        base: String,
        #[source]
        source: io::Error,
    },
    #[error("could not set up the run: {0}")]
    Setup(#[source] io::Error),
    /// The shell could not be started as the run's user (switching to it, entering the
    /// working directory as it, or the exec).
    #[error("could not start {shell:?} as user {user:?}: {source}")]
    ShellAs {
        shell: String,
        user: String,
        #[source]
        source: io::Error,
    },
    /// `run_as` refused: nothing was started.
    #[error(transparent)]
    RunAs(#[from] RunAsRefusal),
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
    /// The byte ranges of `output` the command wrote to stderr (the rest is stdout, or the
    /// notes the worker adds), in order.
    pub stderr_spans: Vec<[u64; 2]>,
    pub output_truncated_bytes: u64,
    pub cpu_ms: i64,
    pub max_rss_kb: i64,
    pub duration: Duration,
}

/// A started process.
pub struct Child {
    pid: libc::pid_t,
    pidfd: AsyncFd<OwnedFd>,
    capture: Arc<Mutex<Capture>>,
    output: JoinHandle<()>,
    cgroup: Option<RunCgroup>,
    started: Instant,
    /// Held at its gate (`ExecSpec::gate`) until this is opened.
    gate: Option<Gate>,
}

/// Marks every descriptor from 3 up close-on-exec (`close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11): whatever this process inherited, or a library opened
/// without `O_CLOEXEC`, never reaches a job. One syscall, and it keeps std's `posix_spawn` path
/// (a `pre_exec` closure would make every spawn a full fork). Returns false where the kernel
/// lacks it.
pub fn cloexec_stray_descriptors() -> bool {
    // SAFETY: close_range only changes descriptor flags; no memory is involved.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    r == 0
}

/// The same, for kernels without `close_range`: through `/proc/self/fd` (once, at start).
pub fn cloexec_stray_descriptors_slowly() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number; a closed one just fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Whether `clone3` with `CLONE_INTO_CGROUP` worked so far (false after the kernel or a seccomp
/// filter refused it once).
static CLONE3_WORKS: AtomicBool = AtomicBool::new(true);

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (version 2, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

enum CloneError {
    /// This kernel (or a seccomp filter) does not do it: use the other way.
    Unsupported(io::Error),
    /// The child could not exec the shell (its errno), or the set-up failed.
    Failed(io::Error),
}

/// What the child of [`clone_into_cgroup`] needs, made before the clone: the child allocates
/// nothing and reads only this.
#[repr(C)]
struct ChildPlan {
    shell: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// Null: stay in the worker's directory.
    workdir: *const libc::c_char,
    out_fd: libc::c_int,
    /// The run's stderr (a pipe of its own, so the output can say which lines were stderr).
    stderr_fd: libc::c_int,
    /// stdin: the gate's read end, or -1 for /dev/null.
    in_fd: libc::c_int,
    err_fd: libc::c_int,
    /// Switch to this user before the working directory and exec (`run_as`).
    switch: bool,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: *const libc::gid_t,
    ngroups: usize,
}

/// The child between clone and exec. What std's `Command` does after a fork: signal handlers
/// back to default (this child may share the worker's memory, so none of the worker's handlers
/// may run in it), SIGPIPE to default, an empty signal mask, its own process group, stdin from
/// /dev/null, stdout and stderr to their output pipes, the working directory, then `execve`. A
/// failure writes its errno to the close-on-exec error pipe and exits 127.
///
/// # Safety
/// Only in a freshly cloned child, with `plan` valid; it calls only async-signal-safe functions.
unsafe extern "C" fn child_main(plan: *const ChildPlan) -> ! {
    // SAFETY: see the function's contract.
    unsafe {
        let plan = &*plan;
        let fail = |fd: libc::c_int| -> ! {
            let errno = *libc::__errno_location();
            libc::write(
                fd,
                (&errno as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>(),
            );
            libc::_exit(127)
        };
        let mut old: libc::sigaction = std::mem::zeroed();
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if libc::setpgid(0, 0) != 0 {
            fail(plan.err_fd);
        }
        let null = if plan.in_fd >= 0 {
            plan.in_fd
        } else {
            libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY)
        };
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(plan.out_fd, 1) < 0 || libc::dup2(plan.stderr_fd, 2) < 0 {
            fail(plan.err_fd);
        }
        if null > 2 && plan.in_fd < 0 {
            libc::close(null);
        }
        if plan.switch
            && let Err(errno) = switch_identity(plan.uid, plan.gid, plan.groups, plan.ngroups)
        {
            *libc::__errno_location() = errno;
            fail(plan.err_fd);
        }
        if !plan.workdir.is_null() && libc::chdir(plan.workdir) != 0 {
            fail(plan.err_fd);
        }
        libc::execve(plan.shell, plan.argv, plan.envp);
        fail(plan.err_fd)
    }
}

/// The child's own stack while it shares the worker's memory (it is gone at exec).
#[cfg(target_arch = "x86_64")]
const CHILD_STACK: usize = 64 * 1024;

/// `clone3(args)` in which the child runs `child_main(plan)` on the stack `args` names and
/// never returns here; the parent gets the syscall's result.
///
/// # Safety
/// `args` names a stack that is the child's alone; `CLONE_VFORK` keeps the parent waiting
/// until the child has exec'd or exited, so `plan` and the stack outlive the child's use.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vfork(args: &mut CloneArgs, plan: &ChildPlan) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the syscall clobbers rax, rcx and r11 only. In the child (rax 0) the kernel has
    // set rsp to the top of the given stack; it aligns it, calls child_main and cannot come back.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") child_main as unsafe extern "C" fn(*const ChildPlan) -> !,
            in("r13") plan as *const ChildPlan,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Starts `shell -c command` born in the cgroup `cgroup_dir` (`clone3` with
/// `CLONE_INTO_CGROUP | CLONE_PIDFD`), so no process of the run ever runs outside it, and no
/// migration (`cgroup.procs`) is paid for. On x86_64 it is vfork-like (`CLONE_VM | CLONE_VFORK`,
/// the child on a stack of its own, as glibc's `posix_spawn` does): no copy of the worker's page
/// tables, whose cost grows with the worker's memory (at 100,000 jobs a fork-like clone took a
/// third of a core at 100 runs a second). Elsewhere it is fork-like. The child is
/// [`child_main`]; an exec failure comes back as its errno on a close-on-exec pipe. Returns the
/// pid and its pidfd.
fn clone_into_cgroup(
    spec: &ExecSpec,
    command: &str,
    stdin: Option<&io::PipeReader>,
    out: &io::PipeWriter,
    stderr: &io::PipeWriter,
    cgroup_dir: RawFd,
) -> Result<(libc::pid_t, OwnedFd), CloneError> {
    use std::ffi::CString;
    let cstr =
        |s: &str| CString::new(s).map_err(|e| CloneError::Failed(io::Error::new(io::ErrorKind::InvalidInput, e)));
    // everything the child needs is made here: it allocates nothing
    let shell = cstr(&spec.shell)?;
    let args = [cstr(&spec.shell)?, cstr("-c")?, cstr(command)?];
    let argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).chain([std::ptr::null()]).collect();
    let workdir = spec.workdir.as_deref().map(cstr).transpose()?;
    let (err_r, err_w) = io::pipe().map_err(CloneError::Failed)?;
    let plan = ChildPlan {
        shell: shell.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        workdir: workdir.as_ref().map_or(std::ptr::null(), |w| w.as_ptr()),
        out_fd: out.as_raw_fd(),
        stderr_fd: stderr.as_raw_fd(),
        in_fd: stdin.map_or(-1, |r| r.as_raw_fd()),
        err_fd: err_w.as_raw_fd(),
        switch: spec.identity.is_some(),
        uid: spec.identity.as_ref().map_or(0, |i| i.uid),
        gid: spec.identity.as_ref().map_or(0, |i| i.gid),
        groups: spec.identity.as_ref().map_or(std::ptr::null(), |i| i.groups.as_ptr()),
        ngroups: spec.identity.as_ref().map_or(0, |i| i.groups.len()),
    };
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP | libc::CLONE_PIDFD as u64,
        pidfd: (&mut pidfd as *mut libc::c_int) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir as u64,
        ..Default::default()
    };
    #[cfg(target_arch = "x86_64")]
    let pid = {
        let mut stack = vec![0u8; CHILD_STACK];
        args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
        args.stack = stack.as_mut_ptr() as u64;
        args.stack_size = CHILD_STACK as u64;
        // no handler of the worker's may run in the child while it shares this memory: all
        // signals wait (in this thread) until the child has exec'd; it clears its own mask
        // SAFETY: sigset operations on local values; pthread_sigmask on this thread.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
        }
        // SAFETY: the stack is the child's alone and outlives it (CLONE_VFORK: this thread
        // waits until the child has exec'd or exited); `plan` points at memory alive as long.
        let pid = unsafe { clone3_vfork(&mut args, &plan) };
        // SAFETY: restores this thread's mask.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        }
        drop(stack);
        pid
    };
    #[cfg(not(target_arch = "x86_64"))]
    let pid = {
        // SAFETY: clone3 without CLONE_VM is fork-like: the child runs on its own copy of this
        // thread's stack and memory and leaves through child_main (execve or _exit).
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            // SAFETY: the child, see above.
            unsafe { child_main(&plan) }
        }
        // as the kernel returns it: -errno
        if pid < 0 {
            -(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL) as libc::c_long)
        } else {
            pid
        }
    };
    if pid < 0 {
        let e = io::Error::from_raw_os_error(-pid as i32);
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EPERM) => CloneError::Unsupported(e),
            _ => CloneError::Failed(e),
        });
    }
    let pid = pid as libc::pid_t;
    drop(err_w);
    // SAFETY: the kernel wrote a fresh pidfd for the child (CLONE_PIDFD); we own it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // EOF: the exec happened (the pipe is close-on-exec); 4 bytes: the child's errno
    let mut errno = [0u8; 4];
    let mut got = 0;
    let mut r = err_r;
    while got < errno.len() {
        match io::Read::read(&mut r, &mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                kill_group(pid, libc::SIGKILL);
                let _ = reap_blocking(pid);
                return Err(CloneError::Failed(e));
            }
        }
    }
    if got == errno.len() {
        let _ = reap_blocking(pid);
        return Err(CloneError::Failed(io::Error::from_raw_os_error(i32::from_ne_bytes(
            errno,
        ))));
    }
    // pidfds are close-on-exec; non-blocking for epoll use
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(pidfd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(pidfd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok((pid, pidfd))
}

fn check_workdir(dir: &str) -> Result<(), SpawnError> {
    let problem = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            let c = std::ffi::CString::new(dir).map_err(|_| SpawnError::Workdir {
                dir: dir.into(),
                problem: "contains a NUL byte".into(),
            })?;
            // SAFETY: access(2) with a valid C string.
            if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
                return Ok(());
            }
            format!("cannot be entered ({})", io::Error::last_os_error())
        }
        Ok(_) => "is not a directory".into(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => "does not exist".into(),
        Err(e) => format!("cannot be read ({e})"),
    };
    Err(SpawnError::Workdir {
        dir: dir.into(),
        problem,
    })
}

/// The error of a shell that did not start: named with the run's user when it has one.
fn shell_error(spec: &ExecSpec, source: io::Error) -> SpawnError {
    match &spec.identity {
        Some(id) => SpawnError::ShellAs {
            shell: spec.shell.clone(),
            user: id.user.clone(),
            source,
        },
        None => SpawnError::Shell {
            shell: spec.shell.clone(),
            source,
        },
    }
}

/// Starts the command. Synchronous (fork/exec takes well under a millisecond).
pub fn spawn(spec: &ExecSpec) -> Result<Child, SpawnError> {
    if let Some(dir) = &spec.workdir {
        check_workdir(dir)?;
    }
    let cgroup = match &spec.cgroups {
        Some(cg) => Some(cg.create(&spec.run_id).map_err(|source| SpawnError::Cgroup {
            base: cg.base().display().to_string(),
            source,
        })?),
        None => None,
    };
    let (reader, writer) = io::pipe().map_err(SpawnError::Setup)?;
    // merged: stderr is a second descriptor of stdout's pipe (one order of writes); separate:
    // a pipe of its own, read beside it
    let (err_reader, err_writer) = if spec.separate_stderr {
        let (r, w) = io::pipe().map_err(SpawnError::Setup)?;
        (Some(r), w)
    } else {
        (None, writer.try_clone().map_err(SpawnError::Setup)?)
    };
    // a held process reads its gate on stdin (both ends close-on-exec here; the child's
    // stdin is a copy)
    let (gate_reader, gate) = if spec.gate && can_gate(&spec.shell) {
        let (r, w) = io::pipe().map_err(SpawnError::Setup)?;
        (Some(r), Some(Gate(w)))
    } else {
        (None, None)
    };
    let command = match gate {
        Some(_) => std::borrow::Cow::Owned(gated_command(&spec.command)),
        None => std::borrow::Cow::Borrowed(spec.command.as_str()),
    };
    // a descriptor opened since the last spawn without O_CLOEXEC does not reach the job either
    cloexec_stray_descriptors();
    let born_in_cgroup = match &cgroup {
        Some(cg) if CLONE3_WORKS.load(Ordering::Relaxed) => {
            match clone_into_cgroup(spec, &command, gate_reader.as_ref(), &writer, &err_writer, cg.dir_fd()) {
                Ok(x) => Some(x),
                Err(CloneError::Unsupported(e)) => {
                    CLONE3_WORKS.store(false, Ordering::Relaxed);
                    tracing::info!(error = %e, "clone3 with CLONE_INTO_CGROUP is not available: runs enter their cgroup before exec instead (a little slower)");
                    None
                }
                Err(CloneError::Failed(source)) => {
                    drop(writer);
                    drop(err_writer);
                    if let Some(cg) = cgroup {
                        let _ = std::fs::remove_dir(cg.dir_path());
                    }
                    if let Some(dir) = &spec.workdir {
                        check_workdir(dir)?;
                    }
                    return Err(shell_error(spec, source));
                }
            }
        }
        _ => None,
    };
    let (pid, pidfd) = match born_in_cgroup {
        Some(x) => {
            // our copies of the write ends: EOF comes when the run's processes are gone
            drop(writer);
            drop(err_writer);
            x
        }
        None => {
            let mut cmd = Command::new(&spec.shell);
            let stdin = match gate_reader.as_ref().map(io::PipeReader::try_clone).transpose() {
                Ok(Some(r)) => Stdio::from(r),
                Ok(None) => Stdio::null(),
                Err(e) => return Err(SpawnError::Setup(e)),
            };
            cmd.arg("-c")
                .arg(&*command)
                .env_clear()
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .stdin(stdin)
                .stdout(writer)
                .stderr(err_writer)
                .process_group(0);
            // as another user, the directory is entered as that user (below)
            if let Some(dir) = &spec.workdir
                && spec.identity.is_none()
            {
                cmd.current_dir(dir);
            }
            if let Some(cg) = &cgroup {
                let fd = cg.procs_fd();
                // SAFETY: runs in the forked child before exec; write(2) is async-signal-safe
                // and the descriptor stays open in the parent until the spawn returns.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                            Ok(())
                        } else {
                            Err(io::Error::last_os_error())
                        }
                    });
                }
            }
            // after the cgroup (its cgroup.procs is root's to write), before exec
            if let Some(id) = spec.identity.clone() {
                let workdir = match spec.workdir.as_deref().map(std::ffi::CString::new).transpose() {
                    Ok(w) => w,
                    Err(e) => return Err(SpawnError::Setup(io::Error::new(io::ErrorKind::InvalidInput, e))),
                };
                // SAFETY: runs in the forked child before exec; it reads what was made here
                // (no allocation, no lookup) and makes async-signal-safe system calls.
                unsafe {
                    cmd.pre_exec(move || {
                        switch_identity(id.uid, id.gid, id.groups.as_ptr(), id.groups.len())
                            .map_err(io::Error::from_raw_os_error)?;
                        if let Some(w) = &workdir
                            && libc::chdir(w.as_ptr()) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(source) => {
                    if let Some(dir) = &spec.workdir {
                        check_workdir(dir)?;
                    }
                    if let Some(cg) = cgroup {
                        let _ = std::fs::remove_dir(cg.dir_path());
                    }
                    return Err(shell_error(spec, source));
                }
            };
            drop(cmd); // closes our copies of the pipe's write end, so EOF comes when the group is gone
            let pid = child.id() as libc::pid_t;
            match pidfd_open(pid) {
                Ok(fd) => (pid, fd),
                Err(e) => {
                    kill_group(pid, libc::SIGKILL);
                    if let Some(cg) = &cgroup {
                        cg.kill();
                    }
                    return Err(SpawnError::Setup(e));
                }
            }
        }
    };
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(SpawnError::Setup)?;
    let err_receiver = match err_reader {
        Some(r) => Some(tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(r)).map_err(SpawnError::Setup)?),
        None => None,
    };
    let capture = Arc::new(Mutex::new(Capture::new(spec.max_output)));
    let output = tokio::spawn({
        let capture = capture.clone();
        async move {
            // both pipes into one output, in the order their bytes arrive, stderr's marked
            let (mut out, mut err) = (Some(receiver), err_receiver);
            let mut buf = vec![0u8; 16 * 1024];
            let mut ebuf = vec![0u8; 16 * 1024];
            while out.is_some() || err.is_some() {
                tokio::select! {
                    r = async { out.as_mut().expect("guarded").read(&mut buf).await }, if out.is_some() => match r {
                        Ok(0) | Err(_) => out = None,
                        Ok(n) => capture.lock().unwrap_or_else(|p| p.into_inner()).push(&buf[..n], false),
                    },
                    r = async { err.as_mut().expect("guarded").read(&mut ebuf).await }, if err.is_some() => match r {
                        Ok(0) | Err(_) => err = None,
                        Ok(n) => capture.lock().unwrap_or_else(|p| p.into_inner()).push(&ebuf[..n], true),
                    },
                }
            }
        }
    });
    // SAFETY: `pidfd` is an open descriptor owned by the AsyncFd for its whole lifetime.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| SpawnError::Setup(io::Error::other(e.to_string())))?;
    drop(gate_reader);
    Ok(Child {
        pid,
        pidfd,
        capture,
        output,
        cgroup,
        started: Instant::now(),
        gate,
    })
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The gate of a held process (once): open it to let the command run.
    pub fn take_gate(&mut self) -> Option<Gate> {
        self.gate.take()
    }

    /// The command started at `at` (a gate opened then): its timeout and duration count from
    /// there.
    pub fn started_at(&mut self, at: std::time::Instant) {
        self.started = Instant::from_std(at);
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
        // Whatever the shell left behind in its group goes with it, and (with cgroups) whatever
        // left the group too.
        kill_group(self.pid, libc::SIGKILL);
        if let Some(cg) = self.cgroup {
            cg.kill_and_remove().await;
        }
        let mut output = self.output;
        let complete = tokio::time::timeout(Duration::from_secs(1), &mut output).await.is_ok();
        if !complete {
            output.abort();
        }
        let mut cap = std::mem::replace(
            &mut *self.capture.lock().unwrap_or_else(|p| p.into_inner()),
            Capture::new(0),
        );
        if !complete {
            // the bytes read so far are kept; the reader stops here
            cap.note = Some("output incomplete: a process outside the run's group kept the pipe open".into());
        }
        let (output, stderr_spans, truncated) = cap.finish();
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
            stderr_spans,
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
    /// The stream offsets `[from, to)` written to stderr, in order, adjacent ones merged;
    /// those wholly inside the dropped middle are pruned now and then.
    stderr: Vec<(u64, u64)>,
    pruned_at: usize,
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
            stderr: Vec::new(),
            pruned_at: 0,
            note: None,
        }
    }

    fn push(&mut self, mut data: &[u8], is_stderr: bool) {
        let from = self.total;
        self.total += data.len() as u64;
        if is_stderr && !data.is_empty() {
            match self.stderr.last_mut() {
                Some(last) if last.1 == from => last.1 = self.total,
                _ => self.stderr.push((from, self.total)),
            }
            if self.stderr.len() > 2 * self.pruned_at + 64 {
                let (head_end, tail_start) = (self.head_cap as u64, self.total.saturating_sub(self.tail_cap as u64));
                self.stderr.retain(|&(a, b)| a < head_end || b > tail_start);
                self.pruned_at = self.stderr.len();
            }
        }
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

    /// The kept text (lossy UTF-8), the byte ranges of it that came from stderr, and the
    /// number of bytes dropped from the middle.
    fn finish(self) -> (String, Vec<[u64; 2]>, u64) {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let dropped = self.total - kept;
        let mut out = String::new();
        let mut spans: Vec<[u64; 2]> = Vec::new();
        // each piece is made text on its own, so a span's offsets are those of the final text
        let mut piece = |out: &mut String, bytes: &[u8], at: u64, stderr: &[(u64, u64)]| {
            let mut pos = at;
            let end = at + bytes.len() as u64;
            let mut cuts: Vec<(u64, u64, bool)> = Vec::new();
            for &(a, b) in stderr {
                if b <= pos || a >= end {
                    continue;
                }
                let (a, b) = (a.max(pos), b.min(end));
                if a > pos {
                    cuts.push((pos, a, false));
                }
                cuts.push((a, b, true));
                pos = b;
            }
            if pos < end {
                cuts.push((pos, end, false));
            }
            for (a, b, is_err) in cuts {
                let text = String::from_utf8_lossy(&bytes[(a - at) as usize..(b - at) as usize]);
                let start = out.len() as u64;
                out.push_str(&text);
                if is_err {
                    match spans.last_mut() {
                        Some(last) if last[1] == start => last[1] = out.len() as u64,
                        _ => spans.push([start, out.len() as u64]),
                    }
                }
            }
        };
        piece(&mut out, &self.head, 0, &self.stderr);
        if dropped > 0 {
            out.push_str(&format!("\n[... {dropped} bytes omitted ...]\n"));
        }
        let tail: Vec<u8> = self.tail.into_iter().collect();
        piece(&mut out, &tail, self.total - tail.len() as u64, &self.stderr);
        if let Some(n) = self.note {
            out.push_str(&format!("\n[{n}]"));
        }
        (out, spans, dropped)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `/bin/sh -c cmd` with `GREETING=hello`, no limits.
    pub(crate) fn spec(cmd: &str) -> ExecSpec {
        ExecSpec {
            shell: "/bin/sh".into(),
            command: cmd.into(),
            env: vec![("GREETING".into(), "hello".into())],
            workdir: None,
            timeout: None,
            timeout_grace: Duration::from_millis(300),
            kill_grace: Duration::from_millis(300),
            max_output: 1024,
            cgroups: None,
            run_id: "test".into(),
            separate_stderr: false,
            gate: false,
            identity: None,
        }
    }

    async fn run(s: &ExecSpec) -> ExecResult {
        let (_tx, rx) = watch::channel(None);
        spawn(s).unwrap().wait(s, rx).await
    }

    fn stderr_of(r: &ExecResult) -> Vec<&str> {
        r.stderr_spans
            .iter()
            .map(|[a, b]| &r.output[*a as usize..*b as usize])
            .collect()
    }

    #[tokio::test]
    async fn what_the_command_writes_to_stderr_is_told_apart_from_its_stdout() {
        let mut s = spec("echo to-stdout; echo to-stderr >&2; echo gruß-stderr >&2; echo more-stdout");
        s.separate_stderr = true;
        let r = run(&s).await;
        for line in ["to-stdout\n", "to-stderr\n", "gruß-stderr\n", "more-stdout\n"] {
            assert!(r.output.contains(line), "{:?}", r.output);
        }
        assert_eq!(
            stderr_of(&r).concat().lines().collect::<Vec<_>>(),
            ["to-stderr", "gruß-stderr"],
            "{:?} {:?}",
            r.output,
            r.stderr_spans
        );
        assert!(crate::model::stderr_spans_ok(&r.stderr_spans, r.output.len() as u64));
        let mut quiet = spec("echo only-stdout");
        quiet.separate_stderr = true;
        assert!(run(&quiet).await.stderr_spans.is_empty());
        // merged (the default): one pipe, the exact order of writes, nothing marked
        let r = run(&spec("echo one; echo two >&2; echo three; echo four >&2")).await;
        assert_eq!(r.output, "one\ntwo\nthree\nfour\n");
        assert!(r.stderr_spans.is_empty());
    }

    #[test]
    fn stderr_spans_stay_right_when_the_middle_of_a_long_output_is_dropped() {
        let mut c = Capture::new(20);
        c.push(b"out-", false);
        c.push(b"ERR-1", true);
        c.push(&[b'x'; 100], false);
        c.push(b"dropped-err", true);
        c.push(&[b'y'; 50], false);
        c.push(b"ERR-2", true);
        c.push(b"end", false);
        let (out, spans, dropped) = c.finish();
        let texts: Vec<&str> = spans.iter().map(|[a, b]| &out[*a as usize..*b as usize]).collect();
        assert!(out.starts_with("out-ERR-1x") && out.ends_with("yyERR-2end"), "{out:?}");
        assert_eq!(texts, ["ERR-1", "ERR-2"], "{out:?} {spans:?}");
        assert_eq!(dropped, 4 + 5 + 100 + 11 + 50 + 5 + 3 - 20);
        // many small writes: the spans of the dropped middle are pruned, the kept ones stay
        let mut c = Capture::new(64);
        for i in 0..10_000 {
            c.push(b"e", i % 2 == 0);
        }
        assert!(c.stderr.len() < 1_000, "{} spans kept", c.stderr.len());
        let (out, spans, _) = c.finish();
        assert!(crate::model::stderr_spans_ok(&spans, out.len() as u64));
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

    /// Every way a run can start here: (name, its cgroup, whether clone3 is used). Without
    /// usable cgroups v2 only the way without one.
    fn ways_of_starting(tag: &str) -> Vec<(&'static str, Option<Arc<RunCgroups>>, bool)> {
        let cgroups = RunCgroups::detect(&format!("{tag}-{}", std::process::id()))
            .ok()
            .map(Arc::new);
        let mut ways = vec![("no cgroup", None, true)];
        if let Some(cg) = &cgroups {
            ways.push(("clone3 into the cgroup", Some(cg.clone()), true));
            ways.push(("fork, then cgroup.procs", Some(cg.clone()), false));
        } else {
            eprintln!("cgroups v2 are not usable here: only the way without a cgroup is tested");
        }
        ways
    }

    /// Whether `pid` is asleep in read(2) (its gate), by /proc (syscall 0 on x86_64).
    fn parked_in_read(pid: i32) -> bool {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        // /proc/PID/syscall needs ptrace rights over the child: without them, asleep will do
        state.contains(") S ") && matches!(syscall.split_whitespace().next(), None | Some("0"))
    }

    fn unix_ns() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    #[tokio::test]
    async fn a_gated_process_runs_nothing_until_its_gate_opens_then_runs_as_an_ungated_one_would() {
        let cmd =
            r#"echo "$GREETING $(date +%s%N)"; echo to-stderr >&2; read x; echo "stdin:[$x]"; ls /proc/$$/fd; exit 3"#;
        for (i, (way, cg, clone3)) in ways_of_starting("unit-gate").into_iter().enumerate() {
            CLONE3_WORKS.store(clone3, Ordering::Relaxed);
            let mut s = spec(cmd);
            s.cgroups = cg;
            s.run_id = format!("gate-{i}");
            let plain = run(&s).await;
            s.gate = true;
            s.run_id = format!("gated-{i}");
            let mut child = spawn(&s).unwrap();
            let gate = child.take_gate().expect("a gated spawn has a gate");
            let t = std::time::Instant::now();
            while !parked_in_read(child.pid()) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "{way}: the shell never waited at its gate"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert_eq!(
                child.capture.lock().unwrap().head,
                b"",
                "{way}: nothing runs before the gate opens"
            );
            let opened_ns = unix_ns();
            gate.open().unwrap();
            child.started_at(std::time::Instant::now());
            let (_tx, rx) = watch::channel(None);
            let gated = child.wait(&s, rx).await;
            assert_eq!(gated.exit_code, Some(3), "{way}: {}", gated.output);
            assert_eq!(gated.exit_code, plain.exit_code);
            let stamp = |r: &ExecResult| -> u128 {
                let first = r.output.lines().next().unwrap_or_default();
                first.strip_prefix("hello ").and_then(|n| n.parse().ok()).expect(first)
            };
            assert!(
                stamp(&gated) >= opened_ns,
                "{way}: the command read its clock before the gate opened"
            );
            // the same output (but the time), stdin from /dev/null and descriptors 0-2 only
            let rest = |r: &ExecResult| r.output.lines().skip(1).map(str::to_string).collect::<Vec<_>>();
            assert_eq!(rest(&gated), rest(&plain), "{way}");
            // (not a pipeline: the shell's own pipe descriptors would race with `ls`)
            assert_eq!(rest(&gated), ["to-stderr", "stdin:[]", "0", "1", "2"], "{way}");
        }
    }

    #[tokio::test]
    async fn a_gated_process_whose_gate_is_dropped_exits_125_and_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ran = dir.path().join("ran");
        let mut s = spec(&format!("touch {}", ran.display()));
        s.gate = true;
        let mut child = spawn(&s).unwrap();
        drop(child.take_gate());
        let (_tx, rx) = watch::channel(None);
        let r = child.wait(&s, rx).await;
        assert_eq!(r.exit_code, Some(125));
        assert!(!ran.exists());
    }

    #[tokio::test]
    async fn only_posix_shells_are_gated() {
        for sh in ["/bin/sh", "/bin/bash", "/usr/bin/dash", "sh"] {
            assert!(can_gate(sh), "{sh}");
        }
        for sh in ["/usr/bin/python3", "/bin/sh -e", "/usr/bin/fish", ""] {
            assert!(!can_gate(sh), "{sh}");
        }
        // another shell starts at once, ungated, as without the setting
        let mut s = spec("ignored");
        s.shell = "/bin/true".into();
        s.gate = true;
        let mut child = spawn(&s).unwrap();
        assert!(child.take_gate().is_none());
        let (_tx, rx) = watch::channel(None);
        assert_eq!(child.wait(&s, rx).await.exit_code, Some(0));
    }

    #[tokio::test]
    async fn every_way_of_starting_gives_default_signals_an_empty_mask_and_named_errors() {
        // the worker ignores SIGPIPE (Rust does) and a vfork-like child shares its memory:
        // the job must still start with nothing ignored and nothing blocked
        let ways = ways_of_starting("unit-sig");
        for (i, (way, cg, clone3)) in ways.into_iter().enumerate() {
            CLONE3_WORKS.store(clone3, Ordering::Relaxed);
            let mut s = spec("exec grep -E '^Sig(Ign|Blk):' /proc/self/status");
            s.cgroups = cg.clone();
            s.run_id = format!("sig-{i}");
            let r = run(&s).await;
            let mask = |name: &str| {
                let line = r.output.lines().find_map(|l| l.strip_prefix(name)).expect(name);
                u64::from_str_radix(line.trim(), 16).expect("hex")
            };
            assert_eq!(mask("SigBlk:"), 0, "{way}: {}", r.output);
            // signals 32 and 33 are glibc's own (SIGCANCEL, SIGSETXID; no job can use them):
            // glibc's posix_spawn leaves them ignored in the child on purpose
            let glibc_internal = (1u64 << 31) | (1u64 << 32);
            assert_eq!(mask("SigIgn:") & !glibc_internal, 0, "{way}: {}", r.output);
            let mut s = spec("true");
            s.cgroups = cg;
            s.run_id = format!("sig-shell-{i}");
            s.shell = "/bin/no-such-shell".into();
            let e = spawn(&s).err().expect("fails").to_string();
            assert!(
                e.contains("could not start \"/bin/no-such-shell\": No such file"),
                "{way}: {e}"
            );
            assert_eq!(
                CLONE3_WORKS.load(Ordering::Relaxed),
                clone3,
                "{way}: started the way it tests"
            );
        }
        CLONE3_WORKS.store(true, Ordering::Relaxed);
    }

    #[tokio::test]
    async fn a_run_as_another_user_has_its_ids_and_groups_only_and_no_capabilities_every_way_it_starts() {
        let nobody = Arc::new(Identity::lookup("nobody").expect("Debian has nobody"));
        assert_eq!(
            (nobody.uid, nobody.gid, nobody.groups.clone()),
            (65534, 65534, vec![65534])
        );
        assert!(matches!(
            Identity::lookup("no-such-user-here"),
            Err(RunAsRefusal::UnknownUser { .. })
        ));
        let ways = ways_of_starting("unit-runas");
        // a directory only root may enter: the run enters its working directory as its user
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(private.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        // SAFETY: geteuid has no memory effects.
        let root = unsafe { libc::geteuid() } == 0;
        for (i, (way, cg, clone3)) in ways.into_iter().enumerate() {
            CLONE3_WORKS.store(clone3, Ordering::Relaxed);
            let mut s = spec("id -u; id -g; id -G; grep -E '^Cap(Prm|Eff):' /proc/self/status");
            s.cgroups = cg.clone();
            s.run_id = format!("runas-{i}");
            s.identity = Some(nobody.clone());
            if !root {
                // a worker that is not root cannot switch: the spawn fails, nothing runs
                let e = spawn(&s).err().expect("fails").to_string();
                assert!(e.contains("as user \"nobody\": Operation not permitted"), "{way}: {e}");
                continue;
            }
            let r = run(&s).await;
            assert_eq!(r.exit_code, Some(0), "{way}: {}", r.output);
            let lines: Vec<&str> = r.output.lines().collect();
            assert_eq!(lines[..3], ["65534", "65534", "65534"], "{way}: {}", r.output);
            for cap in &lines[3..] {
                assert!(cap.ends_with("0000000000000000"), "{way}: {cap}");
            }
            let mut s = spec("pwd");
            s.cgroups = cg;
            s.run_id = format!("runas-dir-{i}");
            s.identity = Some(nobody.clone());
            s.workdir = Some(private.path().display().to_string());
            let e = spawn(&s).err().expect("nobody may not enter it").to_string();
            assert!(
                e.contains("could not start \"/bin/sh\" as user \"nobody\": Permission denied"),
                "{way}: {e}"
            );
            assert_eq!(
                CLONE3_WORKS.load(Ordering::Relaxed),
                clone3,
                "{way}: started the way it tests"
            );
        }
        CLONE3_WORKS.store(true, Ordering::Relaxed);
    }

    #[tokio::test]
    async fn a_missing_workdir_or_shell_is_named_in_the_error() {
        let mut s = spec("true");
        s.workdir = Some("/nonexistent/dir".into());
        let e = spawn(&s).err().expect("fails").to_string();
        assert!(e.contains("\"/nonexistent/dir\" does not exist"), "{e}");
        let mut s = spec("true");
        s.workdir = Some("/etc/hostname".into());
        let e = spawn(&s).err().expect("fails").to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let mut s = spec("true");
        s.shell = "/bin/no-such-shell".into();
        let e = spawn(&s).err().expect("fails").to_string();
        assert!(e.contains("could not start \"/bin/no-such-shell\""), "{e}");
    }

    #[tokio::test]
    async fn the_command_sees_only_the_environment_it_is_given() {
        // the test process has PATH, HOME, CARGO_* and more: none of it reaches the command
        let r = run(&spec("env")).await;
        let vars: Vec<&str> = r
            .output
            .lines()
            .filter(|l| !l.starts_with("PWD=")) // the shell sets PWD itself
            .collect();
        assert_eq!(vars, ["GREETING=hello"], "{}", r.output);
    }

    #[tokio::test]
    async fn the_command_gets_descriptors_0_1_2_and_nothing_else() {
        // a descriptor of this process without close-on-exec, as a launcher might leave one
        // SAFETY: open(2) with a static C string.
        let stray = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        assert!(stray > 2);
        let r = run(&spec("ls /proc/$$/fd")).await;
        // SAFETY: closing the descriptor opened above.
        unsafe {
            libc::close(stray);
        }
        let fds: Vec<&str> = r.output.lines().collect();
        assert_eq!(fds, ["0", "1", "2"], "stray descriptor {stray}: {}", r.output);
    }

    #[tokio::test]
    async fn output_read_before_an_escaped_process_kept_the_pipe_open_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("escaped.pid");
        let r = run(&spec(&format!(
            "echo one; setsid sh -c 'echo $$ > {}; exec sleep 30' & sleep 0.2; echo two",
            pidfile.display()
        )))
        .await;
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // SAFETY: killing the process this test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        assert!(r.output.starts_with("one\ntwo\n"), "{:?}", r.output);
        assert!(
            r.output
                .ends_with("[output incomplete: a process outside the run's group kept the pipe open]"),
            "{:?}",
            r.output
        );
    }

    #[tokio::test]
    async fn setsid_children_die_with_the_run_where_cgroups_are_available() {
        let cgroups = match RunCgroups::detect(&format!("unit-{}", std::process::id())) {
            Ok(c) => Arc::new(c),
            Err(why) => {
                eprintln!("SKIPPED: cgroups v2 are not usable here: {why}");
                return;
            }
        };
        // born in the cgroup (clone3), and entering it before exec (kernels before 5.7)
        for clone3 in [true, false] {
            CLONE3_WORKS.store(clone3, Ordering::Relaxed);
            let dir = tempfile::tempdir().unwrap();
            let pids = dir.path().join("pids");
            let mut s = spec(&format!(
                "for i in 1 2 3 4 5; do setsid sleep 301 & echo $! >> {}; done; ls /proc/$$/fd; echo started",
                pids.display()
            ));
            s.cgroups = Some(cgroups.clone());
            s.run_id = format!("setsid-{clone3}");
            let r = run(&s).await;
            assert_eq!(
                CLONE3_WORKS.load(Ordering::Relaxed),
                clone3,
                "clone3 {clone3}: the run was started the way this round tests"
            );
            CLONE3_WORKS.store(true, Ordering::Relaxed);
            assert_eq!(r.exit_code, Some(0));
            assert_eq!(r.output, "0\n1\n2\nstarted\n", "clone3 {clone3}: descriptors 0-2 only");
            let pids: Vec<i32> = std::fs::read_to_string(&pids)
                .unwrap()
                .lines()
                .map(|l| l.trim().parse().unwrap())
                .collect();
            assert_eq!(pids.len(), 5);
            let t = std::time::Instant::now();
            // SAFETY: signal 0 only checks for existence.
            let alive = || {
                pids.iter()
                    .filter(|p| unsafe { libc::kill(**p, 0) } == 0 && !is_zombie(**p))
                    .count()
            };
            while alive() > 0 && t.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(alive(), 0, "clone3 {clone3}: escaped sleeps survived the run: {pids:?}");
            let dir = cgroups.base().join(format!("run-{}", s.run_id));
            assert!(!dir.exists(), "the run's cgroup is removed: {}", dir.display());
        }
    }

    /// Spawn cost, for the report: `cargo test --release --lib spawn_cost -- --ignored --nocapture`.
    /// Rounds of 200 spawns of `/bin/sh -c true` each way, interleaved (the machine is shared),
    /// and the median round of each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a benchmark: thousands of spawns; run by hand with --ignored --nocapture"]
    async fn spawn_cost() {
        const N: u32 = 200;
        const ROUNDS: usize = 7;
        let t = std::time::Instant::now();
        for _ in 0..N {
            cloexec_stray_descriptors();
        }
        println!(
            "close_range(CLOEXEC): {:.2} us per call",
            t.elapsed().as_secs_f64() * 1e6 / N as f64
        );
        let cg = RunCgroups::detect(&format!("bench-{}", std::process::id()))
            .ok()
            .map(Arc::new);
        let std_spawn = |pre_exec: bool| {
            let t = std::time::Instant::now();
            for _ in 0..N {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg("true");
                if pre_exec {
                    // SAFETY: a no-op closure.
                    unsafe {
                        c.pre_exec(|| Ok(()));
                    }
                }
                c.spawn().unwrap().wait().unwrap();
            }
            t.elapsed().as_secs_f64() * 1e3 / N as f64
        };
        let ours = |cgroups: Option<Arc<RunCgroups>>, clone3: bool| async move {
            CLONE3_WORKS.store(clone3, Ordering::Relaxed);
            let mut spawn_only = Duration::ZERO;
            let t = std::time::Instant::now();
            for i in 0..N {
                let mut s = spec("true");
                s.cgroups = cgroups.clone();
                s.run_id = format!("bench-{i}");
                let t0 = std::time::Instant::now();
                let c = spawn(&s).unwrap();
                spawn_only += t0.elapsed();
                let (_tx, rx) = watch::channel(None);
                c.wait(&s, rx).await;
            }
            CLONE3_WORKS.store(true, Ordering::Relaxed);
            (
                spawn_only.as_secs_f64() * 1e3 / N as f64,
                t.elapsed().as_secs_f64() * 1e3 / N as f64,
            )
        };
        let mut rows: Vec<(&str, Vec<(f64, f64)>)> = vec![
            ("std Command (posix_spawn), spawn + wait", vec![]),
            ("std Command with pre_exec (fork), spawn + wait", vec![]),
            ("executor::spawn, no cgroup", vec![]),
            ("executor::spawn, cgroup per run, clone3(CLONE_INTO_CGROUP)", vec![]),
            ("executor::spawn, cgroup per run, fork + write cgroup.procs", vec![]),
        ];
        for _ in 0..ROUNDS {
            let a = std_spawn(false);
            rows[0].1.push((a, a));
            let b = std_spawn(true);
            rows[1].1.push((b, b));
            rows[2].1.push(ours(None, true).await);
            if cg.is_some() {
                rows[3].1.push(ours(cg.clone(), true).await);
                rows[4].1.push(ours(cg.clone(), false).await);
            }
        }
        // a fork copies the page tables: its cost grows with the worker's memory (100,000 jobs
        // are ~150 MB); a vfork-like start does not
        let ballast = vec![1u8; 512 << 20];
        let mut big: Vec<(&str, Vec<(f64, f64)>)> = vec![
            ("worker holding 512 MB: std Command (posix_spawn)", vec![]),
            ("worker holding 512 MB: std Command with pre_exec (fork)", vec![]),
            (
                "worker holding 512 MB: executor::spawn, clone3(CLONE_INTO_CGROUP)",
                vec![],
            ),
        ];
        for _ in 0..ROUNDS {
            let a = std_spawn(false);
            big[0].1.push((a, a));
            let b = std_spawn(true);
            big[1].1.push((b, b));
            if cg.is_some() {
                big[2].1.push(ours(cg.clone(), true).await);
            }
        }
        println!(
            "(ballast of {} MB touched)",
            ballast.iter().step_by(4096).filter(|b| **b == 1).count() / 256
        );
        rows.extend(big);
        for (name, mut v) in rows {
            if v.is_empty() {
                continue;
            }
            v.sort_by(|x, y| x.1.total_cmp(&y.1));
            let (sp, all) = v[v.len() / 2];
            println!("{name}: {sp:.3} ms spawn, {all:.3} ms spawn + wait (median of {ROUNDS} rounds of {N})");
        }
    }
}
