//! The Origin allow-list (`--allowed-origins`), in one place for the two things it decides:
//! which pages may open `/ws`, and which may load the browser client (`/client.js`,
//! `/client.d.ts`) across origins (CORS).

use axum::http::{HeaderMap, HeaderValue, header};

/// Origins allowed (`https://app.example.com`); empty, or `*` among them, allows any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// The list as configured: entries trimmed, a trailing `/` dropped, empty ones ignored.
    pub(crate) fn new(list: &[String]) -> AllowedOrigins {
        AllowedOrigins(
            list.iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        )
    }

    fn any(&self) -> bool {
        self.0.is_empty() || self.0.iter().any(|o| o == "*")
    }

    /// Whether a page of `origin` is allowed.
    pub(crate) fn allows(&self, origin: &HeaderValue) -> bool {
        if self.any() {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.0.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The CORS headers of a public, read-only resource for a request with `headers`:
    /// `Access-Control-Allow-Origin: *` when any origin is allowed; the request's own
    /// `Origin` when it is on the list (with `Vary: Origin`, since the answer depends on
    /// it); none otherwise, so the browser refuses the page the resource.
    pub(crate) fn cors(&self, headers: &HeaderMap, out: &mut HeaderMap) {
        if self.any() {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            return;
        }
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = headers.get(header::ORIGIN)
            && self.allows(origin)
        {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(origin: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static(origin));
        h
    }

    #[test]
    fn an_empty_list_allows_any_origin_and_answers_cors_with_a_star() {
        let any = AllowedOrigins::new(&[]);
        assert!(any.allows(&HeaderValue::from_static("https://x.example")));
        let mut out = HeaderMap::new();
        any.cors(&request_from("https://x.example"), &mut out);
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!out.contains_key(header::VARY));
    }

    #[test]
    fn a_list_allows_its_origins_only_and_echoes_them() {
        let list = AllowedOrigins::new(&[" https://app.example/ ".into(), String::new()]);
        assert!(list.allows(&HeaderValue::from_static("https://APP.example")));
        assert!(!list.allows(&HeaderValue::from_static("https://evil.example")));
        let mut out = HeaderMap::new();
        list.cors(&request_from("https://app.example"), &mut out);
        assert_eq!(
            out[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(out[header::VARY], "Origin");
        let mut out = HeaderMap::new();
        list.cors(&request_from("https://evil.example"), &mut out);
        assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let star = AllowedOrigins::new(&["https://app.example".into(), "*".into()]);
        assert!(star.allows(&HeaderValue::from_static("https://evil.example")));
    }
}
