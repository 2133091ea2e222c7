//! Stored jobs whose schedule changed meaning when cronmesh adopted the crontab(5) day rule
//! (`0 0 */2 * 1` used to mean "odd days, and Mondays"; it now means "Mondays that are odd
//! days"). The master's job watch feeds every job it sees through here: each such job is logged
//! once with the expression that keeps its old meaning, and `cronmesh_jobs_day_rule_changed`
//! counts them. The check reads only the expression's text.

use crate::schedule::day_rule_change;
use crate::telemetry::events::ScheduleMeaningChanged;
use crate::telemetry::metrics::METRICS;
use std::collections::HashMap;

/// Logs at most this many jobs per list (the gauge has the total).
const MAX_LOGGED_PER_LIST: usize = 100;

/// The affected jobs, by name, with the schedule that was logged.
#[derive(Default)]
pub struct ChangedMeaning {
    jobs: HashMap<String, String>,
}

impl ChangedMeaning {
    /// A full list of the stored jobs (at start, or after a re-list): logs the jobs not logged
    /// before (at most `MAX_LOGGED_PER_LIST`).
    /// `jobs` are (name, schedule); an unreadable job has no schedule.
    pub fn listed<'a>(&mut self, jobs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) {
        let mut now = HashMap::new();
        let mut fresh = Vec::new();
        for (name, schedule) in jobs {
            if let Some((schedule, advice)) = schedule.and_then(check) {
                if self.jobs.get(name) != Some(&schedule) {
                    fresh.push((name.to_string(), schedule.clone(), advice));
                }
                now.insert(name.to_string(), schedule);
            }
        }
        self.jobs = now;
        METRICS.jobs_day_rule_changed.set(self.jobs.len() as i64);
        for (name, schedule, advice) in fresh.iter().take(MAX_LOGGED_PER_LIST) {
            self.emit(name, schedule, advice);
        }
        if fresh.len() > MAX_LOGGED_PER_LIST {
            tracing::warn!(
                more = fresh.len() - MAX_LOGGED_PER_LIST,
                "more stored jobs changed meaning with the crontab(5) day rule than are logged; GET /api/v1/jobs shows each one's schedule_warnings"
            );
        }
    }

    /// One job saved: logged when it is newly affected (or its expression changed).
    pub fn saved(&mut self, name: &str, schedule: Option<&str>) {
        match schedule.and_then(check) {
            Some((schedule, advice)) => {
                if self.jobs.get(name) != Some(&schedule) {
                    self.jobs.insert(name.to_string(), schedule.clone());
                    self.emit(name, &schedule, &advice);
                }
            }
            None => self.deleted(name),
        }
    }

    pub fn deleted(&mut self, name: &str) {
        if self.jobs.remove(name).is_some() {
            METRICS.jobs_day_rule_changed.set(self.jobs.len() as i64);
        }
    }

    /// How many stored jobs are affected.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    fn emit(&self, job: &str, schedule: &str, advice: &str) {
        ScheduleMeaningChanged {
            job,
            schedule,
            advice,
            jobs_affected: self.jobs.len(),
        }
        .emit();
    }
}

/// Whether a job with this schedule is one of the affected.
pub fn affected(schedule: &str) -> bool {
    day_rule_change(schedule).is_some()
}

fn check(schedule: &str) -> Option<(String, String)> {
    let advice = day_rule_change(schedule)?;
    Some((schedule.to_string(), advice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_whose_day_rule_changed_are_tracked_through_lists_saves_and_deletes() {
        let mut c = ChangedMeaning::default();
        c.listed([
            ("a", Some("0 0 */2 * 1")),
            ("b", Some("0 0 1 * */2")),
            ("fine", Some("0 0 * * 1")),
        ]);
        assert_eq!(c.len(), 2);
        // fixed by its owner: no longer counted
        c.saved("a", Some("0 0 1-31/2 * 1"));
        assert_eq!(c.len(), 1);
        c.saved("fine", Some("0 0 ?/3 * 5"));
        assert_eq!(c.len(), 2);
        c.deleted("b");
        assert_eq!(c.len(), 1);
        c.saved("garbage", None);
        assert_eq!(c.len(), 1);
        c.listed([]);
        assert!(c.is_empty());
    }
}
