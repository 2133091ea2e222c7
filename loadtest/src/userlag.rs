//! Lag as the user sees it: the job's command reads the clock itself (`date +%s%N`) and the
//! planned time is subtracted. Beside it, the machine's own floor for the same burst: N copies
//! of the same command started at one instant by a plain loop, no scheduler at all, timed the
//! same way.

use crate::records::pct;
use cronmesh::model::RunRecord;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The command a measured job runs: one line `<tag> <Unix ns>` appended to `file`, the time
/// taken inside the command. `tag` is a shell word (`$CRONMESH_RUN_ID` for a job).
pub fn stamp_command(file: &Path, tag: &str) -> String {
    format!("echo \"{tag} $(date +%s%N)\" >> '{}'", file.display())
}

/// The stamps of `file`: tag → Unix ms (fractional). A half-written last line is skipped.
pub fn read_stamps(file: &Path) -> HashMap<String, f64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (tag, ns) = l.split_once(' ')?;
            Some((tag.to_string(), ns.trim().parse::<i64>().ok()? as f64 / 1e6))
        })
        .collect()
}

/// A lag distribution in ms.
#[derive(Serialize, Default, Clone, Copy, Debug, PartialEq)]
pub struct Lags {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Lags {
    pub fn of(mut v: Vec<f64>) -> Lags {
        v.sort_by(f64::total_cmp);
        Lags {
            n: v.len(),
            p50_ms: pct(&v, 0.5),
            p90_ms: pct(&v, 0.9),
            p99_ms: pct(&v, 0.99),
            max_ms: v.last().copied().unwrap_or(0.0),
        }
    }

    pub fn text(&self) -> String {
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

/// What the commands of the window's runs said: their lags, and how many read a clock before
/// their planned time (must be 0).
#[derive(Serialize, Default, Clone, Debug)]
pub struct CommandLag {
    #[serde(flatten)]
    pub lags: Lags,
    /// Runs whose command's clock read earlier than the planned time.
    pub early_starts: usize,
    /// Runs that started (by their record) but left no stamp.
    pub unstamped: usize,
}

/// The command's lag of every started run of `jobs` planned in `[from, to]`.
pub fn command_lags(
    recs: &[RunRecord],
    stamps: &HashMap<String, f64>,
    jobs: &[String],
    from: i64,
    to: i64,
) -> CommandLag {
    let wanted: std::collections::HashSet<&str> = jobs.iter().map(String::as_str).collect();
    let mut lags = Vec::new();
    let mut c = CommandLag::default();
    for r in recs {
        if r.started_at.is_none() || r.planned_at < from || r.planned_at > to || !wanted.contains(r.job.as_str()) {
            continue;
        }
        match stamps.get(&r.run_id) {
            Some(ms) => {
                let lag = ms - r.planned_at as f64;
                if lag < 0.0 {
                    c.early_starts += 1;
                }
                lags.push(lag);
            }
            None => c.unstamped += 1,
        }
    }
    c.lags = Lags::of(lags);
    c
}

/// The burst floor: `n` simultaneous raw starts of the stamping command, `rounds` times.
#[derive(Serialize, Default, Clone, Debug)]
pub struct Floor {
    pub simultaneous: usize,
    pub rounds: usize,
    #[serde(flatten)]
    pub lags: Lags,
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// Measures the floor in `dir` (blocking: run it on a blocking thread). Each round takes the
/// time, starts `n` copies of the command one after the other as fast as a loop can (`Command`
/// uses `posix_spawn` here), then waits for them all; each copy's lag is its stamp minus the
/// round's start.
pub fn measure_floor(dir: &Path, n: usize, rounds: usize) -> std::io::Result<Floor> {
    let file: PathBuf = dir.join("floor-stamps.txt");
    let mut lags = Vec::with_capacity(n * rounds);
    for round in 0..rounds {
        let _ = std::fs::remove_file(&file);
        let cmd = stamp_command(&file, &format!("r{round}-$I"));
        let t0 = unix_ms();
        let mut children: Vec<Child> = Vec::with_capacity(n);
        for i in 0..n {
            children.push(
                Command::new("/bin/sh")
                    .args(["-c", &cmd])
                    .env("I", i.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()?,
            );
        }
        for mut c in children {
            c.wait()?;
        }
        lags.extend(read_stamps(&file).values().map(|ms| ms - t0));
        // let the machine settle between bursts
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(&file);
    Ok(Floor {
        simultaneous: n,
        rounds,
        lags: Lags::of(lags),
    })
}

/// `x` as a multiple of `floor` ("1.58×").
pub fn ratio(x: f64, floor: f64) -> String {
    if floor <= 0.0 {
        return "–".into();
    }
    format!("{:.2}×", x / floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cronmesh::logstore::conformance::record;
    use cronmesh::model::RunStatus;

    #[test]
    fn a_command_lag_is_its_stamp_minus_the_planned_time_and_early_or_missing_stamps_are_counted() {
        let jobs = vec!["a".to_string()];
        let mut recs = Vec::new();
        for (id, planned) in [("r1", 1000), ("r2", 2000), ("r3", 3000), ("r4", 4000)] {
            let mut r = record(id, "a", planned, RunStatus::Succeeded);
            r.started_at = Some(planned + 1);
            recs.push(r);
        }
        let mut not_started = record("r5", "a", 5000, RunStatus::Skipped);
        not_started.started_at = None;
        recs.push(not_started);
        let stamps: HashMap<String, f64> = [
            ("r1".to_string(), 1012.5),
            ("r2".to_string(), 2003.0),
            ("r3".to_string(), 2999.0),
        ]
        .into();
        let c = command_lags(&recs, &stamps, &jobs, 0, 10_000);
        assert_eq!(c.lags.n, 3);
        assert_eq!(c.early_starts, 1, "r3 read the clock before its planned time");
        assert_eq!(c.unstamped, 1, "r4 left no stamp; r5 never started");
        assert_eq!(c.lags.max_ms, 12.5);
        assert_eq!(c.lags.p50_ms, 3.0);
    }

    #[test]
    fn the_floor_times_every_copy_of_the_command_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let f = measure_floor(dir.path(), 4, 2).unwrap();
        assert_eq!(f.lags.n, 8, "one stamp per copy per round");
        assert!(f.lags.p50_ms > 0.0 && f.lags.max_ms < 5000.0, "{f:?}");
    }
}
