//! The schedule-lag distribution as an SVG bar chart: runs per lag bucket (log-spaced buckets,
//! share of runs on the y axis), one colour per series, with p50/p99/max in the legend.
//! Hand-written SVG: no plotting dependency, and it renders in any browser or on GitHub.

use crate::records::pct;
use std::fmt::Write as _;

/// Bucket upper bounds in ms; the last bucket is everything above.
const EDGES: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];
const COLOURS: [&str; 4] = ["#3366cc", "#dc7633", "#2e8b57", "#8e44ad"];

fn label(i: usize) -> String {
    let ms = |v: f64| {
        if v >= 1000.0 {
            format!("{}s", v / 1000.0)
        } else {
            format!("{v}")
        }
    };
    match i {
        0 => "<1".into(),
        i if i == EDGES.len() => format!("≥{}", ms(EDGES[EDGES.len() - 1])),
        i => format!("{}–{}", ms(EDGES[i - 1]), ms(EDGES[i])),
    }
}

/// Share of values in each bucket (sums to 1 for a non-empty series).
pub fn buckets(sorted: &[f64]) -> Vec<f64> {
    let mut counts = vec![0usize; EDGES.len() + 1];
    for v in sorted {
        let i = EDGES.iter().position(|e| v < e).unwrap_or(EDGES.len());
        counts[i] += 1;
    }
    let n = sorted.len().max(1) as f64;
    counts.into_iter().map(|c| c as f64 / n).collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn lag_chart(title: &str, series: &[(String, Vec<f64>)]) -> String {
    // one legend line per series above the plot
    let legend_h = 16.0 * series.len() as f64;
    let (w, h) = (820.0, 360.0 + legend_h);
    let (left, right, top, bottom) = (56.0, 16.0, 40.0 + legend_h, 64.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let nb = EDGES.len() + 1;
    let slot = plot_w / nb as f64;
    let bar = (slot * 0.8) / series.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18" font-size="14" font-weight="bold">Schedule lag (started − planned): {}</text>"#,
        esc(title)
    );
    // legend
    for (k, (name, lags)) in series.iter().enumerate() {
        let y = 28.0 + 16.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{y}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{} — {} runs, p50 {:.0} / p99 {:.0} / max {:.0} ms</text>"#,
            COLOURS[k % COLOURS.len()],
            left + 14.0,
            y + 9.0,
            esc(name),
            lags.len(),
            pct(lags, 0.5),
            pct(lags, 0.99),
            lags.last().copied().unwrap_or(0.0)
        );
    }
    // y grid: 0..100 % of runs
    for g in 0..=4 {
        let y = top + plot_h - plot_h * g as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}%</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0,
            g * 25
        );
    }
    for (k, (_, lags)) in series.iter().enumerate() {
        for (i, share) in buckets(lags).iter().enumerate() {
            if *share == 0.0 {
                continue;
            }
            let bh = (plot_h * share).max(1.0);
            let x = left + i as f64 * slot + slot * 0.1 + k as f64 * bar;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{bh:.1}" fill="{}"><title>{:.1}% of runs</title></rect>"#,
                top + plot_h - bh,
                COLOURS[k % COLOURS.len()],
                share * 100.0
            );
        }
    }
    for i in 0..nb {
        let x = left + (i as f64 + 0.5) * slot;
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            top + plot_h + 16.0,
            esc(&label(i))
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#333"/><text x="{}" y="{}" text-anchor="middle">lag (ms)</text>"##,
        left + plot_w,
        top + plot_h,
        top + plot_h,
        left + plot_w / 2.0,
        h - 18.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lag_lands_in_one_bucket_and_the_chart_is_well_formed() {
        let lags = vec![0.0, 0.5, 1.0, 3.0, 15.0, 999.0, 1000.0, 20000.0];
        let b = buckets(&lags);
        assert!((b.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(b[0], 2.0 / 8.0, "0 and 0.5 are under 1 ms");
        assert_eq!(b[EDGES.len()], 1.0 / 8.0, "20 s is in the open bucket");
        let svg = lag_chart("a <b>", &[("owner".into(), lags.clone()), ("race".into(), lags)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt;"));
        assert_eq!(
            svg.matches("<rect").count() - 1 - 2,
            2 * 7,
            "7 non-empty buckets per series"
        );
    }
}
