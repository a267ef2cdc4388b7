//! The OpenAPI file as a test oracle: every response the suite sees must be documented there
//! and match its schema, so the server and openapi.yaml cannot drift apart unnoticed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

pub struct Spec {
    doc: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| Spec {
        doc: serde_norway::from_str(OPENAPI_YAML).expect("openapi.yaml parses as YAML"),
        validators: Mutex::new(HashMap::new()),
    })
}

/// Notes a documented status the suite saw, in the file SESSIOND_SEEN_STATUSES names (one
/// `METHOD TEMPLATE STATUS` line each), so scripts/api-fuzz.sh can tell, with schemathesis's
/// own run, that every documented status is reachable.
fn record_seen(method: &str, template: &str, status: u16) {
    use std::io::Write;
    static SEEN: Mutex<Option<std::collections::HashSet<String>>> = Mutex::new(None);
    let Some(file) = std::env::var_os("SESSIOND_SEEN_STATUSES") else {
        return;
    };
    let line = format!("{method} {template} {status}");
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.get_or_insert_default().insert(line.clone()) {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .expect("the seen-statuses file opens");
        writeln!(out, "{line}").expect("the seen-statuses file takes a line");
    }
}

impl Spec {
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The documented path template a concrete path matches; literal segments win.
    pub fn template_for(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, String)> = None;
        for template in self.doc["paths"].as_object()?.keys() {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literal = 0;
            let matches = parts.iter().zip(&segments).all(|(p, s)| {
                if p.starts_with('{') {
                    true
                } else {
                    literal += 1;
                    p == s
                }
            });
            if matches && best.as_ref().is_none_or(|(n, _)| literal > *n) {
                best = Some((literal, template.clone()));
            }
        }
        best.map(|(_, t)| t)
    }

    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(pointer) => self.resolve(
                self.doc
                    .pointer(pointer.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
            ),
            None => value,
        }
    }

    /// Asserts that a response is documented and conforms to its schema.
    pub fn check(&self, method: &str, path: &str, status: u16, content_type: &str, body: &str) {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let context = format!("{method} {path} -> {status} ({content_type}): {body}");
        let operation = self.template_for(path).and_then(|t| {
            self.doc["paths"][&t]
                .get(method.to_ascii_lowercase())
                .cloned()
        });
        let Some(operation) = operation else {
            // Undocumented routes and methods answer with a problem, and nothing else.
            assert!(
                matches!(status, 404 | 405),
                "undocumented operation answered: {context}"
            );
            self.validate("#/components/schemas/Problem", body, &context);
            return;
        };
        let response = operation["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("status not documented: {context}"));
        if let Some(template) = self.template_for(path) {
            record_seen(method, &template, status);
        }
        let response = self.resolve(response);
        let Some(content) = response.get("content") else {
            assert!(
                body.is_empty(),
                "documented without a body but has one: {context}"
            );
            return;
        };
        let media = content
            .get(essence)
            .unwrap_or_else(|| panic!("content type not documented: {context}"));
        if essence.ends_with("json") {
            let schema = media["schema"].clone();
            let key = format!("{method} {path} {status} {essence}");
            self.validate_with(&key, schema, body, &context);
        }
    }

    /// Asserts that a JSON request the server accepted is one the document allows, so the
    /// request schemas cannot be stricter than the server. In a batch, each operation that
    /// was answered with a session is checked.
    pub fn check_accepted_request(&self, method: &str, path: &str, body: &Value, answer: &Value) {
        let context = format!("{method} {path} accepted {body}");
        if path == "/v1/sessions/batch" {
            let results = answer["results"].as_array().cloned().unwrap_or_default();
            for (operation, result) in body["operations"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(results)
            {
                if result.get("session_id").is_some() {
                    self.validate(
                        "#/components/schemas/BatchOperation",
                        &operation.to_string(),
                        &context,
                    );
                }
            }
            return;
        }
        let operation = self
            .template_for(path)
            .and_then(|t| {
                self.doc["paths"][&t]
                    .get(method.to_ascii_lowercase())
                    .cloned()
            })
            .unwrap_or_else(|| panic!("undocumented operation accepted a body: {context}"));
        let request = self.resolve(&operation["requestBody"]);
        let schema = request["content"]["application/json"]["schema"].clone();
        assert!(
            !schema.is_null(),
            "no JSON request body documented: {context}"
        );
        self.validate_with(
            &format!("request {method} {path}"),
            schema,
            &body.to_string(),
            &context,
        );
    }

    fn validate(&self, pointer: &str, body: &str, context: &str) {
        self.validate_with(pointer, json!({"$ref": pointer}), body, context);
    }

    fn validate_with(&self, key: &str, schema: Value, body: &str, context: &str) {
        let validator = {
            let mut cache = self.validators.lock().unwrap();
            cache
                .entry(key.to_owned())
                .or_insert_with(|| {
                    let mut root = schema;
                    root["components"] = self.doc["components"].clone();
                    Arc::new(jsonschema::validator_for(&root).expect("the schema compiles"))
                })
                .clone()
        };
        let instance: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {context}"));
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "the message does not match openapi.yaml: {errors:?}\n{context}"
        );
    }
}
