//! The hand-written OpenAPI document (`openapi.json`) and a check of a
//! JSON answer against it, so that tests hold the document to what the
//! gateway really answers.

use serde_json::{Map, Value};

pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// The document, parsed.
pub fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).unwrap_or(Value::Null)
}

/// Checks `value`, the JSON answer of `method path` (a template, such as
/// `/api/collections/{name}`) with HTTP `status`, against the schema the
/// document gives for it (its `default` or error response when it names
/// no schema for that status). Returns every mismatch, each with where.
pub fn check_answer(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    value: &Value,
) -> Result<(), Vec<String>> {
    let op = &doc["paths"][path][method.to_ascii_lowercase()];
    if op.is_null() {
        return Err(vec![format!("{method} {path} is not in openapi.json")]);
    }
    let mut response = &op["responses"][status.to_string()];
    if response.is_null() {
        response = &op["responses"]["default"];
    }
    if response.is_null() && status >= 400 {
        // Every error has the one error shape, listed or not.
        response = &doc["components"]["responses"]["Error"];
    }
    let response = resolve(doc, response);
    let schema = &response["content"]["application/json"]["schema"];
    if schema.is_null() {
        return Err(vec![format!(
            "openapi.json has no JSON schema for {method} {path} answering {status}"
        )]);
    }
    let mut errors = Vec::new();
    check(doc, schema, value, "$", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str().and_then(|r| r.strip_prefix("#/")) {
        Some(pointer) => resolve(
            doc,
            doc.pointer(&format!("/{pointer}")).unwrap_or(&Value::Null),
        ),
        None => v,
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// The subset of JSON Schema the document uses: `$ref`, `allOf` (of
/// objects), `oneOf`, `type`,
/// `enum`, `properties` with `required` (and no properties besides those
/// listed), `items`.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(parts) = schema["allOf"].as_array() {
        // One object with the properties of every part (an image and the
        // fields a listing adds to it).
        let mut properties = Map::new();
        let mut required = Vec::new();
        for part in parts {
            let part = resolve(doc, part);
            if let Some(p) = part["properties"].as_object() {
                properties.extend(p.clone());
            }
            if let Some(r) = part["required"].as_array() {
                required.extend(r.iter().cloned());
            }
        }
        let merged = serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": required,
        });
        check(doc, &merged, v, at, errors);
        return;
    }
    if let Some(branches) = schema["oneOf"].as_array() {
        let fits = branches.iter().any(|b| {
            let mut e = Vec::new();
            check(doc, b, v, at, &mut e);
            e.is_empty()
        });
        if !fits {
            errors.push(format!("{at}: {v} matches none of oneOf"));
        }
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, v)) {
        errors.push(format!("{at}: {v} is not of type {types:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            errors.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), v.as_object()) {
        check_object(doc, schema, props, obj, at, errors);
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

fn check_object(
    doc: &Value,
    schema: &Value,
    props: &Map<String, Value>,
    obj: &Map<String, Value>,
    at: &str,
    errors: &mut Vec<String>,
) {
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if !obj.contains_key(name) {
            errors.push(format!("{at}: the required field {name:?} is missing"));
        }
    }
    for (name, value) in obj {
        match props.get(name) {
            Some(s) => check(doc, s, value, &format!("{at}.{name}"), errors),
            None => errors.push(format!("{at}: the field {name:?} is not in the schema")),
        }
    }
}
