#!/usr/bin/env python3
"""Generates the Grafana dashboards in this folder (run it after changing a panel, commit both).
Every expression uses only metric names from src/telemetry/metrics.rs."""
import json

DS = {"type": "prometheus", "uid": "${datasource}"}

def panel(pid, title, exprs, x, y, w=12, h=8, kind="timeseries", unit="short", legends=None, desc=""):
    targets = []
    for i, e in enumerate(exprs):
        t = {"datasource": DS, "expr": e, "refId": chr(65 + i)}
        if legends:
            t["legendFormat"] = legends[i]
        if kind == "heatmap":
            t["format"] = "heatmap"
        targets.append(t)
    p = {"id": pid, "type": kind, "title": title, "description": desc, "datasource": DS,
         "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    return p

def row(pid, title, y):
    return {"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}

def dashboard(uid, title, panels, extra_vars=()):
    return {
        "uid": uid, "title": title, "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "tags": ["cronmesh"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            *extra_vars]},
        "panels": panels,
    }

R = "[5m]"
fleet = [
    row(1, "Runs", 0),
    panel(2, "Runs finished per second, by status", ['sum by (status) (rate(cronmesh_runs_finished_total[1m]))'], 0, 1, legends=["{{status}}"], unit="ops"),
    panel(3, "Failure ratio (failed, timed out, killed, lost)", ['sum(rate(cronmesh_runs_finished_total{status=~"failed|timed_out|killed|lost"}' + R + ')) / clamp_min(sum(rate(cronmesh_runs_finished_total' + R + ')), 1e-9)'], 12, 1, unit="percentunit"),
    panel(4, "Runs in progress", ['sum(cronmesh_runs_in_progress)'], 0, 9, w=8, kind="stat"),
    panel(5, "Skipped ticks per second, by reason", ['sum by (reason) (rate(cronmesh_ticks_skipped_total' + R + '))'], 8, 9, w=8, legends=["{{reason}}"], unit="ops"),
    panel(6, "Missed ticks (nobody ran them), by reason; overdue ticks", ['sum by (reason) (increase(cronmesh_ticks_missed_total[1h]))', 'sum(increase(cronmesh_ticks_overdue_total[1h]))', 'max(cronmesh_ledger_lag_seconds)'], 16, 9, w=8, legends=["missed: {{reason}}", "overdue (misfire policy)", "ledger lag (s)"], unit="short"),
    row(7, "Schedule lag", 17),
    panel(8, "Schedule lag p50 / p99 (started - planned)", [
        'histogram_quantile(0.5, sum by (le) (rate(cronmesh_schedule_lag_seconds_bucket' + R + ')))',
        'histogram_quantile(0.99, sum by (le) (rate(cronmesh_schedule_lag_seconds_bucket' + R + ')))'], 0, 18, legends=["p50", "p99"], unit="s"),
    panel(9, "Schedule lag heatmap", ['sum by (le) (rate(cronmesh_schedule_lag_seconds_bucket[1m]))'], 12, 18, kind="heatmap", unit="s"),
    row(10, "Claims and etcd", 26),
    panel(11, "Claim contention ratio (lost / (won + lost))", ['sum(rate(cronmesh_claims_total{outcome="lost"}' + R + ')) / clamp_min(sum(rate(cronmesh_claims_total{outcome=~"won|lost"}' + R + ')), 1e-9)'], 0, 27, w=8, unit="percentunit",
          desc="Near 0 with dispatch = owner; about (workers-1)/workers with dispatch = race (the seed's way)."),
    panel(12, "Claims per second, by outcome", ['sum by (outcome) (rate(cronmesh_claims_total[1m]))'], 8, 27, w=8, legends=["{{outcome}}"], unit="ops"),
    panel(13, "Claim transaction latency p99", ['histogram_quantile(0.99, sum by (le) (rate(cronmesh_claim_latency_seconds_bucket' + R + ')))'], 16, 27, w=8, unit="s"),
    panel(14, "etcd request latency p99, by operation", ['histogram_quantile(0.99, sum by (le, op) (rate(cronmesh_etcd_request_duration_seconds_bucket' + R + ')))'], 0, 35, legends=["{{op}}"], unit="s"),
    panel(15, "etcd errors per second, by operation", ['sum by (op) (rate(cronmesh_etcd_requests_total{outcome="error"}' + R + '))'], 12, 35, legends=["{{op}}"], unit="ops"),
    row(16, "Fleet", 43),
    panel(17, "Workers up", ['max(cronmesh_members)'], 0, 44, w=6, kind="stat"),
    panel(18, "Jobs", ['max(cronmesh_jobs)'], 6, 44, w=6, kind="stat"),
    panel(19, "Owned jobs per worker", ['cronmesh_owned_jobs'], 12, 44, legends=["{{instance}}"]),
    panel(20, "Watch restarts, by watch and reason", ['sum by (watch, reason) (increase(cronmesh_watch_restarts_total[1h]))'], 0, 52, w=8, legends=["{{watch}} {{reason}}"]),
    panel(21, "Membership leases lost, undecodable values in etcd", ['sum(increase(cronmesh_membership_lease_lost_total[1h]))', 'sum by (watch) (increase(cronmesh_bad_values_total[1h]))'], 8, 52, w=8, legends=["leases lost", "bad values under {{watch}}/"]),
    panel(31, "Run slots used per worker (and at capacity)", ['cronmesh_run_slots_used', 'cronmesh_run_slots', 'cronmesh_at_capacity * cronmesh_run_slots'], 16, 52, w=8, legends=["{{instance}} used", "{{instance}} slots", "{{instance}} at capacity"]),
]
fleet += [
    row(22, "Reporting, run log, API, feed", 60),
    panel(23, "Report queue depth and spool size", ['sum(cronmesh_report_queue_depth)', 'sum(cronmesh_report_spool_bytes)'], 0, 61, w=8, legends=["queued events", "spool bytes"]),
    panel(24, "Report failures per second, by cause", ['sum by (cause) (rate(cronmesh_report_failures_total' + R + '))'], 8, 61, w=8, legends=["{{cause}}"], unit="ops"),
    panel(25, "Run-log insert latency p99 and batch size p50", [
        'histogram_quantile(0.99, sum by (le) (rate(cronmesh_logstore_insert_seconds_bucket' + R + ')))',
        'histogram_quantile(0.5, sum by (le) (rate(cronmesh_logstore_insert_batch_size_bucket' + R + ')))'], 16, 61, w=8, legends=["insert p99 (s)", "batch p50"]),
    panel(26, "API requests per second, by route and status", ['sum by (route, status) (rate(cronmesh_http_requests_total' + R + '))'], 0, 69, legends=["{{route}} {{status}}"], unit="ops"),
    panel(27, "API latency p99, by route", ['histogram_quantile(0.99, sum by (le, route) (rate(cronmesh_http_request_duration_seconds_bucket' + R + ')))'], 12, 69, legends=["{{route}}"], unit="s"),
    panel(28, "Event-feed subscribers", ['sum(cronmesh_feed_subscribers)'], 0, 77, w=8, kind="stat"),
    panel(29, "Event-feed messages per second, by type", ['sum by (type) (rate(cronmesh_feed_events_sent_total' + R + '))'], 8, 77, w=8, legends=["{{type}}"], unit="ops"),
    panel(30, "Event-feed lagged subscribers per second", ['sum(rate(cronmesh_feed_lagged_total' + R + '))'], 16, 77, w=8, unit="ops"),
]
fleet += [
    row(32, "Notifications", 85),
    panel(33, "Deliveries per second, by channel and outcome", ['sum by (channel, outcome) (rate(cronmesh_notifications_total' + R + '))'], 0, 86, w=8, legends=["{{channel}} {{outcome}}"], unit="ops",
          desc="delivered = the receiver answered 2xx; retried = an attempt failed and will be made again (backoff); dead = given up after master.notify.retry_for."),
    panel(34, "Notification latency p50 / p99 (run end to the receiver's 2xx)", [
        'histogram_quantile(0.5, sum by (le) (rate(cronmesh_notification_latency_seconds_bucket' + R + ')))',
        'histogram_quantile(0.99, sum by (le) (rate(cronmesh_notification_latency_seconds_bucket' + R + ')))'], 8, 86, w=8, legends=["p50", "p99"], unit="s"),
    panel(35, "Outbox and inbox depth (the notifier master)", ['max(cronmesh_notify_outbox_depth)', 'max(cronmesh_notify_inbox_depth)'], 16, 86, w=8, legends=["outbox: pending deliveries", "inbox: records waiting for a decision"],
          desc="CronmeshNotifyBacklog fires when the outbox stays above 100 for 15 minutes."),
    panel(36, "Dead letters in the last hour, by channel", ['sum by (channel) (increase(cronmesh_notify_dead_letters_total[1h]))'], 0, 94, w=24, legends=["{{channel}}"],
          desc="Deliveries given up on (CronmeshNotificationDeadLetter): cronmesh ctl notifications list --status dead says why."),
]
fleet += [
    row(37, "Dependencies (on the master driving them)", 102),
    panel(38, "Dependency decisions in the last hour, by outcome", ['sum by (outcome) (increase(cronmesh_dependency_decisions_total[1h]))'], 0, 103, w=8, legends=["{{outcome}}"],
          desc="run = every upstream met its condition; the others are root ticks recorded skipped with that reason (cronmesh ctl runs list --status skipped). CronmeshDependencyTimeouts fires on upstream_timeout."),
    panel(39, "Dependency delay p50 / p99 (upstream end to the downstream's run request)", [
        'histogram_quantile(0.5, sum by (le) (rate(cronmesh_dependency_delay_seconds_bucket' + R + ')))',
        'histogram_quantile(0.99, sum by (le) (rate(cronmesh_dependency_delay_seconds_bucket' + R + ')))'], 8, 103, w=8, legends=["p50", "p99"], unit="s"),
    panel(40, "Root ticks waiting, edges, requests sent again", ['max(cronmesh_dependency_waiting)', 'max(cronmesh_dependency_edges)', 'sum(increase(cronmesh_dependency_resends_total[1h]))'], 16, 103, w=8, legends=["root ticks waiting for upstreams", "edges", "requests sent again (1h)"],
          desc="Requests sent again: a decided run nobody took (no live owner, or its claimer died). CronmeshDependencyResends fires on a steady flow."),
]
with open("cronmesh-fleet.json", "w") as f:
    json.dump(dashboard("cronmesh-fleet", "cronmesh / fleet overview", fleet), f, indent=2)
    f.write("\n")

JOBVAR = {"name": "job", "type": "query", "label": "Job", "datasource": DS,
          "query": {"query": "label_values(cronmesh_job_runs_finished_total, job_name)", "refId": "jobs"},
          "definition": "label_values(cronmesh_job_runs_finished_total, job_name)", "refresh": 2}
per_job = [
    row(1, "Job $job (per-job series exist for the jobs in worker.metrics_jobs)", 0),
    panel(2, "Runs finished per second, by status", ['sum by (status) (rate(cronmesh_job_runs_finished_total{job_name="$job"}[1m]))'], 0, 1, legends=["{{status}}"], unit="ops"),
    panel(3, "Failure ratio", ['sum(rate(cronmesh_job_runs_finished_total{job_name="$job",status=~"failed|timed_out|killed|lost"}' + R + ')) / clamp_min(sum(rate(cronmesh_job_runs_finished_total{job_name="$job"}' + R + ')), 1e-9)'], 12, 1, unit="percentunit"),
    panel(4, "Schedule lag p50 / p99", [
        'histogram_quantile(0.5, sum by (le) (rate(cronmesh_job_schedule_lag_seconds_bucket{job_name="$job"}' + R + ')))',
        'histogram_quantile(0.99, sum by (le) (rate(cronmesh_job_schedule_lag_seconds_bucket{job_name="$job"}' + R + ')))'], 0, 9, legends=["p50", "p99"], unit="s"),
    panel(5, "Runs in the last hour, by status", ['sum by (status) (increase(cronmesh_job_runs_finished_total{job_name="$job"}[1h]))'], 12, 9, kind="bargauge", legends=["{{status}}"]),
]
with open("cronmesh-job.json", "w") as f:
    json.dump(dashboard("cronmesh-job", "cronmesh / job", per_job, extra_vars=(JOBVAR,)), f, indent=2)
    f.write("\n")
