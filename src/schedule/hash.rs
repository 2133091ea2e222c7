//! The hash behind `H` ("one value chosen by the job's name"). It must give the same value on
//! every worker, in every build and in every release, so it is written out here rather than
//! taken from `std` (whose `DefaultHasher` may change between Rust releases):
//!
//! 1. FNV-1a, 64 bit (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over the bytes
//!    `cronmesh/schedule/H/v1`, `0x00`, the job name, `0x00`, the field name (`second`, `minute`,
//!    `hour`, `day-of-month`, `month`, `day-of-week`). The prefix keeps these values apart from
//!    every other use of FNV in cronmesh (worker ownership hashes worker and job ids).
//! 2. The 64-bit finaliser of MurmurHash3 (`fmix64`), so that names differing in their last
//!    byte still land far apart.
//! 3. The value is `low + h % span` (the bias of a 64-bit hash over at most 60 values is below
//!    one part in 10^17).
//!
//! Changing any of this moves every `H` job: the unit tests pin values for known names.

const DOMAIN: &[u8] = b"cronmesh/schedule/H/v1";

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The stable hash of (`job`, `field`).
pub fn field_hash(job: &str, field: &str) -> u64 {
    let mut h = fnv1a(DOMAIN, 0xcbf2_9ce4_8422_2325);
    h = fnv1a(&[0], h);
    h = fnv1a(job.as_bytes(), h);
    h = fnv1a(&[0], h);
    h = fnv1a(field.as_bytes(), h);
    fmix64(h)
}

/// A value in `low..low + span` chosen by (`job`, `field`).
pub fn pick(job: &str, field: &str, low: u32, span: u32) -> u32 {
    debug_assert!(span > 0);
    low + (field_hash(job, field) % u64::from(span.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_hash_is_pinned_so_h_values_never_move_between_builds_or_releases() {
        // FNV-1a of the empty input is the offset basis: the constants are the published ones
        assert_eq!(fnv1a(b"", 0xcbf2_9ce4_8422_2325), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", 0xcbf2_9ce4_8422_2325), 0xaf63_dc4c_8601_ec8c);
        // and the values H gives for known names (a change here moves every H job in a fleet)
        let pinned: Vec<u32> = ["backup-db", "nightly-report", "a", "job-0"]
            .iter()
            .map(|j| pick(j, "minute", 0, 60))
            .collect();
        assert_eq!(pinned, PINNED_MINUTES);
    }

    // the values of the first release with H; never edit them to make a test pass
    const PINNED_MINUTES: [u32; 4] = [7, 5, 52, 22];

    #[test]
    fn fields_of_one_job_get_independent_values() {
        let fields = ["second", "minute", "hour", "day-of-month", "month", "day-of-week"];
        let hashes: HashSet<u64> = fields.iter().map(|f| field_hash("backup-db", f)).collect();
        assert_eq!(hashes.len(), fields.len());
    }

    #[test]
    fn a_thousand_job_names_spread_over_the_minutes_of_an_hour() {
        let minutes: HashSet<u32> = (0..1000).map(|i| pick(&format!("job-{i}"), "minute", 0, 60)).collect();
        assert!(minutes.len() >= 50, "only {} distinct minutes", minutes.len());
        // and no minute is crowded: at most 3x the mean of 16.7
        let mut counts = [0u32; 60];
        for i in 0..1000 {
            counts[pick(&format!("job-{i}"), "minute", 0, 60) as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c <= 50), "{counts:?}");
    }
}
