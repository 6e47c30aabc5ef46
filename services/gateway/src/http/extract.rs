//! What handlers take from a request besides their path: the caller's
//! authorisation as a type ([`Reader`], [`Writer`], [`Admin`], and the
//! `Link…` forms that also take the key from the query string), and JSON
//! bodies.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::auth::{key_from_headers, Caller, Role};
use crate::error::{Error, Result};
use crate::gateway::Gateway;

/// Who may call a route.
pub trait Policy {
    const ROLE: Role;
    /// Whether the key may come as `api_key` in the query string, for
    /// what a browser fetches without headers (`<img>`, EventSource,
    /// downloads).
    const QUERY_KEY: bool;
}

/// A request whose key (when access control is on) carries the role of
/// policy `P`; the handler runs only then.
pub struct Guarded<P: Policy> {
    pub caller: Caller,
    policy: PhantomData<P>,
}

macro_rules! policies {
    ($($(#[$doc:meta])* $name:ident = $policy:ident($role:ident, $query:literal);)*) => {$(
        pub struct $policy;
        impl Policy for $policy {
            const ROLE: Role = Role::$role;
            const QUERY_KEY: bool = $query;
        }
        $(#[$doc])*
        pub type $name = Guarded<$policy>;
    )*};
}

policies! {
    /// Reading: searches, collections, jobs, models.
    Reader = SearchRole(Search, false);
    /// [`Reader`], with the key in the header or the query string.
    LinkReader = SearchLink(Search, true);
    /// Adding images and creating collections.
    Writer = IndexRole(Index, false);
    /// Deleting, clearing, training and the model registry.
    Admin = AdminRole(Admin, false);
    /// [`Admin`], with the key in the header or the query string.
    LinkAdmin = AdminLink(Admin, true);
}

impl<P: Policy> Guarded<P> {
    /// The caller's name, or "anonymous" when access control is off.
    pub fn name(self) -> String {
        self.caller.0.unwrap_or_else(|| "anonymous".into())
    }
}

#[derive(serde::Deserialize)]
struct KeyQuery {
    api_key: Option<String>,
}

impl<P: Policy + Send + Sync> FromRequestParts<Arc<Gateway>> for Guarded<P> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        gw: &Arc<Gateway>,
    ) -> std::result::Result<Self, Response> {
        let from_query = if P::QUERY_KEY {
            Query::<KeyQuery>::try_from_uri(&parts.uri)
                .map_err(IntoResponse::into_response)?
                .0
                .api_key
        } else {
            None
        };
        let key = key_from_headers(&parts.headers).or(from_query.as_deref());
        match gw.auth.check(key, P::ROLE) {
            Ok(caller) => Ok(Self {
                caller,
                policy: PhantomData,
            }),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A JSON request body, taken only with a JSON Content-Type (415
/// otherwise): a page on another site can send `text/plain` without the
/// browser asking the gateway first, but not `application/json`.
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Response> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        parse_json(&headers, &body)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"))
        .unwrap_or("");
    if !crate::guard::is_json_type(content_type) {
        return Err(Error::UnsupportedMediaType(format!(
            "send the body as JSON with Content-Type: application/json (got {})",
            if content_type.is_empty() {
                "no Content-Type".to_string()
            } else {
                format!("{:?}", content_type.chars().take(100).collect::<String>())
            }
        )));
    }
    parse_json_content(body)
}

/// The JSON of a body whose Content-Type was checked already.
pub(crate) fn parse_json_content<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidArgument(format!("bad JSON body: {e}")))
}
