import json
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def resp(desc, schema=None):
    r={"description":desc}
    if schema: r["content"]={"application/json":{"schema":schema}}
    return r
err=resp("Error", ref("Error"))
common={"400":err,"401":err,"403":err}
name_p={"name":"name","in":"path","required":True,"schema":{"type":"string","pattern":"^[A-Za-z0-9._-]{1,128}$"}}
def q(n,t="string",d=""): return {"name":n,"in":"query","required":False,"schema":{"type":t},"description":d}
paths={
 "/api/v1/jobs":{"get":{"summary":"List jobs","operationId":"listJobs","parameters":[q("prefix",d="name prefix"),q("label",d="key=value"),q("paused","boolean"),q("limit","integer","1-1000, default 100"),q("cursor",d="next_cursor of the previous page")],
   "responses":{"200":resp("A page of jobs",{"type":"object","properties":{"jobs":{"type":"array","items":ref("Job")},"next_cursor":{"type":["string","null"]},"revision":{"type":"integer","description":"etcd revision the list was read at; the event feed's since_revision=revision+1 misses no later change"}}}),**common}}},
 "/api/v1/jobs/{name}":{
   "get":{"summary":"Get a job with its next fire times","operationId":"getJob","parameters":[name_p],"responses":{"200":resp("The job",ref("Job")),"404":err,**common}},
   "put":{"summary":"Create or replace a job","operationId":"putJob","parameters":[name_p],"requestBody":{"required":True,"content":{"application/json":{"schema":ref("JobSpec")}}},
          "responses":{"200":resp("Replaced",ref("Job")),"201":resp("Created",ref("Job")),"413":err,"415":err,**common}},
   "delete":{"summary":"Delete a job","operationId":"deleteJob","parameters":[name_p],"responses":{"204":resp("Deleted"),"404":err,**common}}},
 "/api/v1/jobs/{name}/ticks":{"get":{"summary":"Every expected tick of the job in a range, newest first, and what became of it","operationId":"jobTicks","parameters":[name_p,q("from",d="RFC 3339 or Unix ms (default: to - 1h)"),q("to",d="RFC 3339 or Unix ms (default: now)")],
   "responses":{"200":resp("The ticks",{"type":"object","properties":{"job":{"type":"string"},"from":{"type":"integer"},"to":{"type":"integer"},"ticks":{"type":"array","maxItems":10000,"items":{"type":"object","properties":{"planned_at":{"type":"integer"},"outcome":{"enum":["succeeded","failed","timed_out","killed","skipped","lost","missed","running","pending"]},"run_id":{"type":["string","null"]},"reason":{"type":["string","null"]}}}}}}),"404":err,**common}}},
 "/api/v1/jobs/{name}/run":{"post":{"summary":"Run now (continues the caller's traceparent header)","operationId":"runJob","parameters":[name_p,{"name":"traceparent","in":"header","required":False,"schema":{"type":"string"}}],"responses":{"202":resp("Requested",{"type":"object","properties":{"job":{"type":"string"},"trigger_id":{"type":"string"}}}),"404":err,**common}}},
 "/api/v1/jobs/{name}/kill":{"post":{"summary":"Kill the job's running runs (or one run)","operationId":"killJob","parameters":[name_p],"requestBody":{"required":False,"content":{"application/json":{"schema":{"type":"object","properties":{"run_id":{"type":"string"}},"additionalProperties":False}}}},"responses":{"202":resp("Requested"),"404":err,**common}}},
 "/api/v1/jobs/{name}/pause":{"post":{"summary":"Pause","operationId":"pauseJob","parameters":[name_p],"responses":{"200":resp("The job",ref("Job")),"404":err,**common}}},
 "/api/v1/jobs/{name}/resume":{"post":{"summary":"Resume (no backlog)","operationId":"resumeJob","parameters":[name_p],"responses":{"200":resp("The job",ref("Job")),"404":err,**common}}},
 "/api/v1/runs":{"get":{"summary":"List runs, newest first","operationId":"listRuns","parameters":[q("job"),q("status",d="succeeded|failed|timed_out|killed|skipped|lost|missed"),q("from",d="RFC 3339 or Unix ms, planned at or after"),q("to",d="RFC 3339 or Unix ms, planned before"),q("limit","integer","1-1000, default 50"),q("cursor")],
   "responses":{"200":resp("A page of runs (without output)",{"type":"object","properties":{"runs":{"type":"array","items":ref("RunRecord")},"next_cursor":{"type":["string","null"]}}}),**common}}},
 "/api/v1/runs/{run_id}":{"get":{"summary":"One run with its output","operationId":"getRun","parameters":[{"name":"run_id","in":"path","required":True,"schema":{"type":"string"}}],"responses":{"200":resp("The run",ref("RunRecord")),"404":err,**common}}},
 "/api/v1/workers":{"get":{"summary":"Live workers","operationId":"listWorkers","responses":{"200":resp("Workers",{"type":"array","items":ref("Worker")}),**common}}},
 "/api/v1/schedules/preview":{"post":{"summary":"The next fire times of a schedule, or its validation error (changes nothing; what the job form shows while typing)","operationId":"previewSchedule",
   "requestBody":{"required":True,"content":{"application/json":{"schema":ref("PreviewRequest")}}},
   "responses":{"200":resp("The next fire times",ref("Preview")),"413":err,"415":err,**common}}},
 "/api/v1/reports":{"post":{"summary":"Report runs (workers; role worker or admin)","operationId":"report","requestBody":{"required":True,"content":{"application/json":{"schema":ref("ReportBatch")}}},"responses":{"200":resp("Stored",{"type":"object","properties":{"inserted":{"type":"integer"},"duplicates":{"type":"integer"}}}),"413":err,**common}}},
 "/api/v1/events":{"get":{"summary":"WebSocket event feed (upgrade): job.saved, job.deleted, worker.joined, worker.left, run.started, run.finished, lagged, resume_failed; every event carries an opaque cursor","operationId":"events",
   "parameters":[q("topics",d="jobs,workers,runs (default all)"),q("job",d="job names, comma-separated"),q("status",d="run statuses for run.finished"),q("since_revision","integer","replay job events from this etcd revision"),q("cursor",d="an event's cursor: replay the job and run events after it, then go on live; what cannot be replayed is said with {\"type\":\"resume_failed\",\"topics\",\"reason\",\"message\"} (read those topics again from the API). Not with since_revision"),q("token",d="bearer token, for clients that can set neither a header nor a subprotocol; browsers should offer the subprotocols cronmesh.v1 and cronmesh.bearer.<base64url(token)> instead, which keeps the token out of URLs")],
   "responses":{"101":resp("Switching protocols: one JSON message per event"),**common}}},
 "/api/v1/openapi.json":{"get":{"summary":"This document","operationId":"openapi","security":[],"responses":{"200":resp("OpenAPI 3.1")}}},
 "/healthz":{"get":{"summary":"The process is up","operationId":"healthz","security":[],"responses":{"200":resp("ok")}}},
 "/readyz":{"get":{"summary":"etcd and the run-log store are reachable","operationId":"readyz","security":[],"responses":{"200":resp("ready"),"503":resp("not ready")}}},
}
dur={"type":"string","description":"humantime duration, e.g. 30s, 1h30m"}
smap={"type":"object","additionalProperties":{"type":"string"}}
jobspec={"type":"object","additionalProperties":False,"required":["schedule","command"],"properties":{
 "name":{"type":"string"},"schedule":{"type":"string","description":"5/6/7-field cron (names, a/n, L, W, #, H for a value hashed from the job name), @hourly-style macro, or @every 30s"},
 "timezone":{"type":"string","default":"UTC"},"command":{"type":"string"},"shell":{"type":"string","default":"/bin/sh"},
 "env":smap,"workdir":{"type":"string"},"timeout":dur,"retries":{"type":"integer"},"retry_backoff":dur,
 "concurrency":{"enum":["allow","forbid","replace"]},"misfire":{"enum":["run_once","skip"]},"starting_deadline":dur,
 "selector":smap,"paused":{"type":"boolean"},"max_output_bytes":{"type":"integer"},"description":{"type":"string"},"owner":{"type":"string"},"labels":smap}}
warnings={"type":"array","items":{"type":"string"},"description":"things to know about the schedule, e.g. that its meaning changed with the crontab(5) day rule, with the expression that keeps the old meaning; usually empty"}
job={"allOf":[ref("JobSpec"),{"type":"object","properties":{"created_at":{"type":"integer"},"updated_at":{"type":"integer"},"revision":{"type":"integer"},"schedule_description":{"type":"string"},
 "schedule_resolved":{"type":"string","description":"the schedule with each H replaced by the values chosen for this job's name"},"schedule_warnings":warnings,"next_fire_times":{"type":"array","items":{"type":"string"}},
 "stats_24h":{"type":"object","description":"the job's records of the last 24 hours by outcome (at most 30 s old)","properties":{"runs":{"type":"integer"},"succeeded":{"type":"integer"},"failed":{"type":"integer","description":"failed, timed out, killed or lost"},"skipped":{"type":"integer"},"missed":{"type":"integer"}}},
 "last_run":{"type":["object","null"],"description":"the newest run record of the job, in brief","properties":{"run_id":{"type":"string"},"status":{"enum":["succeeded","failed","timed_out","killed","skipped","lost","missed"]},"planned_at":{"type":"integer"},"ended_at":{"type":["integer","null"]},"exit_code":{"type":["integer","null"]}}}}}]}
ms={"type":["integer","null"],"description":"Unix ms"}
run={"type":"object","properties":{"run_id":{"type":"string"},"job":{"type":"string"},"worker":{"type":"string"},"attempt":{"type":"integer"},"trigger":{"enum":["schedule","manual","retry"]},
 "planned_at":{"type":"integer"},"claimed_at":ms,"started_at":ms,"ended_at":ms,"lag_ms":{"type":["integer","null"]},"duration_ms":{"type":["integer","null"]},
 "status":{"enum":["succeeded","failed","timed_out","killed","skipped","lost","missed"]},"exit_code":{"type":["integer","null"]},"signal":{"type":["integer","null"]},"output":{"type":"string"},
 "output_truncated_bytes":{"type":"integer"},"error":{"type":["string","null"]},"max_rss_kb":{"type":["integer","null"]},"cpu_ms":{"type":["integer","null"]},"trace_id":{"type":["string","null"]}}}
started={"type":"object","properties":{k:run["properties"][k] for k in ["run_id","job","worker","attempt","trigger","planned_at","started_at","trace_id"]}}
worker={"type":"object","properties":{"id":{"type":"string"},"labels":smap,"hostname":{"type":"string"},"pid":{"type":"integer"},"started_at":{"type":"integer"},"draining":{"type":"boolean"},"at_capacity":{"type":"boolean","description":"every run slot is taken; its jobs go to workers with room"},"dispatch":{"type":"string","enum":["owner","race"]},"listen":{"type":["string","null"]},"version":{"type":"string"},"owned_jobs":{"type":"integer","description":"jobs it schedules (race workers: every job they may run)"},"running":{"type":"array","items":ref("RunStarted")},"last_heartbeat":ms}}
doc={"openapi":"3.1.0","info":{"title":"cronmesh","version":"0.1.0","description":"Distributed cron: jobs, runs, workers. Errors are {\"error\":{\"code\",\"message\",\"field\"?}}. The web page is served at /."},
 "servers":[{"url":"/"}],"security":[{"bearer":[]}],"paths":paths,
 "components":{"securitySchemes":{"bearer":{"type":"http","scheme":"bearer","description":"Roles: read (GET), admin (everything), worker (reports)"}},
  "schemas":{"Error":{"type":"object","properties":{"error":{"type":"object","properties":{"code":{"type":"string"},"message":{"type":"string"},"field":{"type":"string","description":"the job-spec field at fault, when one is"}},"required":["code","message"]}}},
   "JobSpec":jobspec,"Job":job,
   "PreviewRequest":{"type":"object","additionalProperties":False,"required":["schedule"],"properties":{
     "schedule":{"type":"string","description":"as in a job spec"},"timezone":{"type":"string","default":"UTC"},
     "from":{"type":["string","integer"],"description":"fire times strictly after this: RFC 3339 or Unix ms (default now)"},
     "count":{"type":"integer","minimum":1,"maximum":100,"default":5},
     "name":{"type":"string","description":"the job's name, which H hashes; required when the schedule uses H"}}},
   "Preview":{"type":"object","properties":{"schedule":{"type":"string"},"timezone":{"type":"string"},"description":{"type":"string"},
     "resolved":{"type":"string","description":"the schedule with each H replaced by its values for name"},
     "dst_rule":{"enum":["fixed_time","wall_clock","interval"],"description":"fixed_time: runs once at a repeated wall time and at the end of a DST gap; wall_clock: follows the clock (both passes, skips the gap); interval: @every"},
     "from":{"type":"string"},"next_fire_times":{"type":"array","items":{"type":"string"}},"warnings":warnings}},"RunRecord":run,"RunStarted":started,"Worker":worker,
   "ReportBatch":{"type":"object","additionalProperties":False,"properties":{"started":{"type":"array","items":ref("RunStarted")},"finished":{"type":"array","items":ref("RunRecord")}}}}}}
open(__import__('os').path.join(__import__('os').path.dirname(__file__), 'openapi.json'),'w').write(json.dumps(doc,indent=1)+"\n")
