//! Request bodies as JSON, strictly: `StrictJson` checks the content type (415) and the size
//! (413, `master.max_body_bytes`), and refuses an object that repeats a key (400
//! `duplicate_key`, naming the key and where it is). serde_json alone keeps the last of two
//! equal keys, so `{"paused": true, …, "paused": false}` would silently mean `false`.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A JSON body, parsed without accepting repeated keys.
pub struct StrictJson(pub Value);

impl<S: Send + Sync> FromRequest<S> for StrictJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send Content-Type: application/json".into(),
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is larger than master.max_body_bytes".into())
            } else {
                ApiError::bad("invalid_body", e.body_text())
            }
        })?;
        parse(&body).map(StrictJson)
    }
}

/// `application/json` or `application/…+json`, any parameters.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Parses `bytes` as one JSON value; a repeated key in any object is an error naming it.
pub fn parse(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize::<_, Strict>(&mut de) {
        Ok(v) => v.0,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => {
                    let message = inner.to_string();
                    let key = message
                        .strip_prefix(DUPLICATE)
                        .and_then(|rest| rest.split('"').next())
                        .unwrap_or_default()
                        .to_string();
                    ApiError::BadRequest {
                        code: "duplicate_key".into(),
                        message: format!("the key {key:?} appears twice in the same object (at {path}); send it once"),
                        field: Some(key),
                    }
                }
                _ => ApiError::bad("malformed_json", format!("the body is not valid JSON: {inner}")),
            });
        }
    };
    de.end()
        .map_err(|e| ApiError::bad("malformed_json", format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

const DUPLICATE: &str = "duplicate key \"";

/// A `Value` whose objects have unique keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(
            serde_json::Number::from_f64(v)
                .map(Value::Number)
                .unwrap_or(Value::Null),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("{DUPLICATE}{key}\"")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Strict(Value::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_and_field(e: ApiError) -> (String, Option<String>, String) {
        match e {
            ApiError::BadRequest { code, field, message } => (code, field, message),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn a_repeated_key_is_refused_and_named() {
        let e = parse(br#"{"paused": true, "command": "x", "paused": false}"#).unwrap_err();
        let (code, field, message) = code_and_field(e);
        assert_eq!(code, "duplicate_key");
        assert_eq!(field.as_deref(), Some("paused"));
        assert!(message.contains("\"paused\""), "{message}");
        // nested: the path says where
        let e = parse(br#"{"env": {"A": "1", "A": "2"}}"#).unwrap_err();
        let (_, field, message) = code_and_field(e);
        assert_eq!(field.as_deref(), Some("A"));
        assert!(message.contains("env"), "{message}");
    }

    #[test]
    fn valid_json_parses_as_serde_json_would() {
        let text = br#"{"a": [1, -2, 3.5, true, null, "x"], "b": {"c": {}}}"#;
        assert_eq!(parse(text).unwrap(), serde_json::from_slice::<Value>(text).unwrap());
        let (code, _, _) = code_and_field(parse(b"{not json").unwrap_err());
        assert_eq!(code, "malformed_json");
        let (code, _, _) = code_and_field(parse(b"{} trailing").unwrap_err());
        assert_eq!(code, "malformed_json");
    }
}
