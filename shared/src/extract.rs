//! Extractors that answer malformed input with the contract's errors: a body that is not JSON is
//! 400, a wrong content type 415, a body over the limit 413, and a value of the wrong shape 422
//! naming the field. They never panic and never produce a 500.

use std::collections::BTreeMap;

use axum::{
    body::Bytes,
    extract::{
        rejection::{BytesRejection, PathRejection, QueryRejection},
        FromRequest, FromRequestParts, Path, Query, Request,
    },
    http::{header, request::Parts, HeaderMap, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body, decoded into `T`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// Whether the `Content-Type` header says JSON (`application/json`, or any `+json` type).
pub fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// The lower-cased media type of `Content-Type`, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim().to_ascii_lowercase();
    Some(media)
}

/// Reads the whole body, answering 413 when it is over the router's body limit and 408 when it
/// paused longer than the router allows.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(body_error)
}

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    } else if body_stalled(&rejection) {
        body_timeout()
    } else {
        ApiError::bad_request("invalid_body", rejection.body_text())
    }
}

/// Whether reading a body failed because it paused longer than the router's pause limit
/// ([`crate::http::EdgeConfig::body_timeout`]).
pub fn body_stalled(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source())
        .any(|e| e.is::<tower_http::timeout::TimeoutError>())
}

/// 408 `request_timeout`: the body stopped arriving. hyper closes the connection after it, as
/// it does after any answer given before the whole body was read.
pub fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body stopped arriving; send it again",
    )
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::unsupported_media_type(
                "expected Content-Type: application/json",
            ));
        }
        let body = read_body(req, state).await?;
        parse_json(&body).map(ApiJson)
    }
}

/// Decodes JSON in two steps so the two kinds of mistake get their own status: text that is not
/// JSON at all (400), and JSON of the wrong shape (422, naming the field).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("malformed JSON: {e}")))?;
    if let Some((field, problem)) = crate::text::find_in_json(&value, "body") {
        return Err(ApiError::invalid_field(field, problem));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        ApiError::invalid_field(field_name(&path, &message, "body"), message)
    })
}

/// A whole-number query parameter: `default` when absent, 422 naming `field` when it is not a
/// whole number within `range`.
pub fn bounded_int(
    field: &str,
    value: Option<&str>,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ApiError> {
    match value.map(str::parse::<i64>) {
        None => Ok(default),
        Some(Ok(n)) if range.contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid_field(
            field,
            format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// A query parameter of comma-separated ids: 1 to `max` distinct ones, sorted; 422 naming
/// `field` otherwise.
pub fn id_list(field: &str, raw: &str, max: usize) -> Result<Vec<uuid::Uuid>, ApiError> {
    let bad = || ApiError::invalid_field(field, format!("must be 1 to {max} comma-separated ids"));
    let mut ids: Vec<uuid::Uuid> = raw
        .split(',')
        .map(|s| uuid::Uuid::try_parse(s.trim()).map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() || ids.len() > max {
        return Err(bad());
    }
    Ok(ids)
}

/// The field a serde error is about: its path when it has one, else the name serde quotes in
/// messages such as "missing field `password`".
pub fn field_name(path: &str, message: &str, fallback: &str) -> String {
    if !path.is_empty() && path != "." && path != "?" {
        return path.to_owned();
    }
    let mut quoted = message.split('`');
    match (quoted.next(), quoted.next()) {
        (Some(_), Some(name)) if !name.is_empty() && !name.contains(' ') => name.to_owned(),
        _ => fallback.to_owned(),
    }
}

/// A query string decoded into `T`; a bad one is 422 naming the parameter.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        check_query_text(parts)?;
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|rejection: QueryRejection| {
                let text = rejection.body_text();
                let message = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_owned();
                ApiError::invalid_field(field_name("", &message, "query"), message)
            })
    }
}

/// Refuses a query string any of whose values (or names) holds a control character, naming it.
fn check_query_text(parts: &Parts) -> Result<(), ApiError> {
    let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) else {
        // Not decodable as pairs at all: the typed decode answers with its own 422.
        return Ok(());
    };
    for (name, value) in &pairs {
        if let Err(problem) = crate::text::check(name).and_then(|()| crate::text::check(value)) {
            return Err(ApiError::invalid_field(name.clone(), problem));
        }
    }
    Ok(())
}

/// Path parameters decoded into `T`; a malformed one (say, not a UUID) is 422 naming it.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let text = e.body_text();
                let field = match e.kind() {
                    ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. }
                    | ErrorKind::InvalidUtf8InPathParam { key } => key.clone(),
                    _ => "path".to_owned(),
                };
                Err(ApiError::validation(BTreeMap::from([(field, text)])))
            }
            Err(other) => Err(ApiError::internal(other.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Login {
        username: String,
        password: String,
    }

    #[test]
    fn malformed_json_is_400() {
        let e = parse_json::<Login>(b"{\"username\": ").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let e = parse_json::<Login>(br#"{"username": "a"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.fields.unwrap().contains_key("password"));

        let e = parse_json::<Login>(br#"{"username": 5, "password": "x"}"#).unwrap_err();
        assert!(e.fields.unwrap().contains_key("username"));

        let e = parse_json::<Login>(b"[]").unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn control_characters_are_422_naming_the_field() {
        let e = parse_json::<Login>(br#"{"username": "a", "password": "p\u0000ss"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.fields.unwrap().contains_key("password"));
    }
}
