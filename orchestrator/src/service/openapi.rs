//! The API's OpenAPI 3.0 description, served at `GET /v1/openapi.json`.
//! A test checks it is valid and that every operation it lists answers as
//! documented.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": schema}}
    })
}

fn cluster_param() -> Value {
    json!({
        "name": "cluster", "in": "path", "required": true,
        "description": "The cluster's name (its topology's `cluster`).",
        "schema": {"type": "string"}
    })
}

fn accepted() -> Value {
    json!({
        "description": "The job was accepted: it runs, or was recorded as skipped because another job of the cluster was running.",
        "headers": {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}
    })
}

fn object() -> Value {
    json!({"type": "object", "additionalProperties": true})
}

pub fn document() -> Value {
    let unauthorized = error_response("Missing or wrong bearer token.");
    let unknown_cluster = error_response("No such cluster in this service.");
    let bad_request = error_response("The request body or its values are not valid.");
    let upstream = error_response("The repository or a shard failed.");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "shardcut serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Backups, recovery drills and restores of sharded MySQL/MariaDB and PostgreSQL clusters as jobs, their history, and metrics. Every route but /healthz and /metrics takes the bearer token of --token-file."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {
                "operationId": "health",
                "summary": "Liveness; no token.",
                "security": [],
                "responses": {"200": json_response("The service runs.", json!({
                    "type": "object", "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": ["ok", "stopping"]}, "version": {"type": "string"}}
                }))}
            }},
            "/metrics": {"get": {
                "operationId": "metrics",
                "summary": "Prometheus text format; no token.",
                "security": [],
                "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }},
            "/v1/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": json_response("The OpenAPI document.", object()), "401": unauthorized}
            }},
            "/v1/jobs": {"get": {
                "operationId": "listJobs",
                "summary": "Jobs of the last 90 days, newest first.",
                "parameters": [
                    {"name": "cluster", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
                ],
                "responses": {
                    "200": json_response("The jobs.", json!({
                        "type": "object", "required": ["jobs"],
                        "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}}
                    })),
                    "401": unauthorized,
                    "404": unknown_cluster
                }
            }},
            "/v1/jobs/{id}": {"get": {
                "operationId": "getJob",
                "summary": "One job; `result` is the document the command's --json prints.",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {
                    "200": json_response("The job.", json!({"$ref": "#/components/schemas/Job"})),
                    "401": unauthorized,
                    "404": error_response("No such job.")
                }
            }},
            "/v1/clusters/{cluster}/backups": {
                "get": {
                    "operationId": "listBackups",
                    "summary": "The cluster's backups, as `shardcut list --json`.",
                    "parameters": [cluster_param()],
                    "responses": {"200": json_response("The backups.", object()), "401": unauthorized, "404": unknown_cluster, "502": upstream}
                },
                "post": {
                    "operationId": "startBackup",
                    "summary": "Start a backup job.",
                    "parameters": [cluster_param()],
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BackupRequest"}}}},
                    "responses": {"202": accepted(), "400": bad_request, "401": unauthorized, "404": unknown_cluster}
                }
            },
            "/v1/clusters/{cluster}/backups/{id}": {"get": {
                "operationId": "showBackup",
                "summary": "One backup's manifest (`latest` for the newest), as `shardcut show --json`.",
                "parameters": [cluster_param(), {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": json_response("The manifest.", object()), "401": unauthorized, "404": error_response("No such cluster or backup."), "502": upstream}
            }},
            "/v1/clusters/{cluster}/drills": {"post": {
                "operationId": "startDrill",
                "summary": "Start a recovery drill of one shard into the cluster's drill_target.",
                "parameters": [cluster_param()],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DrillRequest"}}}},
                "responses": {"202": accepted(), "400": bad_request, "401": unauthorized, "404": unknown_cluster}
            }},
            "/v1/clusters/{cluster}/restores": {"post": {
                "operationId": "startRestore",
                "summary": "Start a verified restore into one of the service's --target topologies.",
                "parameters": [cluster_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RestoreRequest"}}}},
                "responses": {"202": accepted(), "400": bad_request, "401": unauthorized, "404": unknown_cluster}
            }},
            "/v1/clusters/{cluster}/status": {"get": {
                "operationId": "status",
                "summary": "Capture lag and the newest mark, as `shardcut status --json`.",
                "parameters": [cluster_param()],
                "responses": {"200": json_response("The status.", object()), "401": unauthorized, "404": unknown_cluster, "502": upstream}
            }}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Accepted": {"type": "object", "required": ["job_id", "status"], "properties": {
                    "job_id": {"type": "string"},
                    "status": {"$ref": "#/components/schemas/JobStatus"}
                }},
                "JobStatus": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "skipped"]},
                "Job": {"type": "object", "required": ["id", "cluster", "kind", "status", "queued_at"], "properties": {
                    "id": {"type": "string"},
                    "cluster": {"type": "string"},
                    "kind": {"type": "string", "enum": ["backup", "incremental", "drill", "restore", "expire"]},
                    "status": {"$ref": "#/components/schemas/JobStatus"},
                    "trigger": {"type": "string", "enum": ["schedule", "api", "cli"]},
                    "queued_at": {"type": "string", "format": "date-time"},
                    "started_at": {"type": "string", "format": "date-time", "nullable": true},
                    "finished_at": {"type": "string", "format": "date-time", "nullable": true},
                    "shard": {"type": "string", "nullable": true},
                    "backup_id": {"type": "string", "nullable": true},
                    "progress": {"type": "object", "nullable": true, "additionalProperties": true},
                    "result": {"type": "object", "nullable": true, "additionalProperties": true},
                    "error": {"type": "string", "nullable": true},
                    "figures": {"type": "object", "additionalProperties": true},
                    "report": {"type": "string", "nullable": true, "description": "The drill's or restore's report page."}
                }},
                "BackupRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "incremental": {"type": "boolean", "default": false}
                }},
                "DrillRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "shard": {"type": "string", "description": "Default: the next shard in rotation."},
                    "backup": {"type": "string", "default": "latest"}
                }},
                "RestoreRequest": {"type": "object", "additionalProperties": false, "required": ["target"], "properties": {
                    "target": {"type": "string", "description": "The cluster name of a --target topology."},
                    "backup": {"type": "string", "default": "latest"},
                    "until": {"type": "string", "description": "latest, mark:NAME or a time."},
                    "shards": {"type": "array", "items": {"type": "string"}},
                    "map": {"type": "object", "additionalProperties": {"type": "string"}},
                    "databases": {"type": "array", "items": {"type": "string"}},
                    "tables": {"type": "array", "items": {"type": "string"}},
                    "with_parents": {"type": "boolean", "default": false},
                    "overwrite": {"type": "boolean", "default": false},
                    "binlog": {"type": "boolean", "default": false}
                }}
            }
        }
    })
}
