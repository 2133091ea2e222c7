"""Validates recorded responses against the OpenAPI document (run by tests/e2e/openapi.rs).

Usage: validate_responses.py OPENAPI_JSON RESPONSES_JSONL

Each line of RESPONSES_JSONL is {"method", "path" (the document's template), "status",
"content_type", "body" (parsed JSON or a string)}. Every status must be documented for its
operation, a body's media type must be one the response lists, and a JSON body must validate
against the documented schema (JSON Schema 2020-12, as OpenAPI 3.1 says). Exits 1 listing every
mismatch. Before anything, it checks that it can tell: a response with an undocumented field must
fail.
"""

import json
import sys

import jsonschema_rs


def validator(doc, schema):
    root = dict(schema)
    root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    root["components"] = doc["components"]
    return jsonschema_rs.validator_for(root)


def problems(doc, r):
    op = doc["paths"].get(r["path"], {}).get(r["method"])
    if op is None:
        return [f"{r['method']} {r['path']} is not in the document"]
    resp = op["responses"].get(str(r["status"]))
    if resp is None:
        return [f"{r['method']} {r['path']}: status {r['status']} is not documented"]
    content = resp.get("content")
    body = r["body"]
    if not content:
        if body not in (None, ""):
            return [f"{r['method']} {r['path']} {r['status']}: a body is sent but none is documented: {body!r}"[:500]]
        return []
    mime = (r["content_type"] or "").split(";")[0].strip()
    if mime not in content:
        return [f"{r['method']} {r['path']} {r['status']}: content type {mime!r} is not among {list(content)}"]
    if mime != "application/json":
        return []
    errors = [e.message for e in validator(doc, content[mime]["schema"]).iter_errors(body)]
    return [f"{r['method']} {r['path']} {r['status']}: {e}"[:500] for e in errors]


def main():
    doc = json.load(open(sys.argv[1]))
    # the check can fail: a job with a field the document does not list
    job = {"name": "x", "schedule": "@hourly", "timezone": "UTC", "command": "true", "shell": "/bin/sh",
           "paused": False, "created_at": 1, "updated_at": 1, "revision": 1, "schedule_description": "",
           "schedule_resolved": "@hourly", "schedule_warnings": [], "next_fire_times": [], "last_run": None, "stats_24h": {"runs": 0, "succeeded": 0, "failed": 0, "skipped": 0, "missed": 0}}
    ok = {"method": "get", "path": "/api/v1/jobs/{name}", "status": 200, "content_type": "application/json", "body": job}
    bad = dict(ok, body=dict(job, undocumented=1))
    assert not problems(doc, ok), problems(doc, ok)
    assert problems(doc, bad), "the validator accepted an undocumented field"
    assert problems(doc, dict(ok, status=418)), "the validator accepted an undocumented status"
    seen, failed = 0, []
    for line in open(sys.argv[2]):
        if line.strip():
            seen += 1
            failed.extend(problems(doc, json.loads(line)))
    for f in failed:
        print(f)
    print(f"{seen} responses checked, {len(failed)} mismatches")
    sys.exit(1 if failed else 0)


main()
