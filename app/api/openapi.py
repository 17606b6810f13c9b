"""The OpenAPI 3.1 description of /api/v1, written by hand next to the code it describes.

A test compares its paths and methods with Flask's URL map, so an endpoint cannot be added
without being documented here.
"""

from __future__ import annotations

from typing import Any

from app.pipeline import MAX_STOP_TIMEOUT


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    words = {400: "Invalid input (the reason names the field)", 401: "Not signed in, or a wrong token",
             403: "Your repository role does not allow this", 404: "No such app, phase or deployment",
             409: "Not possible in the current state (nothing to promote or roll back to)",
             503: "The job queue or the Docker engine is unavailable; nothing was done"}
    return {str(code): _json(_ref("Error"), words[code]) for code in codes}


APP = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
       "description": "The app's slug, as in the portal's URLs"}
PHASE = {"name": "phase", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "A phase of the pipeline"}
DEPLOYMENT = {"name": "deployment_id", "in": "path", "required": True, "schema": {"type": "integer"}}
PR_NUMBER = {"name": "pr_number", "in": "path", "required": True, "schema": {"type": "integer"},
             "description": "The pull request's number"}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _op(summary: str, responses: dict, *, parameters: list | None = None, body: dict | None = None,
        errors: tuple[int, ...] = (401, 403, 404), description: str | None = None) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **_errors(*errors)}}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return op


def document(server_url: str, phases: list[str]) -> dict:
    phase_enum = {"type": "string", "enum": phases}
    nullable_str = {"type": ["string", "null"]}
    schemas = {
        "Error": {"type": "object", "required": ["error", "reason"],
                  "properties": {"error": {"type": "string"}, "reason": {"type": "string"}}},
        "Deployment": {"type": "object", "properties": {
            "id": {"type": "integer"}, "app": {"type": "string"}, "phase": phase_enum,
            "version": {"type": "string"}, "sha": nullable_str, "ref": nullable_str,
            "status": {"type": "string",
                       "enum": ["queued", "building", "deploying", "succeeded", "failed", "superseded", "refused",
                                "cancelled"]},
            "reason": {"type": "string"}, "trigger": {"type": "string"}, "actor": {"type": "string"},
            "url": nullable_str, "image": nullable_str, "source_deployment": {"type": ["integer", "null"]},
            "pr_number": {"type": ["integer", "null"]}, "queued_at": nullable_str, "started_at": nullable_str,
            "finished_at": nullable_str, "finished": {"type": "boolean"},
            "commits": {"type": "array", "description": "What it shipped: the commits since what the phase "
                        "served before, newest first", "items": _ref("Commit")},
            "override": {"type": ["string", "null"],
                         "description": "An admin's reason for deploying into a frozen phase"},
            "cancel_requested_by": nullable_str}},
        "Commit": {"type": "object", "properties": {
            "sha": {"type": "string"}, "title": {"type": "string"}, "author": {"type": "string"},
            "url": nullable_str}},
        "Started": {"type": "object", "required": ["deployment"], "properties": {
            "deployment": {"type": "integer", "description": "The deployment's id"},
            "message": {"type": "string"}, "phase": phase_enum, "version": {"type": "string"},
            "status": {"type": "string"}, "details": _ref("Deployment")}},
        "FreezeState": {"type": "object", "properties": {
            "phase": phase_enum, "frozen": {"type": "boolean"}, "message": {"type": "string"},
            "freeze": {"type": ["object", "null"], "properties": {
                "author": {"type": "string", "description": "Who froze it, or pipeline.yml"},
                "reason": {"type": "string"}, "until": nullable_str, "description": {"type": "string"}}}}},
        "LogLine": {"type": "object", "properties": {
            "id": {"type": "integer"}, "stream": {"type": "string"}, "text": {"type": "string"},
            "at": {"type": "string", "format": "date-time"}}},
        "Sourced": {"type": "object", "properties": {
            "value": {}, "source": {"type": "string",
                                    "description": "The phase whose profile sets the value, or 'pipeline'"}}},
        "Profile": {"type": "object", "properties": {
            "app": {"type": "string"}, "phase": phase_enum,
            "inherits_from": {"type": "array", "items": {"type": "string"}},
            "can_edit": {"type": "boolean"},
            "effective": {"type": "object", "properties": {
                "env": {"type": "object", "additionalProperties": _ref("Sourced")},
                "secrets": {"type": "object", "additionalProperties": _ref("Sourced"),
                            "description": "Values are always masked"},
                "sizing": {"type": "object", "additionalProperties": _ref("Sourced")}}},
            "own": {"type": "object", "description": "What this phase sets itself (secrets masked)"},
            "updated_by": nullable_str, "updated_at": nullable_str}},
        "ProfileChange": {"type": "object", "additionalProperties": False, "properties": {
            "env": {"type": "object", "additionalProperties": {"type": ["string", "null"]},
                    "description": "PUT: the phase's variables, replacing its own; PATCH: set (string) or "
                                   "remove (null) the named ones"},
            "secrets": {"type": "object", "additionalProperties": {"type": ["string", "null"]},
                        "description": "Write-only. Both methods set (string) or remove (null) only the "
                                       "named secrets; others are kept"},
            "memory": {"type": ["string", "null"], "pattern": "^[0-9]+[bkmg]$"},
            "cpus": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 64},
            "replicas": {"type": ["integer", "null"], "minimum": 1, "maximum": 20},
            "stop_timeout": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_STOP_TIMEOUT,
                             "description": "Seconds from SIGTERM to SIGKILL when a container stops"}},
            "description": "Sizing null means inherit; PUT resets sizing fields it does not name"},
        "Service": {"type": "object", "properties": {
            "name": {"type": "string"},
            "status": {"type": "string", "description": "The last provisioning's outcome: healthy, failed"},
            "health": {"type": "string", "enum": ["healthy", "starting", "unhealthy", "running", "restarting",
                                                  "exited", "created", "paused", "dead", "missing", "unknown"]},
            "image": {"type": "string", "description": "The image reference, or `build: <path>`"},
            "image_id": nullable_str, "port": {"type": ["integer", "null"]},
            "definition": {"type": "string", "description": "Hash of the running definition (short)"},
            "pending_definition": {"type": ["string", "null"],
                                   "description": "A changed definition, applied on the next deploy"},
            "volume": nullable_str, "data_path": nullable_str,
            "volume_size": {"type": ["integer", "null"], "description": "Bytes; null when unknown"},
            "volume_size_label": {"type": "string"}, "network": nullable_str,
            "node": {"type": ["string", "null"], "description": "The Swarm node its data lives on (RUNTIME=swarm)"},
            "exports": {"type": "array", "items": {"type": "string"},
                        "description": "Names of the variables the app receives (values never shown)"},
            "password_secret": {"type": "string", "description": "The phase secret holding the password"},
            "updated_at": nullable_str}},
        "Preview": {"type": "object", "properties": {
            "pr_number": {"type": "integer"}, "phase": {"type": "string", "description": "pr-<number>"},
            "state": {"type": "string", "enum": ["ready", "building", "failed", "cancelled", "draft",
                                                 "awaiting_approval", "removed", "closed"]},
            "fork": {"type": "boolean"}, "head_sha": {"type": "string"}, "url": nullable_str,
            "version": nullable_str, "deployment_id": {"type": ["integer", "null"]},
            "created_at": {"type": "string"}, "active_at": {"type": "string", "description": "The last push"},
            "age_seconds": {"type": "integer"}, "reason": {"type": "string"}}},
        "ActionResult": {"type": "object", "properties": {
            "message": {"type": "string"},
            "deployment": {"oneOf": [_ref("Deployment"), {"type": "null"}]},
            "promotion": {"type": ["object", "null"], "description": "Set when the phase needs approvals: "
                          "a promotion pull request must be opened and approved instead"}}},
    }
    profile_params = [APP, PHASE]
    paths = {
        "/api/v1/me": {"get": _op("Who the request is authenticated as (session clients also get their CSRF token)",
                                  {"200": _json({"type": "object"}, "The user")}, errors=(401,))},
        "/api/v1/apps": {"get": _op("Apps you can see, with each phase's version and health",
                                    {"200": _json({"type": "object"}, "Apps")}, errors=(401,))},
        "/api/v1/apps/{name}": {
            "get": _op("An app's pipeline: per phase the current deployment, URL, health, what you may do",
                       {"200": _json({"type": "object"}, "The app")}, parameters=[APP]),
            "delete": _op("Delete the app: its containers, images, routes, backing services and their data "
                          "(irreversible; confirmed). Its history stays readable",
                          {"200": _json({"type": "object", "properties": {
                              "removed": {"type": "object"}, "message": {"type": "string"}}}, "What was removed")},
                          parameters=[APP],
                          body={"type": "object", "additionalProperties": False, "required": ["confirm"],
                                "properties": {"confirm": {"type": "string", "description": "The app's name"}}},
                          errors=(400, 401, 403, 404, 409, 503),
                          description="Needs the admin role. Refused (409) while one of its phases deploys; "
                                      "queued deployments are superseded. Deliveries for it then deploy nothing."),
        },
        "/api/v1/apps/{name}/previews": {"get": _op(
            "The app's pull request previews (phase pr-<number>), newest PR first",
            {"200": _json({"type": "object", "properties": {"previews": {"type": "array", "items": _ref("Preview")}}},
                          "Previews")},
            parameters=[APP, _query("all", {"type": "string", "enum": ["1", "true"]},
                                    "Also the removed and closed ones")])},
        "/api/v1/apps/{name}/previews/{pr_number}": {"delete": _op(
            "Tear a running preview down now: containers, route, backing services, volumes; a push brings it back",
            {"202": _json({"type": "object", "properties": {"message": {"type": "string"}}}, "Removal queued")},
            parameters=[APP, PR_NUMBER], errors=(400, 401, 403, 404, 409, 503),
            description="Needs the write role. 409 when the pull request has no running preview.")},
        "/api/v1/apps/{name}/deployments": {"get": _op(
            "Deployments of an app, newest first", {"200": _json({"type": "object", "properties": {
                "deployments": {"type": "array", "items": _ref("Deployment")},
                "next_before": {"type": ["integer", "null"]}}}, "A page of deployments")},
            parameters=[APP, _query("phase", phase_enum, "Only this phase"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "Page size (50)"),
                        _query("before", {"type": "integer"}, "Only deployments with a smaller id")],
            errors=(400, 401, 403, 404))},
        "/api/v1/apps/{name}/deployments/{deployment_id}": {"get": _op(
            "A deployment with its log lines and, when it failed its health check, the evidence",
            {"200": _json({"allOf": [_ref("Deployment"), {"type": "object", "properties": {
                "evidence": {"type": "object"}, "log": {"type": "array", "items": _ref("LogLine")}}}]},
                "The deployment")},
            parameters=[APP, DEPLOYMENT, _query("after", {"type": "integer"}, "Only log lines after this id")],
            errors=(400, 401, 403, 404))},
        "/api/v1/apps/{name}/events": {"get": _op(
            "The app's pipeline, live, as server-sent events",
            {"200": {"description": "text/event-stream: `state` at once and on every change (a deployment queued, "
                                    "moving on or ending, a freeze, a profile edit), its data the app's document "
                                    "(as GET /api/v1/apps/{name}) plus `state`, an opaque token of that state"}},
            parameters=[APP])},
        "/api/v1/apps/{name}/deployments/{deployment_id}/events": {"get": _op(
            "The deployment's live log as server-sent events, until it finishes",
            {"200": {"description": "text/event-stream: `line` (id = log line id), `status` on each change, "
                                    "`done` at the end; a stream that ends without `done` is resumed with "
                                    "Last-Event-ID or ?after"}},
            parameters=[APP, DEPLOYMENT, _query("after", {"type": "integer"}, "Only log lines after this id")])},
        "/api/v1/deployments/{deployment_id}": {"get": _op(
            "A deployment by id alone (as the app-scoped path answers)",
            {"200": _json(_ref("Deployment"), "The deployment, its log and evidence")},
            parameters=[DEPLOYMENT, _query("after", {"type": "integer"}, "Only log lines after this id")],
            errors=(400, 401, 403, 404))},
        "/api/v1/deployments/{deployment_id}/events": {"get": _op(
            "A deployment's live log by id alone (as the app-scoped path streams it)",
            {"200": {"description": "text/event-stream"}},
            parameters=[DEPLOYMENT, _query("after", {"type": "integer"}, "Only log lines after this id")])},
        "/api/v1/apps/{name}/compare": {"get": _op(
            "Versions in one phase not yet in the next (default: the last two phases)",
            {"200": _json({"type": "object"}, "The comparison")},
            parameters=[APP, _query("from", phase_enum, "Source phase"), _query("to", phase_enum, "Target phase")])},
        "/api/v1/apps/{name}/audit": {"get": _op(
            "Who changed what (profiles, pushes, rollbacks), newest first, page by page",
            {"200": _json({"type": "object", "properties": {
                "entries": {"type": "array", "items": {"type": "object"}},
                "next_before": {"type": ["integer", "null"]}}}, "A page of audit entries")},
            parameters=[APP, _query("phase", phase_enum, "Only this phase"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "Page size (100)"),
                        _query("before", {"type": "integer"}, "Only entries with a smaller id (the previous "
                                                               "page's next_before)")],
            errors=(400, 401, 403, 404))},
        "/api/v1/notifications": {"get": _op(
            "Notification targets (pipeline.yml) with their latest deliveries and every attempt",
            {"200": _json({"type": "object"}, "Targets, each with recent deliveries")},
            parameters=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 200},
                               "Deliveries per target (10)")],
            errors=(400, 401))},
        "/api/v1/notifications/{target}/test": {"post": _op(
            "Send a test event to one target (needs the admin role on an app, or the admin token)",
            {"202": _json({"type": "object"}, "The test event is queued")},
            parameters=[{"name": "target", "in": "path", "required": True, "schema": {"type": "string"},
                         "description": "The target's name in pipeline.yml"}],
            errors=(401, 403, 404))},
        "/api/v1/apps/{name}/phases/{phase}/logs": {"get": _op(
            "The phase's own output: the last lines of its running app container and each backing service, "
            "every phase secret masked",
            {"200": _json({"type": "object", "properties": {
                "lines": {"type": "integer"},
                "sources": {"type": "array", "items": {"type": "object", "properties": {
                    "key": {"type": "string", "description": "`app`, or the service's name"},
                    "label": {"type": "string"}, "running": {"type": "boolean"},
                    "lines": {"type": "array", "items": {"type": "object", "properties": {
                        "source": {"type": "string"}, "at": {"type": "string", "format": "date-time"},
                        "text": {"type": "string"}}}}}}}}}, "Each container's last lines")},
            parameters=[APP, PHASE, _query("lines", {"type": "integer", "minimum": 1, "maximum": 2000},
                                           "How many lines per container (200)")],
            errors=(400, 401, 403, 404, 503))},
        "/api/v1/apps/{name}/phases/{phase}/logs/events": {"get": _op(
            "A live tail of the phase's containers as server-sent events",
            {"200": {"description": "text/event-stream: `line` (source, at, text; id = its unix time) for each new "
                                    "line; a stream that ends is resumed with Last-Event-ID or ?since"}},
            parameters=[APP, PHASE, _query("since", {"type": "number"}, "Only lines after this unix time (now)")],
            errors=(401, 403, 404, 503))},
        "/api/v1/apps/{name}/phases/{phase}/profile": {
            "get": _op("A phase's profile: effective values with their source; secrets masked",
                       {"200": _json(_ref("Profile"), "The profile")}, parameters=profile_params),
            "put": _op("Replace the phase's own variables and sizing; set or remove named secrets",
                       {"200": _json({"type": "object", "properties": {
                           "changes": {"type": "array", "items": {"type": "string"}},
                           "profile": _ref("Profile")}}, "What changed, and the profile now")},
                       parameters=profile_params, body=_ref("ProfileChange"), errors=(400, 401, 403, 404)),
            "patch": _op("Change named variables, secrets or sizing of the phase's own profile",
                         {"200": _json({"type": "object"}, "What changed, and the profile now")},
                         parameters=profile_params, body=_ref("ProfileChange"), errors=(400, 401, 403, 404)),
        },
        "/api/v1/apps/{name}/phases/{phase}/deploy": {"post": _op(
            "Build a commit (or reuse its image) and deploy it to this phase",
            {"202": _json(_ref("ActionResult"), "A deployment was queued")},
            parameters=[APP, PHASE],
            body={"type": "object", "additionalProperties": False, "required": ["sha"], "properties": {
                "sha": {"type": "string", "pattern": "^[0-9a-f]{40}$", "description": "The full commit sha"}}},
            errors=(400, 401, 403, 404, 409, 503))},
        "/api/v1/apps/{name}/phases/{phase}/promote": {"post": _op(
            "Push a version to this phase (default: what the previous phase serves), optionally renamed",
            {"202": _json(_ref("ActionResult"), "A deployment was queued"),
             "200": _json(_ref("ActionResult"), "The phase needs approvals: a promotion pull request is needed")},
            parameters=[APP, PHASE],
            body={"type": "object", "additionalProperties": False, "properties": {
                "version": {"type": "string", "description": "A version deployed successfully before"},
                "rename_to": {"type": "string", "description": "The version's name on this phase"},
                "force": {"type": "string", "description": "Admins only: the reason to deploy into a frozen "
                          "phase anyway (recorded in the audit log and on the deployment)"}}},
            errors=(400, 401, 403, 404, 409, 503),
            description="A frozen phase refuses (409, naming the freeze) unless an admin sends `force`.")},
        "/api/v1/apps/{name}/phases/{phase}/redeploy": {"post": _op(
            "Deploy again what the phase serves, with its current profile (applies an edited profile)",
            {"202": _json(_ref("Started"), "A deployment was queued")}, parameters=[APP, PHASE],
            errors=(400, 401, 403, 404, 409, 503))},
        "/api/v1/apps/{name}/deployments/{deployment_id}/retry": {"post": _op(
            "Retry a failed or cancelled deployment (same commit, version and image source)",
            {"202": _json(_ref("Started"), "The new deployment was queued")}, parameters=[APP, DEPLOYMENT],
            errors=(400, 401, 403, 404, 409, 503))},
        "/api/v1/apps/{name}/deployments/{deployment_id}/cancel": {"post": _op(
            "Cancel a queued deployment, or stop a building one before it switches anything",
            {"200": _json(_ref("Started"), "Cancelled (queued), or stopping at its next step (building)")},
            parameters=[APP, DEPLOYMENT], errors=(400, 401, 403, 404, 409))},
        "/api/v1/apps/{name}/phases/{phase}/freeze": {
            "post": _op("Freeze the phase: every deployment into it is refused until it is unfrozen",
                        {"200": _json(_ref("FreezeState"), "Frozen")}, parameters=[APP, PHASE],
                        body={"type": "object", "additionalProperties": False, "properties": {
                            "reason": {"type": "string", "maxLength": 300}}},
                        errors=(400, 401, 403, 404, 409)),
            "delete": _op("Lift the phase's ad-hoc freeze (configured windows end by themselves)",
                          {"200": _json(_ref("FreezeState"), "Unfrozen (`frozen` stays true inside a "
                                        "configured window)")}, parameters=[APP, PHASE],
                          errors=(400, 401, 403, 404, 409)),
        },
        "/api/v1/apps/{name}/phases/{phase}/rollback": {
            "get": _op("Preview a rollback: what would change (version, image, profile)",
                       {"200": _json({"type": "object"}, "The preview")},
                       parameters=[APP, PHASE, _query("to_version", {"type": "string"}, "Roll back to this version")],
                       errors=(401, 403, 404, 409)),
            "post": _op("Roll back: redeploy an earlier deployment's image and profile",
                        {"202": _json(_ref("ActionResult"), "A deployment was queued")},
                        parameters=[APP, PHASE],
                        body={"type": "object", "additionalProperties": False, "properties": {
                            "to_version": {"type": "string"}}},
                        errors=(400, 401, 403, 404, 409, 503)),
        },
        "/api/v1/apps/{name}/phases/{phase}/services": {
            "get": _op("A phase's backing services: health, image, definition (pending change), data volume "
                       "and its size. Never credentials",
                       {"200": _json({"type": "object", "properties": {
                           "app": {"type": "string"}, "phase": phase_enum, "can_remove": {"type": "boolean"},
                           "services": {"type": "array", "items": _ref("Service")}}}, "The services")},
                       parameters=[APP, PHASE]),
            "delete": _op("Remove the phase's backing services and their data (irreversible; confirmed)",
                          {"200": _json({"type": "object", "properties": {
                              "removed": {"type": "array", "items": {"type": "string"}},
                              "message": {"type": "string"}}}, "What was removed")},
                          parameters=[APP, PHASE],
                          body={"type": "object", "additionalProperties": False, "required": ["confirm"],
                                "properties": {"confirm": {"type": "string",
                                                           "description": "Must be “<app>/<phase>”"}}},
                          errors=(400, 401, 403, 404, 409, 503),
                          description="Needs the phase's role, and at least maintain. Refused (409) while a "
                                      "deployment of the phase runs. The app keeps running; the next "
                                      "deployment to the phase creates new, empty services."),
        },
        "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                         "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Release Pipeline API", "version": "1",
                 "description": "Apps, phases, deployments, profiles and actions. Authenticate with "
                                "`Authorization: Bearer <token>` (the admin token, or a personal API token made "
                                "in the portal, acting with its owner's roles) or a portal session (then send the "
                                "CSRF token in `X-CSRFToken` on changes). Errors are JSON {error, reason}."},
        "servers": [{"url": server_url}],
        "security": [{"adminToken": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "release_pipeline_session"},
            },
            "schemas": schemas,
        },
        "paths": paths,
    }
