//! What the server processes cronmesh starts for itself or its tests (`etcd_process`,
//! `mongo_process`) share: stopping one politely, and saying why one died.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`; waits for it either way.
pub fn terminate(mut child: Child, grace: Duration) {
    // SAFETY: signalling our own child by pid; it is not reaped before the wait below.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// If `child` has exited: "exited with {status}; last log lines: …" with the last `lines`
/// lines of its log file.
pub fn exit_report(child: &mut Child, log: &Path, lines: usize) -> Option<String> {
    let status = child.try_wait().ok().flatten()?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Some(format!("exited with {status}; last log lines:\n{}", tail.join("\n")))
}
