//! One report per run, in a directory: `report.md` for people, `report.json` for machines and
//! `lag.svg`, the schedule-lag distribution. The Markdown also goes to stdout.

use anyhow::Result;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::Path;

pub struct Report {
    pub title: String,
    md: String,
    json: Map<String, Value>,
    /// (series name, sorted lags in ms)
    lags: Vec<(String, Vec<f64>)>,
}

impl Report {
    pub fn new(title: &str, command: &str) -> Report {
        let mut r = Report {
            title: title.to_string(),
            md: String::new(),
            json: Map::new(),
            lags: Vec::new(),
        };
        let host = host();
        let _ = writeln!(r.md, "# {title}\n");
        let _ = writeln!(r.md, "`{command}`  ");
        let _ = writeln!(
            r.md,
            "{} · {} · {} cores · kernel {} · {} build\n",
            host["date"].as_str().unwrap_or(""),
            host["cpu"].as_str().unwrap_or("?"),
            host["cores"],
            host["kernel"].as_str().unwrap_or("?"),
            host["build"].as_str().unwrap_or("?"),
        );
        r.json.insert("command".into(), command.into());
        r.json.insert("host".into(), host);
        r
    }

    /// A two-column table of measures.
    pub fn measures(&mut self, heading: &str, rows: &[(&str, String)]) {
        let _ = writeln!(self.md, "## {heading}\n\n| measure | value |\n| --- | --- |");
        for (k, v) in rows {
            let _ = writeln!(self.md, "| {k} | {v} |");
        }
        self.md.push('\n');
    }

    /// A table with its own columns.
    pub fn table(&mut self, heading: &str, header: &[&str], rows: &[Vec<String>]) {
        let _ = writeln!(self.md, "## {heading}\n");
        let _ = writeln!(self.md, "| {} |", header.join(" | "));
        let _ = writeln!(self.md, "|{}", " --- |".repeat(header.len()));
        for r in rows {
            let _ = writeln!(self.md, "| {} |", r.join(" | "));
        }
        self.md.push('\n');
    }

    pub fn text(&mut self, text: &str) {
        let _ = writeln!(self.md, "{text}\n");
    }

    pub fn json(&mut self, key: &str, value: impl serde::Serialize) {
        self.json
            .insert(key.into(), serde_json::to_value(value).expect("serializable"));
    }

    pub fn lag_series(&mut self, name: &str, sorted_lags: &[f64]) {
        self.lags.push((name.to_string(), sorted_lags.to_vec()));
    }

    pub fn markdown(&self) -> String {
        let mut md = self.md.clone();
        if !self.lags.is_empty() {
            md.push_str("![schedule lag distribution](lag.svg)\n");
        }
        md
    }

    pub fn json_text(&self) -> String {
        serde_json::to_string_pretty(&self.json).expect("json")
    }

    /// Writes the three files into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("report.json"), self.json_text())?;
        if !self.lags.is_empty() {
            std::fs::write(dir.join("lag.svg"), crate::svg::lag_chart(&self.title, &self.lags))?;
        }
        Ok(())
    }
}

/// The machine the figures come from.
fn host() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    serde_json::json!({
        "date": utc(secs),
        "cpu": cpu,
        "cores": cores,
        "kernel": kernel,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// `YYYY-MM-DD HH:MM UTC` without a date crate (days-from-civil, Howard Hinnant's algorithm).
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates_are_right() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(1_795_562_006), "2026-11-24 23:13 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00 UTC");
    }
}
