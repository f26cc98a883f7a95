//! What the server's outbound HTTP calls share (the JWKS fetch, the receipt webhook): the
//! rule for a URL the server calls (https, or http on a loopback host only), the URL as
//! logs show it (without credentials), and, with a feature that calls out, the connector:
//! hyper-util's HTTP/1 client connector with rustls on ring and the system's CA
//! certificates for https.

use axum::http::Uri;

/// `url` checked as a URL the server may call: `https`, or `http` on a loopback host
/// only (what goes in the clear could be read or replaced on the way); a host is required.
/// The error says why, for the caller to prefix with its flag.
pub(crate) fn outbound_url(url: &str, example: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("not a URL (e.g. {example})"))?;
    let host = uri.host().ok_or("the URL has no host")?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(
            "http is accepted only on a loopback host; use https (what goes \
                             in the clear could be read or replaced on the way)"
                .into(),
        ),
        _ => Err("the URL must start with https://".into()),
    }
}

/// `url` without user information (`user:password@`) and without query or fragment,
/// which may carry credentials.
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The connector of a client calling `uri` (checked by [`outbound_url`]): rustls on ring
/// with the system's CA certificates for https; for loopback http no roots are loaded
/// (TLS is never used). Connecting gives up after `connect_timeout`.
#[cfg(any(feature = "jwks", feature = "webhook"))]
pub(crate) fn connector(
    uri: &Uri,
    connect_timeout: std::time::Duration,
) -> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>
{
    use std::sync::Arc;

    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let tls = if uri.scheme_str() == Some("https") {
        builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| {
                format!(
                    "cannot load the system's CA certificates for https ({e}): install them \
                     (e.g. the ca-certificates package)"
                )
            })?
    } else {
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        builder.with_tls_config(config)
    };
    Ok(tls.https_or_http().enable_http1().wrap_connector(http))
}

/// An error and its causes, one line.
#[cfg(any(feature = "jwks", feature = "webhook"))]
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_http() {
        let check = |url: &str| outbound_url(url, "https://h/x").map(|_| ());
        assert!(check("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(check("http://127.0.0.1:9000/jwks.json").is_ok());
        assert!(check("http://localhost/jwks").is_ok());
        assert!(check("http://[::1]:80/jwks").is_ok());
        for bad in [
            "http://idp.example/jwks.json",
            "ftp://idp.example/jwks",
            "idp.example/jwks",
            "https:///jwks",
            "",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            redact("https://user:pw@idp.example/jwks?key=s#x"),
            "https://idp.example/jwks"
        );
        assert_eq!(redact("https://idp.example"), "https://idp.example");
    }
}
