"""Writes openapi.json next to this file: the OpenAPI 3.1 document of the master's API.

Run it after changing a route or a response: `python3 src/master/gen_openapi.py`. Tests check the
document against `api::ROUTES` and the running server, validate real responses against it
(tests/e2e/openapi.rs) and fuzz the server from it with schemathesis.

Every response a route can give is listed: its own, the errors of its inputs, and those of the
layers around it (401/403/429 from auth, 408 from the request timeout, 413/415 for bodies, 414
from the HTTP parser, 503 when etcd or the run-log store is down). Response objects list every
field the server sends and no other (`additionalProperties: false`), so the document cannot drift
from the code unnoticed.
"""

import json
import os


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(desc, schema):
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def strict(properties, required=None, **extra):
    """An object with exactly these properties."""
    o = {"type": "object", "properties": properties, "additionalProperties": False}
    if required is None:
        required = list(properties)
    if required:
        o["required"] = required
    o.update(extra)
    return o


ERR = ref("Error")


def err(desc):
    return json_body(desc, ERR)


AUTH = {
    "401": err("No token, or an unknown one (WWW-Authenticate: Bearer)"),
    "403": err("The token's role may not do this"),
    "429": {
        "description": "Too many failed authentications from this address",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
        "content": {"application/json": {"schema": ERR}},
    },
}
LAYERS = {
    "408": err("The request took longer than master.request_timeout"),
    "414": {"description": "The request's URI is too long (answered by the HTTP parser, without a body)"},
}
BODY = {
    "413": err("The body is larger than master.max_body_bytes"),
    "415": err("The body is not sent as application/json"),
}
UNAVAILABLE = {"503": err("etcd or the run-log store is unreachable")}


def responses(own, *extra, auth=True, bad=True):
    r = dict(own)
    if bad:
        r["400"] = err("Bad input: the code says what (malformed_json, duplicate_key, invalid_body, invalid_name, ...)")
    if auth:
        r.update(AUTH)
    r.update(LAYERS)
    for e in extra:
        r.update(e)
    return r


NOT_FOUND = {"404": err("No such job (or run)")}
UNREADABLE = {"409": err("The job is stored but unreadable (unreadable_job): replace it with PUT or DELETE it")}

name_p = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
}


def q(name, type_="string", desc=""):
    return {"name": name, "in": "query", "required": False, "schema": {"type": type_}, "description": desc}


json_req = lambda schema, required=True: {"required": required, "content": {"application/json": {"schema": schema}}}

notify_events = ["failure", "recovery", "missed", "timed_out", "killed", "lost", "paused"]
notify_rule = strict(
    {
        "channel": {"type": "string", "description": "a channel of [[master.notify.channels]]"},
        "on": {
            "type": "array",
            "items": {"enum": notify_events},
            "minItems": 1,
            "default": ["failure", "recovery"],
            "description": "failure covers failed, timed_out, killed and lost unless listed by itself; recovery: the first success after a failure notice",
        },
        "after_failures": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1, "description": "a failure notifies once the job failed this many times in a row"},
    },
    required=["channel"],
)
delivery = strict(
    {
        "id": {"type": "string", "description": "the X-Cronmesh-Delivery header: the same on every attempt"},
        "event": {"enum": notify_events + ["test"]},
        "job": {"type": "string", "description": "empty for a test notice"},
        "run_id": {"type": ["string", "null"]},
        "channel": {"type": "string"},
        "kind": {"enum": ["webhook", "slack", "email", "unknown"]},
        "status": {"enum": ["pending", "delivered", "dead"]},
        "attempts": {"type": "integer"},
        "last_error": {"type": ["string", "null"]},
        "created_at": {"type": "integer", "description": "Unix ms"},
        "updated_at": {"type": "integer", "description": "Unix ms"},
        "next_attempt_at": {"type": ["integer", "null"], "description": "Unix ms"},
        "delivered_at": {"type": ["integer", "null"], "description": "Unix ms"},
        "run_ended_at": {"type": "integer", "description": "Unix ms: when the run ended (latency is measured from it)"},
    },
    required=["id", "event", "job", "run_id", "channel", "kind", "status", "attempts", "last_error", "created_at", "updated_at", "next_attempt_at", "delivered_at"],
)

backfill_id_p = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"},
}
backfill = strict(
    {
        "id": {"type": "string"},
        "job": {"type": "string"},
        "from": {"type": "integer", "description": "Unix ms, included"},
        "to": {"type": "integer", "description": "Unix ms, excluded"},
        "max_parallel": {"type": "integer"},
        "schedule": {"type": "string", "description": "the job's schedule when the backfill was made (its ticks are run)"},
        "timezone": {"type": "string"},
        "state": {"enum": ["running", "cancelling", "completed", "cancelled"]},
        "total": {"type": "integer", "description": "ticks to run: those of the range without a run when it was made"},
        "done": {"type": "integer", "description": "succeeded (here, or by the live schedule meanwhile)"},
        "running": {"type": "integer", "description": "sent to the job's owner, no record yet"},
        "failed": {"type": "integer", "description": "failed, timed out, killed or lost (last attempt)"},
        "skipped": {"type": "integer", "description": "skipped by the job's overlap policy, or cancelled before it was sent"},
        "pending": {"type": "integer", "description": "not sent yet"},
        "already_ran": {"type": "integer", "description": "ticks of the range that had run already"},
        "created_at": {"type": "integer"},
        "updated_at": {"type": "integer"},
        "finished_at": {"type": ["integer", "null"]},
        "created_by": {"type": "string", "description": "the token's name"},
    }
)

paths = {
    "/api/v1/jobs": {
        "get": {
            "summary": "List jobs",
            "operationId": "listJobs",
            "parameters": [
                q("prefix", desc="name prefix"),
                q("label", desc="key=value"),
                q("paused", "boolean"),
                q("limit", "integer", "1-1000, default 100"),
                q("cursor", desc="next_cursor of the previous page"),
                q("recent", "integer", "1-20: add each job's newest N records in brief (recent_runs)"),
            ],
            "responses": responses(
                {"200": json_body("A page of jobs", ref("JobsPage"))},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/jobs/{name}": {
        "get": {
            "summary": "Get a job with its next fire times",
            "operationId": "getJob",
            "parameters": [name_p, q("recent", "integer", "1-20: add the job's newest N records in brief (recent_runs)")],
            "responses": responses({"200": json_body("The job", ref("Job"))}, NOT_FOUND, UNREADABLE, UNAVAILABLE),
        },
        "put": {
            "summary": "Create or replace a job (a name may not begin with '-'). A spec equal to the stored one writes nothing (change: unchanged, same revision); dry_run=true validates and says what would change, writing nothing. A body without `paused` keeps a pause a master made for the job's failures (paused_reason); send paused: false, or POST .../resume, to resume it",
            "operationId": "putJob",
            "parameters": [
                name_p,
                q("dry_run", "boolean", "validate and answer what would change (created, configured, unchanged), writing nothing"),
                q("with", "string", "with dry_run: jobs applied together with this one (comma-separated), counted as existing upstreams"),
            ],
            "requestBody": json_req(ref("JobSpec")),
            "responses": responses(
                {
                    "200": json_body("Replaced (change: configured), or left as it was (change: unchanged)", ref("JobPut")),
                    "201": json_body("Created", ref("JobPut")),
                },
                BODY,
                {"409": err("The job changed while it was being saved; try again")},
                UNAVAILABLE,
            ),
        },
        "delete": {
            "summary": "Delete a job; refused (409 has_dependents, naming them) while other jobs run after it, unless force=true",
            "operationId": "deleteJob",
            "parameters": [name_p, q("force", "boolean", "delete also when other jobs run after this one (their root ticks then time out)")],
            "responses": responses(
                {"204": {"description": "Deleted"}},
                NOT_FOUND,
                {"409": err("Other jobs run after this one (has_dependents): the message names them")},
                UNAVAILABLE,
            ),
        },
    },
    "/api/v1/jobs/{name}/run": {
        "post": {
            "summary": "Run now (continues the caller's traceparent header); a sharded job runs every shard, a fanout = all job on every eligible live worker (trigger_id: the first run's)",
            "operationId": "runJob",
            "parameters": [name_p, {"name": "traceparent", "in": "header", "required": False, "schema": {"type": "string"}}],
            "responses": responses(
                {"202": json_body("Requested", strict({"job": {"type": "string"}, "trigger_id": {"type": "string"}}))},
                NOT_FOUND,
                {"409": err("Stored but unreadable (unreadable_job), or a fanout = all job with no eligible worker now (conflict)")},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/jobs/{name}/kill": {
        "post": {
            "summary": "Kill the job's running runs (or one run)",
            "operationId": "killJob",
            "parameters": [name_p],
            "requestBody": json_req(strict({"run_id": {"type": "string"}}, required=[]), required=False),
            "responses": responses(
                {"202": json_body("Requested", strict({"job": {"type": "string"}, "kill": {"const": "requested"}}))},
                {"413": BODY["413"]},
                NOT_FOUND,
                UNREADABLE,
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/jobs/{name}/pause": {
        "post": {
            "summary": "Pause",
            "operationId": "pauseJob",
            "parameters": [name_p],
            "responses": responses({"200": json_body("The job", ref("Job"))}, NOT_FOUND, UNREADABLE, UNAVAILABLE),
        }
    },
    "/api/v1/jobs/{name}/resume": {
        "post": {
            "summary": "Resume (no backlog)",
            "operationId": "resumeJob",
            "parameters": [name_p],
            "responses": responses({"200": json_body("The job", ref("Job"))}, NOT_FOUND, UNREADABLE, UNAVAILABLE),
        }
    },
    "/api/v1/jobs/{name}/history": {
        "get": {
            "summary": "Who changed the job, and when: its kept versions (master.job_history per job, in the run log), newest first, each with the etcd revision, updated_at, updated_by (the writing token's name) and the spec; current marks the one the job is at. A deleted job's versions stay (rollback recreates it)",
            "operationId": "jobHistory",
            "parameters": [name_p, q("limit", "integer", "1-10000 (default 50): most versions listed")],
            "responses": responses(
                {
                    "200": json_body(
                        "The versions",
                        strict(
                            {
                                "job": {"type": "string"},
                                "current_revision": {"type": ["integer", "null"], "description": "the job's revision now; null when it is deleted"},
                                "versions": {
                                    "type": "array",
                                    "items": strict(
                                        {
                                            "revision": {"type": "integer"},
                                            "updated_at": {"type": "integer", "description": "Unix ms"},
                                            "updated_by": {"type": ["string", "null"], "description": "the token's name (anonymous under no_auth, notifier for pause_after_failures); null when the write did not say"},
                                            "current": {"type": "boolean"},
                                            "spec": {"type": ["object", "string"], "description": "the job spec written at this revision"},
                                        }
                                    ),
                                },
                            }
                        ),
                    )
                },
                {"404": err("No such job, and no versions of it kept")},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/jobs/{name}/rollback": {
        "post": {
            "summary": "Restore (admin) the job to the spec of one of its kept versions, through the same checks as PUT (notification rules, dependencies), with updated_by = the caller; recreates a deleted job. A version that is no longer a valid job (its upstream is gone) is 409 with the check's code (unknown_upstream, dependency_cycle, invalid_notify, invalid_version) and writes nothing; restoring the spec the job has writes nothing (change: unchanged)",
            "operationId": "rollbackJob",
            "parameters": [name_p],
            "requestBody": json_req(strict({"revision": {"type": "integer", "minimum": 1, "description": "a revision from GET .../history"}})),
            "responses": responses(
                {
                    "200": json_body(
                        "Restored (change: configured, or created for a deleted job), or already so (change: unchanged)",
                        ref("JobRollback"),
                    )
                },
                BODY,
                {"404": err("No version of the job at that revision is kept")},
                {"409": err("That version cannot be restored now: the code and message say why")},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/jobs/{name}/ticks": {
        "get": {
            "summary": "Every expected tick of the job in a range, newest first, and what became of it (at most 10,000)",
            "operationId": "jobTicks",
            "parameters": [
                name_p,
                q("from", desc="RFC 3339 or Unix ms (default: to - 1h)"),
                q("to", desc="RFC 3339 or Unix ms (default: now)"),
            ],
            "responses": responses(
                {
                    "200": json_body(
                        "The ticks",
                        strict(
                            {
                                "job": {"type": "string"},
                                "from": {"type": "integer"},
                                "to": {"type": "integer"},
                                "ticks": {
                                    "type": "array",
                                    "maxItems": 10000,
                                    "items": strict(
                                        {
                                            "planned_at": {"type": "integer"},
                                            "outcome": {"enum": ["succeeded", "failed", "timed_out", "killed", "skipped", "lost", "missed", "running", "pending"]},
                                            "run_id": {"type": ["string", "null"]},
                                            "reason": {"type": ["string", "null"]},
                                        }
                                    ),
                                },
                            }
                        ),
                    )
                },
                NOT_FOUND,
                UNREADABLE,
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/jobs/{name}/backfill": {
        "post": {
            "summary": "Backfill (admin): run every tick of the job's schedule in [from, to) that has no run yet (a missed placeholder or a skip is no run), once each, in order, at most max_parallel at once, also for a paused job. A tick the live schedule runs meanwhile is not run again. At most 10,000 ticks (too_many_ticks: split the range); to may not be in the future (range_in_future); from must be before to (invalid_range)",
            "operationId": "backfillJob",
            "parameters": [name_p],
            "requestBody": json_req(
                strict(
                    {
                        "from": {"type": ["string", "integer"], "description": "RFC 3339 or Unix ms, included"},
                        "to": {"type": ["string", "integer"], "description": "RFC 3339 or Unix ms, excluded; not in the future"},
                        "max_parallel": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
                    },
                    required=["from", "to"],
                )
            ),
            "responses": responses(
                {
                    "202": {
                        "description": "Made (Location: /api/v1/backfills/{id}); with ticks 0 it is completed at once",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {
                                "schema": strict(
                                    {
                                        "id": {"type": "string"},
                                        "job": {"type": "string"},
                                        "ticks": {"type": "integer", "description": "ticks to run"},
                                        "already_ran": {"type": "integer", "description": "ticks of the range that ran already"},
                                        "backfill": ref("Backfill"),
                                    }
                                )
                            }
                        },
                    }
                },
                BODY,
                {"404": err("No such job: a deleted job cannot be backfilled"), "409": err("The job cannot be backfilled (not_backfillable: it runs after others, is sharded, or runs on every worker), or is stored unreadable (unreadable_job)")},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/backfills": {
        "get": {
            "summary": "List backfills, newest first (finished ones are kept 7 days)",
            "operationId": "listBackfills",
            "parameters": [q("job", desc="only this job's")],
            "responses": responses(
                {"200": json_body("The backfills", strict({"backfills": {"type": "array", "items": ref("Backfill")}}))},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/backfills/{id}": {
        "get": {
            "summary": "A backfill's state and counts",
            "operationId": "getBackfill",
            "parameters": [backfill_id_p],
            "responses": responses(
                {"200": json_body("The backfill", ref("Backfill"))},
                {"404": err("No such backfill"), "409": err("The backfill is stored but unreadable (unreadable_backfill): the message names the etcd key")},
                UNAVAILABLE,
            ),
        },
        "delete": {
            "summary": "Cancel (admin): ticks running finish; the ticks not sent are recorded skipped with reason backfill_cancelled",
            "operationId": "cancelBackfill",
            "parameters": [backfill_id_p],
            "responses": responses(
                {"202": json_body("Cancelling", ref("Backfill"))},
                {"404": err("No such backfill"), "409": err("Finished already (backfill_finished), or unreadable (unreadable_backfill)")},
                UNAVAILABLE,
            ),
        },
    },
    "/api/v1/runs": {
        "get": {
            "summary": "List runs, newest first",
            "operationId": "listRuns",
            "parameters": [
                q("job", desc="job names, comma-separated (at most 100): records of any of them"),
                q("status", desc="statuses, comma-separated (any of them): succeeded, failed, timed_out, killed, skipped, lost, missed; runs in progress are in GET /api/v1/workers (running)"),
                q("from", desc="RFC 3339 or Unix ms, planned at or after"),
                q("to", desc="RFC 3339 or Unix ms, planned before"),
                q("limit", "integer", "1-1000, default 50"),
                q("cursor"),
            ],
            "responses": responses({"200": json_body("A page of runs (without output)", ref("RunPage"))}, UNAVAILABLE),
        }
    },
    "/api/v1/runs/{run_id}": {
        "get": {
            "summary": "One run with its output. run_id is a whole id, or the beginning or the end of one (at least 6 characters; what tables show is the end) that only one run has",
            "operationId": "getRun",
            "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "a run id, or its beginning or end (6 characters or more; dashes and case do not matter)"}],
            "responses": responses(
                {"200": json_body("The run", ref("RunRecord"))},
                NOT_FOUND,
                {"409": err("ambiguous_id: several runs begin or end with it; error.candidates lists some of their ids")},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/workers": {
        "get": {
            "summary": "Live workers: labels, flags, clock offset, owned jobs, runs in progress, last heartbeat",
            "operationId": "listWorkers",
            "responses": responses({"200": json_body("Workers", {"type": "array", "items": ref("Worker")})}, UNAVAILABLE, bad=False),
        }
    },
    "/api/v1/schedules/preview": {
        "post": {
            "summary": "The next fire times of a schedule, or its validation error (changes nothing; what the job form shows while typing)",
            "operationId": "previewSchedule",
            "requestBody": json_req(ref("PreviewRequest")),
            "responses": responses({"200": json_body("The next fire times", ref("Preview"))}, BODY),
        }
    },
    "/api/v1/reports": {
        "post": {
            "summary": "Report runs (workers; role worker or admin). Events are checked (names, times, the job exists, a bound token's worker id, runs in progress per worker); one refused event refuses the batch (422 lists each with its reason)",
            "operationId": "report",
            "requestBody": json_req(ref("ReportBatch")),
            "responses": responses(
                {"200": json_body("Stored", strict({"inserted": {"type": "integer"}, "duplicates": {"type": "integer"}}))},
                BODY,
                {"422": json_body("Some events are refused; nothing was stored", ref("Refusal"))},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/events": {
        "get": {
            "summary": "WebSocket event feed (upgrade): job.saved, job.deleted, worker.joined, worker.left, run.started, run.finished, notification (topic notifications, live only), backfill.progress (topic backfills, live only), lagged, resume_failed; every event carries an opaque cursor. Client messages are at most 4 KiB (larger: closed with 1009)",
            "operationId": "events",
            "parameters": [
                q("topics", desc="jobs,workers,runs,notifications,backfills (default jobs,workers,runs)"),
                q("job", desc="job names, comma-separated"),
                q("status", desc="run statuses for run.finished"),
                q("since_revision", "integer", "replay job events from this etcd revision"),
                q(
                    "cursor",
                    desc="an event's cursor: replay the job and run events after it, then go on live; what cannot be replayed is said with {\"type\":\"resume_failed\",\"topics\",\"reason\",\"message\"} (read those topics again from the API). Not with since_revision",
                ),
                q(
                    "token",
                    desc="bearer token, for clients that can set neither a header nor a subprotocol; browsers should offer the subprotocols cronmesh.v1 and cronmesh.bearer.<base64url(token)> instead, which keeps the token out of URLs",
                ),
            ],
            "responses": responses(
                {"101": {"description": "Switching protocols: one JSON message per event"}},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/time": {
        "get": {
            "summary": "This master's clock (workers measure theirs against it; no token needed)",
            "operationId": "time",
            "security": [],
            "responses": responses(
                {"200": json_body("The time", strict({"now_ms": {"type": "integer", "description": "Unix ms"}, "master": {"type": "string"}}))},
                auth=False,
                bad=False,
            ),
        }
    },
    "/api/v1/health": {
        "get": {
            "summary": "What this master depends on (etcd, the run log, the workers), each up or not with one line of why and what to do, and the caller's role",
            "operationId": "health",
            "responses": responses({"200": json_body("Health", ref("Health"))}, bad=False),
        }
    },
    "/api/v1/notifications": {
        "get": {
            "summary": "Notices newest first: each delivery of a job's notification to a channel (pending = in the outbox, delivered, dead = given up after master.notify.retry_for)",
            "operationId": "listNotifications",
            "parameters": [
                q("job", desc="one job's notices"),
                q("channel", desc="one channel's notices"),
                {"name": "status", "in": "query", "required": False, "schema": {"enum": ["pending", "delivered", "dead"]}},
                {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}, "description": "1-500, default 50"},
            ],
            "responses": responses(
                {"200": json_body("Notices", strict({"notifications": {"type": "array", "items": ref("Delivery")}}))},
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/notify/channels": {
        "get": {
            "summary": "The notification channels configured on this master (no secrets) and the fleet's default rules",
            "operationId": "notifyChannels",
            "responses": responses(
                {
                    "200": json_body(
                        "Channels",
                        strict(
                            {
                                "channels": {
                                    "type": "array",
                                    "items": strict(
                                        {
                                            "name": {"type": "string"},
                                            "kind": {"enum": ["webhook", "slack", "email"]},
                                            "target": {"type": "string", "description": "the URL's scheme and host, or the mail recipients"},
                                            "signed": {"type": "boolean", "description": "webhook bodies carry X-Cronmesh-Signature"},
                                        }
                                    ),
                                },
                                "default": {"type": "array", "items": notify_rule, "description": "the rules of jobs without a notify field"},
                            }
                        ),
                    )
                },
                bad=False,
            ),
        }
    },
    "/api/v1/notify/test": {
        "post": {
            "summary": "Send a test notice to a channel now (admin); answers when the receiver took it",
            "operationId": "notifyTest",
            "parameters": [{"name": "channel", "in": "query", "required": True, "schema": {"type": "string"}}],
            "responses": responses(
                {
                    "200": json_body("Delivered", strict({"delivery": ref("Delivery")})),
                    "404": err("No such channel on this master (channel_not_found)"),
                    "502": err("The receiver refused the notice or did not answer (notify_failed): the message says what it answered"),
                },
                UNAVAILABLE,
            ),
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "security": [],
            "responses": responses({"200": json_body("OpenAPI 3.1", {"type": "object"})}, auth=False, bad=False),
        }
    },
    "/healthz": {
        "get": {
            "summary": "The process is up",
            "operationId": "healthz",
            "security": [],
            "responses": responses(
                {"200": {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                auth=False,
                bad=False,
            ),
        }
    },
    "/readyz": {
        "get": {
            "summary": "etcd and the run-log store are reachable",
            "operationId": "readyz",
            "security": [],
            "responses": responses(
                {
                    "200": json_body("ready", ref("Readiness")),
                    "503": json_body("not ready: the failing part says why", ref("Readiness")),
                },
                auth=False,
                bad=False,
            ),
        }
    },
}

dur = {"type": "string", "description": "humantime duration, e.g. 30s, 1h30m"}
smap = {"type": "object", "additionalProperties": {"type": "string"}}
status_enum = {"enum": ["succeeded", "failed", "timed_out", "killed", "skipped", "lost", "missed"]}
opt_int = {"type": ["integer", "null"]}
ms = {"type": ["integer", "null"], "description": "Unix ms"}

spec_props = {
    "name": {"type": "string"},
    "schedule": {"type": "string", "description": "5/6/7-field cron (names, a/n, L, W, #, H for a value hashed from the job name), @hourly-style macro, or @every 30s; empty (or left out) for a job with after"},
    "timezone": {"type": "string", "default": "UTC"},
    "command": {"type": "string"},
    "shell": {"type": "string", "default": "/bin/sh"},
    "env": smap,
    "workdir": {"type": "string"},
    "timeout": dur,
    "retries": {"type": "integer", "minimum": 0},
    "retry_backoff": dur,
    "concurrency": {"enum": ["allow", "forbid", "replace", "buffer_one", "buffer_all"], "description": "while a run is going: allow another beside it, forbid (skip), replace (kill it), buffer_one (keep one tick, run it when the run ends), buffer_all (queue up to max_buffer ticks, in order)"},
    "max_buffer": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100, "description": "buffer_all only: most ticks kept waiting; later ones are skipped (buffer_full)"},
    "misfire": {"enum": ["run_once", "skip", "run_all"], "description": "overdue ticks: run_once runs the newest within starting_deadline, skip runs none, run_all runs every one within catchup_window, oldest first, one after another (not with forbid or replace)"},
    "catchup_window": {"type": "string", "description": "run_all only: how far back overdue ticks still run (humantime, default 1h, at least starting_deadline, at most 24h)"},
    "stderr": {"enum": ["merged", "separate"], "default": "merged", "description": "merged: stdout and stderr in one pipe, the exact order of writes; separate: stderr marked in the output (stderr_spans), the order between the two streams as the worker read them"},
    "starting_deadline": dur,
    "selector": smap,
    "paused": {"type": "boolean"},
    "max_output_bytes": {"type": "integer", "minimum": 0},
    "description": {"type": "string"},
    "owner": {"type": "string"},
    "labels": smap,
    "notify": {
        "type": "array",
        "items": notify_rule,
        "maxItems": 20,
        "description": "who hears about this job's runs; absent: the fleet's default rules (master.notify.default); []: nobody",
    },
    "pause_after_failures": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "pause the job after this many failures in a row (failed, timed out, killed, lost)"},
    "after": {
        "type": "array",
        "maxItems": 32,
        "items": strict(
            {
                "job": {"type": "string", "description": "an existing job (no cycle: a -> b -> a is refused, naming it)"},
                "on": {"enum": ["success", "failure", "finished"], "description": "what the upstream's last attempt must come to (default success)"},
            },
            required=["job"],
        ),
        "description": "instead of a schedule (leave schedule empty): run once per root tick when every upstream's run of that root tick met its condition; a condition that can be met no more skips the tick (upstream_failed: x)",
    },
    "after_timeout": {"type": "string", "description": "with after: a root tick not met this long after its planned time is skipped (upstream_timeout); default 1h, 1s to 24h"},
    "shards": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "each tick runs as this many shards, each once, spread over the eligible workers by rendezvous on (job, shard); the command sees CRONMESH_SHARD_INDEX (0-based) and CRONMESH_SHARD_TOTAL; not with fanout all or after"},
    "fanout": {"enum": ["one", "all"], "description": "all: each tick runs once on every eligible live worker (a worker that joins runs the ticks after it joined); default one"},
    "run_as": {"type": "string", "minLength": 1, "maxLength": 32, "pattern": "^[a-z_][a-z0-9_-]*\\$?$", "description": "the user the command runs as, with that user's groups only: on a worker started as root whose worker.allowed_users lists it; elsewhere the run is recorded failed, saying why (in standalone the write is refused); absent: the worker's own user"},
}
jobspec = strict(spec_props, required=["command"])

warnings = {
    "type": "array",
    "items": {"type": "string"},
    "description": "things to know about the schedule, e.g. that its meaning changed with the crontab(5) day rule, with the expression that keeps the old meaning; usually empty",
}
last_run = {
    "oneOf": [
        {"type": "null"},
        strict({"run_id": {"type": "string"}, "status": status_enum, "planned_at": {"type": "integer"}, "ended_at": ms, "exit_code": opt_int}),
    ],
    "description": "the newest run record of the job, in brief",
}
job = strict(
    {
        **spec_props,
        "created_at": {"type": "integer"},
        "updated_at": {"type": "integer"},
        "revision": {"type": "integer"},
        "paused_reason": {"type": "string", "description": "why a master paused the job (pause_after_failures); absent when paused by hand or not paused"},
        "paused_at": {"type": "integer", "description": "Unix ms: when it was paused, while it is"},
        "updated_by": {"type": "string", "description": "who made the latest write: the API token's name (anonymous under no_auth, notifier for a pause of pause_after_failures); absent when the write did not say"},
        "signature": strict(
            {
                "key": {"type": "string", "description": "id of the master key that signed it (16 hex digits)"},
                "sig": {"type": "string", "description": "Ed25519 signature, base64"},
            },
            ["key", "sig"],
        ),
        "schedule_description": {"type": "string"},
        "schedule_resolved": {"type": "string", "description": "the schedule with each H replaced by the values chosen for this job's name"},
        "schedule_warnings": warnings,
        "next_fire_times": {"type": "array", "items": {"type": "string"}},
        "last_run": last_run,
        "recent_runs": {
            "type": "array",
            "items": strict({"run_id": {"type": "string"}, "status": status_enum, "planned_at": {"type": "integer"}, "ended_at": ms, "exit_code": opt_int}),
            "description": "with recent=N: the job's newest N records in brief, newest first",
        },
        "stats_24h": strict(
            {
                "runs": {"type": "integer"},
                "succeeded": {"type": "integer"},
                "failed": {"type": "integer", "description": "failed, timed out, killed or lost"},
                "skipped": {"type": "integer"},
                "missed": {"type": "integer"},
            },
            description="the job's records of the last 24 hours by outcome (at most 30 s old)",
        ),
    },
    required=[
        "name", "schedule", "timezone", "command", "shell", "paused", "created_at", "updated_at", "revision",
        "schedule_description", "schedule_resolved", "schedule_warnings", "next_fire_times", "last_run", "stats_24h",
    ],
)

job_put = strict(
    {
        **job["properties"],
        "change": {"enum": ["created", "configured", "unchanged"], "description": "what the PUT did (with dry_run: would do); unchanged: nothing was written"},
        "dry_run": {"type": "boolean"},
    },
    required=job["required"] + ["change", "dry_run"],
)

job_rollback = strict(
    {
        **job_put["properties"],
        "restored_revision": {"type": "integer", "description": "the version restored"},
    },
    required=job_put["required"] + ["restored_revision"],
)

run = strict(
    {
        "run_id": {"type": "string"},
        "job": {"type": "string"},
        "worker": {"type": "string"},
        "attempt": {"type": "integer"},
        "trigger": {"enum": ["schedule", "manual", "retry", "backfill", "dependency"]},
        "planned_at": {"type": "integer"},
        "claimed_at": ms,
        "started_at": ms,
        "ended_at": ms,
        "lag_ms": opt_int,
        "duration_ms": opt_int,
        "status": status_enum,
        "exit_code": opt_int,
        "signal": opt_int,
        "output": {"type": "string"},
        "stderr_spans": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
            "description": "the [from, to) byte ranges of output the command wrote to stderr, in order; absent when none",
        },
        "output_truncated_bytes": {"type": "integer"},
        "error": {"type": ["string", "null"]},
        "max_rss_kb": opt_int,
        "cpu_ms": opt_int,
        "trace_id": {"type": ["string", "null"]},
        "root": strict(
            {"job": {"type": "string"}, "planned_at": {"type": "integer"}},
            description="a dependency run's root tick: the job the chain started from and its planned time (Unix ms); absent otherwise",
        ),
        "shard": {"type": "integer", "minimum": 0, "description": "a sharded job's shard (0-based); absent otherwise"},
    }
)
# stderr_spans is left out when the command wrote nothing to stderr; root but for dependency
# runs, shard but for sharded jobs
run["required"] = [k for k in run["required"] if k not in ("stderr_spans", "root", "shard")]
# what a worker sends: fields that may be null may also be left out
run_in = dict(run, required=["run_id", "job", "worker", "attempt", "trigger", "planned_at", "status"])
started = strict(
    {k: run["properties"][k] for k in ["run_id", "job", "worker", "attempt", "trigger", "planned_at"]}
    | {"started_at": {"type": "integer"}, "trace_id": {"type": ["string", "null"]}},
    required=["run_id", "job", "worker", "attempt", "trigger", "planned_at", "started_at"],
)

worker = strict(
    {
        "id": {"type": "string"},
        "labels": smap,
        "hostname": {"type": "string"},
        "pid": {"type": "integer"},
        "started_at": {"type": "integer"},
        "draining": {"type": "boolean"},
        "at_capacity": {"type": "boolean", "description": "every run slot is taken: its jobs moved to workers with room"},
        "clock_skewed": {"type": "boolean", "description": "its clock is off from the masters' by more than worker.max_clock_skew: it claims nothing while a worker with a right clock can"},
        "clock_offset_ms": {"type": "integer", "description": "how far its clock is ahead of the masters' (negative: behind), as it last measured"},
        "dispatch": {"enum": ["owner", "race"]},
        "listen": {"type": ["string", "null"]},
        "version": {"type": "string"},
        "owned_jobs": {"type": "integer"},
        "running": {"type": "array", "items": ref("RunStarted")},
        "last_heartbeat": ms,
    },
    required=["id", "labels", "hostname", "pid", "started_at", "draining", "listen", "version", "owned_jobs", "running", "last_heartbeat"],
)

error = {
    "type": "object",
    "properties": {
        "error": strict(
            {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the job-spec field (or JSON key) at fault, when one is"},
                "candidates": {"type": "array", "items": {"type": "string"}, "description": "ambiguous_id: some of the run ids the fragment matches"},
            },
            required=["code", "message"],
        ),
    },
    "required": ["error"],
    "additionalProperties": False,
}
refusal = strict(
    {
        "error": error["properties"]["error"],
        "refused": {
            "type": "array",
            "items": strict(
                {
                    "kind": {"enum": ["started", "finished"]},
                    "run_id": {"type": "string"},
                    "reason": {"enum": ["invalid_name", "invalid_run_id", "time_out_of_range", "unknown_job", "unknown_worker", "wrong_worker", "too_many_running", "invalid_stderr_spans"]},
                    "message": {"type": "string"},
                }
            ),
        },
    }
)

doc = {
    "openapi": "3.1.0",
    "info": {
        "title": "cronmesh",
        "version": "0.1.0",
        "description": 'Distributed cron: jobs, runs, workers. Errors are {"error":{"code","message","field"?}}. The web page is served at /. Bodies are JSON objects without repeated keys.',
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": paths,
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Roles: read (GET), admin (everything), worker (reports)"}},
        "schemas": {
            "Error": error,
            "Refusal": refusal,
            "JobSpec": jobspec,
            "Job": job,
            "JobPut": job_put,
            "JobRollback": job_rollback,
            "JobsPage": strict(
                {
                    "jobs": {"type": "array", "items": ref("Job")},
                    "next_cursor": {"type": ["string", "null"]},
                    "revision": {"type": "integer", "description": "etcd revision the list was read at; the event feed's since_revision=revision+1 misses no later change"},
                }
            ),
            "PreviewRequest": strict(
                {
                    "schedule": {"type": "string", "description": "as in a job spec"},
                    "timezone": {"type": "string", "default": "UTC"},
                    "from": {"type": ["string", "integer"], "description": "fire times strictly after this: RFC 3339 or Unix ms (default now)"},
                    "count": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
                    "name": {"type": "string", "description": "the job's name, which H hashes; required when the schedule uses H"},
                },
                required=["schedule"],
            ),
            "Preview": strict(
                {
                    "schedule": {"type": "string"},
                    "timezone": {"type": "string"},
                    "description": {"type": "string"},
                    "resolved": {"type": "string", "description": "the schedule with each H replaced by its values for name"},
                    "dst_rule": {"enum": ["fixed_time", "wall_clock", "interval"], "description": "fixed_time: runs once at a repeated wall time and at the end of a DST gap; wall_clock: follows the clock (both passes, skips the gap); interval: @every"},
                    "from": {"type": "string"},
                    "next_fire_times": {"type": "array", "items": {"type": "string"}},
                    "warnings": warnings,
                }
            ),
            "RunRecord": run,
            "RunRecordIn": run_in,
            "RunPage": strict({"runs": {"type": "array", "items": ref("RunRecord")}, "next_cursor": {"type": ["string", "null"]}}),
            "RunStarted": started,
            "Worker": worker,
            "ReportBatch": strict(
                {"started": {"type": "array", "items": ref("RunStarted")}, "finished": {"type": "array", "items": ref("RunRecordIn")}},
                required=[],
            ),
            "Delivery": delivery,
            "Backfill": backfill,
            "Readiness": strict({"etcd": {"type": "string"}, "log_store": {"type": "string"}}),
            "Health": strict(
                {
                    "status": {"enum": ["ok", "degraded"]},
                    "role": {"enum": ["admin", "read"], "description": "what the caller's token may do"},
                    "master": {"type": "string"},
                    "checked_at": {"type": "integer", "description": "Unix ms"},
                    "components": {
                        "type": "array",
                        "items": strict(
                            {
                                "name": {"enum": ["etcd", "run_log", "workers"]},
                                "ok": {"type": "boolean"},
                                "message": {"type": "string", "description": "one line: what was found"},
                                "action": {"type": "string", "description": "what to do about it; empty when ok"},
                            }
                        ),
                    },
                }
            ),
        },
    },
}

with open(os.path.join(os.path.dirname(__file__), "openapi.json"), "w") as f:
    f.write(json.dumps(doc, indent=1) + "\n")
