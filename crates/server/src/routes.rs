//! The route table: every route of the HTTP API, as one list of handlers. The API's router
//! is built from it and nothing else, and the OpenAPI test compares it with
//! `/openapi.json`, so an API route cannot be served undocumented nor documented unserved.
//! (The demo page and the browser client's assets, in `crate::demo`, are not API routes
//! and are not in the document.)
//!
//! Each entry names a handler and the struct `#[utoipa::path]` generated for it; the
//! method and path come from that attribute, so they are written once. To add a route:
//! annotate the handler with `#[utoipa::path]`, add it to [`table`], and list it in
//! `paths(…)` of `crate::openapi::ApiDoc` (the test fails until both agree).

use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use utoipa::openapi::path::HttpMethod;

use crate::server::AppState;

/// One served operation.
#[derive(Debug)]
pub(crate) struct Route {
    /// The HTTP method.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the OpenAPI route test"))]
    pub(crate) method: Method,
    /// The path, in the syntax axum and OpenAPI share (`/v1/users/{user_id}/events`).
    pub(crate) path: String,
    handler: MethodRouter<Arc<AppState>>,
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
    H: Handler<T, Arc<AppState>>,
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
    use crate::{history_api, http, openapi, publish, ws};
    [
        route::<ws::__path_ws_handler, _, _>(ws::ws_handler),
        route::<http::__path_healthz, _, _>(http::healthz),
        route::<http::__path_readyz, _, _>(http::readyz),
        route::<http::__path_metrics, _, _>(http::metrics),
        route::<openapi::__path_openapi_json, _, _>(openapi::openapi_json),
        route::<publish::__path_publish_events, _, _>(publish::publish_events),
        route::<history_api::__path_read_history, _, _>(history_api::read_history),
        route::<http::__path_user_connections, _, _>(http::user_connections),
        route::<http::__path_disconnect_user, _, _>(http::disconnect_user),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The router of [`table`].
pub(crate) fn api() -> Router<Arc<AppState>> {
    table().into_iter().fold(Router::new(), |r, route| {
        r.route(&route.path, route.handler)
    })
}
