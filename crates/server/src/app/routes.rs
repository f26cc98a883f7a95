//! The route table: every route of the HTTP API, as one list of handlers. The API's router
//! is built from it and nothing else, and the OpenAPI test compares it with
//! `/openapi.json`, so an API route cannot be served undocumented nor documented unserved.
//! (The demo page and the browser client's assets, in `crate::demo`, are not API routes
//! and are not in the document.)
//!
//! Each entry names a handler and the struct `#[utoipa::path]` generated for it; the
//! method and path come from that attribute, so they are written once. To add a route:
//! annotate the handler with `#[utoipa::path]`, add it to [`table`], and list it in
//! `paths(…)` of `super::openapi::ApiDoc` (the test fails until both agree).

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use utoipa::openapi::path::HttpMethod;

use super::state::AppState;

/// One served operation.
#[derive(Debug)]
pub(crate) struct Route {
    /// The HTTP method.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the OpenAPI route test"))]
    pub(crate) method: Method,
    /// The path, in the syntax axum and OpenAPI share (`/v1/users/{user_id}/events`).
    pub(crate) path: String,
    handler: MethodRouter<AppState>,
}

/// The method of an OpenAPI operation, as axum filters and `http` names it.
pub(crate) fn method_of(m: &HttpMethod) -> (MethodFilter, Method) {
    match m {
        HttpMethod::Get => (MethodFilter::GET, Method::GET),
        HttpMethod::Post => (MethodFilter::POST, Method::POST),
        HttpMethod::Put => (MethodFilter::PUT, Method::PUT),
        HttpMethod::Delete => (MethodFilter::DELETE, Method::DELETE),
        HttpMethod::Options => (MethodFilter::OPTIONS, Method::OPTIONS),
        HttpMethod::Head => (MethodFilter::HEAD, Method::HEAD),
        HttpMethod::Patch => (MethodFilter::PATCH, Method::PATCH),
        HttpMethod::Trace => (MethodFilter::TRACE, Method::TRACE),
    }
}

/// The routes of `handler`, at the path and methods of its `#[utoipa::path]` (`P`).
fn route<P, H, T>(handler: H) -> Vec<Route>
where
    P: utoipa::Path,
    H: Handler<T, AppState>,
    T: 'static,
{
    let path = P::path();
    P::methods()
        .iter()
        .map(|m| {
            let (filter, method) = method_of(m);
            Route {
                method,
                path: path.clone(),
                handler: axum::routing::on(filter, handler.clone()),
            }
        })
        .collect()
}

/// Every route of the server.
pub(crate) fn table() -> Vec<Route> {
    use super::{metrics, openapi};
    use crate::api::{admin, health, history, publish};
    use crate::sse::handshake as sse;
    use crate::ws::handshake;
    [
        route::<handshake::__path_ws_handler, _, _>(handshake::ws_handler),
        route::<sse::__path_stream_handler, _, _>(sse::stream_handler),
        route::<health::__path_healthz, _, _>(health::healthz),
        route::<health::__path_readyz, _, _>(health::readyz),
        route::<metrics::__path_metrics, _, _>(metrics::metrics),
        route::<openapi::__path_openapi_json, _, _>(openapi::openapi_json),
        route::<publish::__path_publish_events, _, _>(publish::publish_events),
        route::<history::__path_read_history, _, _>(history::read_history),
        route::<admin::__path_user_connections, _, _>(admin::user_connections),
        route::<admin::__path_disconnect_user, _, _>(admin::disconnect_user),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The router of [`table`].
pub(crate) fn api() -> Router<AppState> {
    table().into_iter().fold(Router::new(), |r, route| {
        r.route(&route.path, route.handler)
    })
}
