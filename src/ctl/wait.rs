//! `ctl jobs run NAME --wait`: asks for the run, then polls `GET /api/v1/runs/{id}` (the run's
//! id is the trigger id the API answered; 404 until its record is stored) with a growing pause,
//! follows the retries of a failed attempt, prints the last attempt's output and exits with its
//! exit code.

use super::output::{self, Output, data, s};
use super::{Client, CtlError, Done, encode};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `jobs run`: ask for the run; with `wait`, follow it (and its retries) to its end.
pub(super) async fn run_job(c: &Client, o: Output, name: &str, wait: Option<Duration>) -> Result<Done, CtlError> {
    let job = if wait.is_some() {
        Some(c.get(&format!("/api/v1/jobs/{}", encode(name))).await?)
    } else {
        None
    };
    let r = c
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/jobs/{}/run", encode(name)),
            None,
        )
        .await?;
    let id = s(&r["trigger_id"]);
    let (Some(timeout), Some(job)) = (wait, job) else {
        return Ok(Done::out(if o.is_data() {
            data(&r, o)
        } else {
            format!("job/{name} run requested: run {id} (see it with `cronmesh ctl runs get {id}`)")
        }));
    };
    eprintln!(
        "job/{name}: waiting for run {id} to end (--timeout {})",
        humantime::format_duration(timeout)
    );
    let deadline = Instant::now() + timeout;
    let retries = job["retries"].as_u64().unwrap_or(0);
    let mut record = wait_for_run(c, &id, deadline).await?;
    let mut stderr = Vec::new();
    // a failed attempt with retries left: follow the next attempt of the same tick
    loop {
        let attempt = record["attempt"].as_u64().unwrap_or(1);
        if record["status"] == "succeeded" || attempt > retries {
            break;
        }
        stderr.push(format!(
            "run {} (attempt {}) {}; waiting for retry {attempt}",
            s(&record["run_id"]),
            output::attempt_label(Some(attempt)),
            s(&record["status"])
        ));
        record = wait_for_retry(c, name, &record, deadline).await?;
    }
    let code = run_exit_code(&record);
    stderr.push(format!(
        "run {} of job/{name} {} in {} (exit code {code})",
        s(&record["run_id"]),
        s(&record["status"]),
        output::duration(record["duration_ms"].as_i64())
    ));
    Ok(Done {
        stdout: if o.is_data() {
            data(&record, o)
        } else {
            record["output"]
                .as_str()
                .unwrap_or("")
                .trim_end_matches('\n')
                .to_string()
        },
        stderr,
        code,
    })
}

/// The exit code `jobs run --wait` ends with: the command's when it has one, else 0 for a
/// success and 1 for anything else (killed by a signal, timed out, not started, lost).
pub fn run_exit_code(record: &Value) -> i32 {
    match record["exit_code"].as_i64() {
        Some(c) => (c & 0xff) as i32,
        None if record["status"] == "succeeded" => 0,
        None => 1,
    }
}

/// The next poll's wait: 100 ms, growing by half up to 2 s.
fn backoff(prev: Duration) -> Duration {
    (prev.mul_f64(1.5)).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

fn timed_out(id: &str) -> CtlError {
    CtlError::Timeout(format!(
        "--timeout passed before run {id} ended (it goes on): see it later with `cronmesh ctl runs get {id}`"
    ))
}

/// Polls `GET /api/v1/runs/{id}` (404 until the record is stored) until it answers.
async fn wait_for_run(c: &Client, id: &str, deadline: Instant) -> Result<Value, CtlError> {
    let mut pause = Duration::from_millis(100);
    loop {
        match c.get(&format!("/api/v1/runs/{}", encode(id))).await {
            Ok(r) => return Ok(r),
            Err(CtlError::Api { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() + pause > deadline {
            return Err(timed_out(id));
        }
        tokio::time::sleep(pause).await;
        pause = backoff(pause);
    }
}

/// Polls the job's records of the tick `prev` belongs to until the next attempt's arrives.
async fn wait_for_retry(c: &Client, job: &str, prev: &Value, deadline: Instant) -> Result<Value, CtlError> {
    let planned = prev["planned_at"].as_i64().unwrap_or(0);
    let next = prev["attempt"].as_u64().unwrap_or(1) + 1;
    let path = format!(
        "/api/v1/runs?job={}&from={planned}&to={}&limit=1000",
        encode(job),
        planned + 1
    );
    let mut pause = Duration::from_millis(100);
    loop {
        let page = c.get(&path).await?;
        if let Some(r) = page["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["attempt"].as_u64() == Some(next) && r["trigger"] == "retry")
        {
            // the list leaves outputs out
            return c.get(&format!("/api/v1/runs/{}", encode(&s(&r["run_id"])))).await;
        }
        if Instant::now() + pause > deadline {
            return Err(timed_out(&format!("{} (retry {})", s(&prev["run_id"]), next - 1)));
        }
        tokio::time::sleep(pause).await;
        pause = backoff(pause);
    }
}

/// `jobs backfill`: make the backfill; with `wait`, redraw its progress (on standard error,
/// one line, every 500 ms) until it finishes. Exits 1 when a tick failed or it was cancelled.
pub(super) async fn backfill(
    c: &Client,
    o: Output,
    name: &str,
    from: &str,
    to: &str,
    max_parallel: u32,
    wait: bool,
) -> Result<Done, CtlError> {
    let time = |v: &str| match v.parse::<i64>() {
        Ok(ms) => Value::from(ms),
        Err(_) => Value::from(v),
    };
    let body = serde_json::json!({ "from": time(from), "to": time(to), "max_parallel": max_parallel });
    let r = c
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/jobs/{}/backfill", encode(name)),
            Some(body),
        )
        .await?;
    let id = s(&r["id"]);
    let said = format!(
        "job/{name} backfill {id}: {} ticks to run ({} of the range ran already)",
        r["ticks"].as_u64().unwrap_or(0),
        r["already_ran"].as_u64().unwrap_or(0)
    );
    if !wait {
        return Ok(Done::out(if o.is_data() { data(&r, o) } else { said }));
    }
    eprintln!("{said}");
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = String::new();
    loop {
        let b = c.get(&format!("/api/v1/backfills/{}", encode(&id))).await?;
        let line = format!(
            "{} {} done, {} running, {} failed, {} skipped",
            output::progress_bar(&b, 30),
            b["done"].as_u64().unwrap_or(0),
            b["running"].as_u64().unwrap_or(0),
            b["failed"].as_u64().unwrap_or(0),
            b["skipped"].as_u64().unwrap_or(0)
        );
        if line != last_line {
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
            last_line = line;
        }
        let state = s(&b["state"]);
        if state == "completed" || state == "cancelled" {
            if tty {
                eprintln!();
            }
            let code = if state == "completed" && b["failed"].as_u64() == Some(0) {
                0
            } else {
                1
            };
            return Ok(Done {
                stdout: if o.is_data() {
                    data(&b, o)
                } else {
                    format!("backfill/{id} {state}: {}", last_line)
                },
                stderr: Vec::new(),
                code,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_waited_run_exits_with_its_exit_code_or_1_without_one() {
        assert_eq!(run_exit_code(&json!({"status": "succeeded", "exit_code": 0})), 0);
        assert_eq!(run_exit_code(&json!({"status": "failed", "exit_code": 7})), 7);
        assert_eq!(
            run_exit_code(&json!({"status": "killed", "exit_code": null, "signal": 15})),
            1
        );
        assert_eq!(run_exit_code(&json!({"status": "timed_out", "exit_code": null})), 1);
        assert_eq!(
            run_exit_code(&json!({"status": "failed", "exit_code": null, "error": "spawn"})),
            1
        );
    }

    #[test]
    fn polls_wait_100_ms_first_and_at_most_2_s() {
        assert_eq!(backoff(Duration::ZERO), Duration::from_millis(100));
        assert_eq!(backoff(Duration::from_millis(100)), Duration::from_millis(150));
        assert_eq!(backoff(Duration::from_secs(5)), Duration::from_secs(2));
    }
}
