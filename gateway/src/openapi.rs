//! The OpenAPI description served at `/openapi.json`.
//!
//! Written by hand from the handlers in `api.rs` (not generated); the test
//! `openapi_documents_every_route` in `tests/gateway.rs` fails when a route is missing.

pub const DOCUMENT: &str = r##"{
  "openapi": "3.1.0",
  "info": {"title": "logstream gateway", "version": "v1",
    "description": "Ingest, live tail (SSE/WebSocket), history and export of deployment logs. Tenant comes from the bearer token."},
  "components": {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
      "proxySafeBearer": {"type": "apiKey", "in": "header", "name": "Logstream-Authorization",
        "description": "`Bearer <token>`, for requests through the Kubernetes API server's service proxy, which strips Authorization."}},
    "parameters": {
      "id": {"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}},
      "cursor": {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "Resume after this cursor (from a line's `cursor` or `next_cursor`)."},
      "since": {"name": "since", "in": "query", "schema": {"type": "string"}, "description": "RFC 3339, a duration ago (10m) or Unix seconds."},
      "until": {"name": "until", "in": "query", "schema": {"type": "string"}},
      "level": {"name": "level", "in": "query", "schema": {"type": "string"}, "description": "A level, a list (warn,error) or a floor (warn+)."},
      "step": {"name": "step", "in": "query", "schema": {"type": "string"}, "description": "Step name(s), comma-separated."},
      "stream": {"name": "stream", "in": "query", "schema": {"type": "string", "enum": ["stdout", "stderr"]}},
      "q": {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "Regular expression matched against the message."}
    },
    "schemas": {
      "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
      "Line": {"type": "object", "required": ["cursor", "seq", "ts", "step", "stream", "level", "message"], "properties": {
        "cursor": {"type": "string"}, "seq": {"type": "integer"}, "ts": {"type": "string", "format": "date-time"},
        "step": {"type": "string"}, "stream": {"type": "string", "enum": ["stdout", "stderr"]},
        "level": {"type": "string", "enum": ["trace", "debug", "info", "warn", "error", "fatal", "unknown"]},
        "message": {"type": "string"}, "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "redaction": {"type": "object", "additionalProperties": {"type": "integer"}}}},
      "Deployment": {"type": "object", "properties": {
        "id": {"type": "string"}, "status": {"type": "string", "enum": ["running", "succeeded", "failed", "cancelled"]},
        "exit_code": {"type": ["integer", "null"]}, "lines": {"type": "integer"}, "first_seq": {"type": "integer"}, "last_seq": {"type": "integer"},
        "bytes": {"type": "integer"}, "first_ts": {"type": ["string", "null"]}, "last_ts": {"type": ["string", "null"]},
        "created_at": {"type": "string"}, "completed_at": {"type": ["string", "null"]}, "viewers": {"type": "integer"},
        "steps": {"type": "array", "items": {"type": "string"}, "description": "Step names in order of first appearance (at most 256)"}}}
    },
    "responses": {
      "Error": {"description": "Bad request, auth, quota or availability error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    }
  },
  "security": [{"bearer": []}, {"proxySafeBearer": []}],
  "paths": {
    "/v1/deployments": {"get": {"summary": "The tenant's deployments", "responses": {"200": {"description": "List", "content": {"application/json": {"schema": {"type": "object", "properties": {"deployments": {"type": "array", "items": {"$ref": "#/components/schemas/Deployment"}}}}}}}, "default": {"$ref": "#/components/responses/Error"}}}},
    "/v1/deployments/{id}": {"get": {"summary": "One deployment's status and counts", "parameters": [{"$ref": "#/components/parameters/id"}], "responses": {"200": {"description": "Deployment", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Deployment"}}}}, "default": {"$ref": "#/components/responses/Error"}}}},
    "/v1/deployments/{id}/logs": {
      "post": {"summary": "Ingest lines (durable before the reply)", "parameters": [{"$ref": "#/components/parameters/id"},
          {"name": "step", "in": "query", "schema": {"type": "string"}}, {"name": "stream", "in": "query", "schema": {"type": "string"}},
          {"name": "Logstream-Source", "in": "header", "schema": {"type": "string"}, "description": "With Logstream-Batch: retried batches are stored once."},
          {"name": "Logstream-Batch", "in": "header", "schema": {"type": "integer"}}],
        "requestBody": {"content": {"application/x-ndjson": {"schema": {"type": "string"}}, "text/plain": {"schema": {"type": "string"}}}},
        "responses": {"200": {"description": "Accepted", "content": {"application/json": {"schema": {"type": "object", "properties": {"accepted": {"type": "integer"}, "cursor": {"type": "string"}, "first_seq": {"type": "integer"}, "last_seq": {"type": "integer"}, "duplicate": {"type": "boolean"}}}}}}, "default": {"$ref": "#/components/responses/Error"}}},
      "get": {"summary": "History, paginated", "parameters": [{"$ref": "#/components/parameters/id"}, {"$ref": "#/components/parameters/cursor"}, {"$ref": "#/components/parameters/since"}, {"$ref": "#/components/parameters/until"}, {"$ref": "#/components/parameters/level"}, {"$ref": "#/components/parameters/step"}, {"$ref": "#/components/parameters/stream"}, {"$ref": "#/components/parameters/q"},
          {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 5000}}, {"name": "direction", "in": "query", "schema": {"type": "string", "enum": ["forward", "backward"]}}],
        "responses": {"200": {"description": "A page", "content": {"application/json": {"schema": {"type": "object", "properties": {"lines": {"type": "array", "items": {"$ref": "#/components/schemas/Line"}}, "next_cursor": {"type": "string"}, "complete": {"type": "boolean"}}}}}}, "default": {"$ref": "#/components/responses/Error"}}}},
    "/v1/deployments/{id}/complete": {"post": {"summary": "Complete a deployment: seals its log, ends live streams", "parameters": [{"$ref": "#/components/parameters/id"}],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["succeeded", "failed", "cancelled"]}, "exit_code": {"type": "integer"}}}}}},
        "responses": {"200": {"description": "Completed"}, "default": {"$ref": "#/components/responses/Error"}}}},
    "/v1/deployments/{id}/secrets": {"post": {"summary": "Register values to mask in this deployment's later lines (write-only, held in memory)", "parameters": [{"$ref": "#/components/parameters/id"}],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["values"], "properties": {"values": {"type": "array", "items": {"type": "string", "minLength": 4, "maxLength": 4096}}}}}}},
        "responses": {"200": {"description": "Registered", "content": {"application/json": {"schema": {"type": "object", "properties": {"registered": {"type": "integer"}}}}}}, "default": {"$ref": "#/components/responses/Error"}}}},
    "/v1/deployments/{id}/stream": {"get": {"summary": "Live tail: SSE (Accept: text/event-stream) or WebSocket (Upgrade)", "parameters": [{"$ref": "#/components/parameters/id"}, {"$ref": "#/components/parameters/cursor"}, {"$ref": "#/components/parameters/since"}, {"$ref": "#/components/parameters/until"}, {"$ref": "#/components/parameters/level"}, {"$ref": "#/components/parameters/step"}, {"$ref": "#/components/parameters/stream"}, {"$ref": "#/components/parameters/q"},
          {"name": "tail", "in": "query", "schema": {"type": "integer"}}, {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}, {"name": "access_token", "in": "query", "schema": {"type": "string"}}],
        "responses": {"200": {"description": "event: line (id = cursor), event: end, : hb", "content": {"text/event-stream": {}}}, "101": {"description": "WebSocket"}, "default": {"$ref": "#/components/responses/Error"}}}},
    "/v1/deployments/{id}/export": {"get": {"summary": "The whole log, streamed (from after `cursor` when resuming; no CSV header then)", "parameters": [{"$ref": "#/components/parameters/id"}, {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["text", "ndjson", "csv"]}}, {"$ref": "#/components/parameters/cursor"}, {"name": "access_token", "in": "query", "schema": {"type": "string"}}],
        "responses": {"200": {"description": "Attachment", "content": {"text/plain": {}, "application/x-ndjson": {}, "text/csv": {}}}, "default": {"$ref": "#/components/responses/Error"}}}},
    "/v1/audit": {"get": {"summary": "The caller's tenant's audit log (admin scope)", "parameters": [{"name": "action", "in": "query", "schema": {"type": "string"}}, {"name": "deployment", "in": "query", "schema": {"type": "string"}}, {"$ref": "#/components/parameters/since"}, {"$ref": "#/components/parameters/until"}, {"$ref": "#/components/parameters/cursor"}, {"name": "limit", "in": "query", "schema": {"type": "integer"}}, {"name": "direction", "in": "query", "schema": {"type": "string", "enum": ["forward", "backward"]}}],
        "responses": {"200": {"description": "Events", "content": {"application/json": {"schema": {"type": "object", "properties": {"events": {"type": "array", "items": {"type": "object"}}, "next_cursor": {"type": "string"}, "complete": {"type": "boolean"}}}}}}, "default": {"$ref": "#/components/responses/Error"}}}},
    "/healthz": {"get": {"security": [], "summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
    "/readyz": {"get": {"security": [], "summary": "Readiness", "responses": {"200": {"description": "ready"}, "503": {"$ref": "#/components/responses/Error"}}}},
    "/metrics": {"get": {"security": [], "summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition"}}}},
    "/openapi.json": {"get": {"security": [], "summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
  }
}"##;
