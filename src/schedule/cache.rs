//! Parsed schedules shared by the jobs with the same expression and time zone (the workers' and
//! the tick ledger's). A parsed cron
//! expression holds about 5.6 KB of lookup tables (croner keeps one per field, years included),
//! so 100,000 hourly jobs each with their own copy cost ~570 MB per worker (measured by the
//! load test's `scale`); fleets repeat a few expressions, so sharing brings that to kilobytes.
//! An expression with `H` stands for values chosen by the job's name, so its key also has the
//! name (such schedules are shared by nobody).

use super::{Schedule, ScheduleError};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

#[derive(Default)]
pub struct ScheduleCache {
    map: HashMap<(String, String, Option<String>), Weak<Schedule>>,
    /// Entries whose schedule is gone are swept when the map reaches this size.
    sweep_at: usize,
}

impl ScheduleCache {
    pub fn get_or_parse(&mut self, expr: &str, tz: &str, job: &str) -> Result<Arc<Schedule>, ScheduleError> {
        let named = super::uses_hash(expr).then(|| job.to_string());
        let key = (expr.to_string(), tz.to_string(), named);
        if let Some(shared) = self.map.get(&key).and_then(Weak::upgrade) {
            return Ok(shared);
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.map.len() * 2).max(1024);
        }
        let shared = Arc::new(Schedule::parse_for_job(expr, tz, job)?);
        self.map.insert(key, Arc::downgrade(&shared));
        Ok(shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_with_the_same_expression_and_zone_share_one_parsed_schedule() {
        let mut cache = ScheduleCache::default();
        let a = cache.get_or_parse("5 * * * *", "UTC", "a").unwrap();
        let b = cache.get_or_parse("5 * * * *", "UTC", "b").unwrap();
        let other_zone = cache.get_or_parse("5 * * * *", "Europe/Berlin", "a").unwrap();
        let other_expr = cache.get_or_parse("6 * * * *", "UTC", "a").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other_zone));
        assert!(!Arc::ptr_eq(&a, &other_expr));
        // a schedule no job holds any more is parsed afresh, and swept from the map
        drop((a, b));
        let again = cache.get_or_parse("5 * * * *", "UTC", "a").unwrap();
        assert_eq!(Arc::strong_count(&again), 1);
        // a bad expression is an error, and not remembered
        assert!(cache.get_or_parse("61 * * * *", "UTC", "a").is_err());
        assert!(cache.get_or_parse("5 * * * *", "Mars/Olympus", "a").is_err());
        for i in 0..3000 {
            drop(cache.get_or_parse(&format!("@every {}s", i + 1), "UTC", "a").unwrap());
        }
        assert!(cache.map.len() < 2100, "dead entries are swept: {}", cache.map.len());
        assert!(
            cache
                .map
                .contains_key(&("5 * * * *".to_string(), "UTC".to_string(), None))
        );
    }

    #[test]
    fn jobs_with_h_share_a_parsed_schedule_only_with_themselves() {
        let mut cache = ScheduleCache::default();
        let a = cache.get_or_parse("H * * * *", "UTC", "job-a").unwrap();
        let a_again = cache.get_or_parse("H * * * *", "UTC", "job-a").unwrap();
        let b = cache.get_or_parse("H * * * *", "UTC", "job-b").unwrap();
        assert!(Arc::ptr_eq(&a, &a_again));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(
            a.resolved(),
            Schedule::parse_for_job("H * * * *", "UTC", "job-a").unwrap().resolved()
        );
    }
}
