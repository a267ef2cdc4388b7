//! The JSON body extractor: application/json or text/plain (what sendBeacon and CORS-simple
//! requests send), bounded by the configured limit, with errors that name the field.

use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::AppState;
use super::problem::ApiError;

/// A request body decoded from JSON.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (limit, timeout) = req
            .app_data::<web::Data<AppState>>()
            .map_or((1024 * 1024, Duration::from_secs(10)), |s| {
                (s.settings.body_limit, s.settings.body_timeout)
            });
        let media_type = check_media_type(req);
        let declared_length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            media_type?;
            if declared_length.is_some_and(|n| n > limit) {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            // The body grows as it arrives: a declared length is a claim, and reserving it up
            // front let slow senders pin memory they never sent. The whole body has one
            // deadline, so a trickle cannot hold the connection either.
            let read = async {
                let mut body = web::BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk = chunk.map_err(|e| {
                        ApiError::MalformedJson(format!("the body could not be read: {e}"))
                    })?;
                    if body.len() + chunk.len() > limit {
                        return Err(ApiError::PayloadTooLarge { limit });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            };
            let body = tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| ApiError::BodyTimeout(timeout))??;
            decode(&body).map(JsonBody)
        })
    }
}

/// JSON, text/plain carrying JSON, or no declared type.
fn check_media_type(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let raw = value.to_str().unwrap_or("");
    let essence = raw.split(';').next().unwrap_or("").trim();
    if ["application/json", "text/plain"]
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t))
    {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(truncate(raw, 100)))
    }
}

/// Decodes a JSON object, naming the field at fault. An empty body is the empty object.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        // serde would read a struct from an array too; bodies are objects only.
        Some(b'[' | b'"' | b'-' | b'0'..=b'9') => return Err(not_an_object("body")),
        Some(_) => body,
    };
    // Tracking the path costs on every call; only a failed decode needs it, for its message.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| field_error(e, "body"))?;
    de.end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// Decodes one object of a larger body, kept as its JSON text (`operations[3]` of a batch);
/// `place` names it there, and errors name its fields under it.
pub fn decode_operation<T: DeserializeOwned>(raw: &RawValue, place: &str) -> Result<T, ApiError> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(not_an_object(place));
    }
    // As in decode(): the path is tracked only to name the field of a failed decode.
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| field_error(e, place))
}

fn not_an_object(place: &str) -> ApiError {
    ApiError::invalid(place, "must be a JSON object")
}

/// Names the field at fault under `place`; a syntax error is malformed JSON.
fn field_error(e: serde_path_to_error::Error<serde_json::Error>, place: &str) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let field = match (path.as_str(), place) {
        (".", _) => place.to_owned(),
        (_, "body") => path,
        _ => format!("{place}.{path}"),
    };
    match inner.classify() {
        serde_json::error::Category::Data => ApiError::invalid(field, strip_position(&inner)),
        _ => ApiError::MalformedJson(inner.to_string()),
    }
}

/// serde_json appends "at line 1 column 42"; the field name says more.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Cuts caller-supplied text before it is echoed in a problem detail.
pub fn truncate(raw: &str, max: usize) -> String {
    match raw.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &raw[..at]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: Option<String>,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: Option<u8>,
    }

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::InvalidField { field, .. } => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn a_wrong_type_names_the_nested_field() {
        let err = decode::<Body>(br#"{"inner": {"count": "x"}}"#).unwrap_err();
        assert_eq!(field_of(err), "inner.count");
    }

    #[test]
    fn an_unknown_field_is_rejected_by_name() {
        let err = decode::<Body>(br#"{"nmae": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
    }

    #[test]
    fn broken_json_and_trailing_bytes_are_malformed() {
        assert!(matches!(
            decode::<Body>(b"{\"name\": "),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            decode::<Body>(b"{} {}"),
            Err(ApiError::MalformedJson(_))
        ));
    }

    #[test]
    fn an_empty_body_is_an_empty_object() {
        assert!(decode::<Body>(b"  ").is_ok());
    }

    #[test]
    fn a_non_object_body_names_the_body() {
        assert_eq!(field_of(decode::<Body>(b"[1]").unwrap_err()), "body");
    }

    #[test]
    fn truncate_cuts_on_character_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
