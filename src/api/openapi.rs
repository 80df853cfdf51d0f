//! The OpenAPI 3.0 document at `/api/v1/openapi.json`, generated from [`super::routes`], so
//! it lists exactly what the router serves.

use axum::Json;
use serde_json::{Map, Value, json};

use super::{Role, routes};

/// axum's `/devices/:id` as OpenAPI's `/devices/{id}`.
pub fn openapi_path(p: &str) -> String {
    p.split('/')
        .map(|seg| match seg.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None => seg.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in routes() {
        let path = openapi_path(r.path);
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix(':'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(r.params.iter().map(|(name, required, desc)| {
            json!({"name": name, "in": "query", "required": required, "description": desc, "schema": {"type": "string"}})
        }));
        let mut responses = json!({
            "200": {"description": "OK"},
        });
        if r.role.is_some() {
            responses["401"] = json!({"description": "No valid bearer token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
            responses["429"] = json!({"description": "Too many failed authentications, or every query slot taken"});
        }
        if r.role == Some(Role::Operator) {
            responses["403"] = json!({"description": "The token is not an operator token"});
        }
        if !params.is_empty() || r.method == "POST" {
            responses["400"] = json!({"description": "A bad parameter or body field, named in `parameter`", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        }
        if r.path.contains(":id") {
            responses["404"] = json!({"description": "No such device or alert"});
        }
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{} {}", r.method, r.path),
            "parameters": params,
            "responses": responses,
        });
        if r.role.is_none() {
            op["security"] = json!([]);
        } else {
            op["x-wallscope-role"] = json!(r.role.map(|x| x.as_str()));
        }
        if r.method == "POST" {
            op["requestBody"] = json!({"required": r.path.ends_with("/sql") || r.path.ends_with("/silences"), "content": {"application/json": {"schema": {"type": "object"}}}});
        }
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[r.method.as_str().to_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "wallscope API",
            "version": crate::version(),
            "description": "Remote diagnostics for EV wall chargers: fleet, device health, vitals, findings with ordered steps, alerts, read-only SQL. Every route but /healthz needs `Authorization: Bearer <token>` (`wallscope token create`).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}, "parameter": {"type": "string"}}, "required": ["error"]}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}

pub(crate) async fn handler() -> Json<Value> {
    Json(document())
}
