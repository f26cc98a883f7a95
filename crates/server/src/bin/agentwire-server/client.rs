//! What `tail` and `publish` share: the server's address as they take it (`--server`).

use std::fmt;

/// A server's host and port, from `http://host:port`, `ws://host:port` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerAddr {
    /// The host as written (a name, an IPv4 address, or an IPv6 address in brackets).
    host: String,
    port: u16,
}

/// Why `--server` is not an address these subcommands can use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ServerAddrError {
    /// `https://` or `wss://`: these subcommands speak plain HTTP only.
    #[error(
        "--server {0}: TLS is not supported here; give the server's own http:// address (or \
         reach it through an SSH tunnel)"
    )]
    Tls(String),
    /// Not `[scheme://]host[:port][/]`.
    #[error("--server {0}: expected http://host:port")]
    Malformed(String),
}

impl ServerAddr {
    /// Parses `--server`.
    ///
    /// # Errors
    /// [`ServerAddrError`] for TLS schemes and anything that is not `[scheme://]host[:port]`.
    pub(crate) fn parse(text: &str) -> Result<ServerAddr, ServerAddrError> {
        let malformed = || ServerAddrError::Malformed(text.to_owned());
        let rest = match text.split_once("://") {
            Some(("http" | "ws", rest)) => rest,
            Some(("https" | "wss", _)) => return Err(ServerAddrError::Tls(text.to_owned())),
            Some(_) => return Err(malformed()),
            None => text,
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(malformed());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                (host, port.parse::<u16>().map_err(|_| malformed())?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
            return Err(malformed());
        }
        Ok(ServerAddr {
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port`, for `Host` headers and URLs.
    pub(crate) fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host and port to connect to (brackets of an IPv6 address removed).
    pub(crate) fn socket(&self) -> (&str, u16) {
        (
            self.host.trim_start_matches('[').trim_end_matches(']'),
            self.port,
        )
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_parse_as_written() {
        let a = ServerAddr::parse("http://127.0.0.1:8080").expect("parses");
        assert_eq!(a.authority(), "127.0.0.1:8080");
        assert_eq!(
            ServerAddr::parse("ws://localhost:9000/").map(|a| a.authority()),
            Ok("localhost:9000".into())
        );
        assert_eq!(
            ServerAddr::parse("agentwire.internal").map(|a| a.authority()),
            Ok("agentwire.internal:80".into())
        );
        let v6 = ServerAddr::parse("http://[::1]:8080").expect("IPv6");
        assert_eq!(v6.socket(), ("::1", 8080));
        assert!(matches!(
            ServerAddr::parse("https://a.example"),
            Err(ServerAddrError::Tls(_))
        ));
        for bad in [
            "",
            "http://",
            "ftp://a",
            "http://a:port",
            "http://a/x",
            "::1:80",
        ] {
            assert!(ServerAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
