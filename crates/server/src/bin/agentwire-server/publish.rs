//! `agentwire-server publish`: events to `POST /v1/events`, from flags, `--json`, or a
//! file of JSON lines; each answer of the publish API printed as one line on stdout.

use std::io::BufRead;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use serde_json::{Map, Value};

use crate::cli::PublishArgs;
use crate::client::{ServerAddr, ServerAddrError};
use crate::dev::{DevCredentials, dev_credentials_path};

/// Largest answer read from the publish API: one result per event, well under this.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why `publish` failed; each kind has its exit code (docs/operations.md).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// The events given are not JSON events (exit 2).
    #[error("{0}")]
    Input(String),
    /// `--server` cannot be used (exit 2).
    #[error(transparent)]
    Server(#[from] ServerAddrError),
    /// `--file` could not be read (exit 1).
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// No API key was given and none could be read from the development credentials
    /// (exit 4).
    #[error("no API key (--api-key, AGENTWIRE_API_KEY): {0:#}")]
    NoKey(anyhow::Error),
    /// The server could not be reached, or the connection failed mid-request (exit 3).
    #[error("cannot reach {server}: {reason}")]
    Connect { server: String, reason: String },
    /// 401 or 403: the API key is wrong or may not publish (exit 4).
    #[error("the API key was refused ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    /// Another 4xx: the events were refused; nothing of the refused user's events was
    /// published (exit 5).
    #[error("the events were refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// 429 or 5xx: try again later, with the same `event_id`s (exit 6).
    #[error("the server cannot take the events now ({status}{retry}): {message}")]
    Unavailable {
        status: u16,
        retry: String,
        message: String,
    },
}

impl PublishError {
    /// The process's exit code for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            PublishError::Read { .. } => 1,
            PublishError::Input(_) | PublishError::Server(_) => 2,
            PublishError::Connect { .. } => 3,
            PublishError::NoKey(_) | PublishError::Unauthorized { .. } => 4,
            PublishError::Refused { .. } => 5,
            PublishError::Unavailable { .. } => 6,
        }
    }
}

/// Publishes what `args` give and prints each answer.
///
/// # Errors
/// [`PublishError`]; the events of earlier requests (with `--file`) stay published.
pub(crate) async fn run(args: &PublishArgs) -> Result<(), PublishError> {
    let server = ServerAddr::parse(&args.server.server)?;
    let bodies = bodies(args)?;
    let key = match &args.api_key {
        Some(key) => key.clone(),
        None => {
            DevCredentials::load(&dev_credentials_path(args.dev_credentials_file.as_deref()))
                .map_err(PublishError::NoKey)?
                .api_key
        }
    };
    let connect = |reason: String| PublishError::Connect {
        server: server.to_string(),
        reason,
    };
    let stream = tokio::net::TcpStream::connect(server.socket())
        .await
        .map_err(|e| connect(e.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| connect(e.to_string()))?;
    tokio::spawn(connection);
    for body in bodies {
        let request = hyper::Request::post("/v1/events")
            .header(HOST, server.authority())
            .header(AUTHORIZATION, format!("Bearer {key}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PublishError::Input(e.to_string()))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let status = answer.status().as_u16();
        let retry = answer
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(|s| format!(", Retry-After: {s}"))
            .unwrap_or_default();
        let bytes = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| connect(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        crate::say(text.trim_end());
        let message = || match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => format!(
                "{} {}{}",
                v["error"].as_str().unwrap_or("?"),
                v["message"].as_str().unwrap_or(""),
                v["field"]
                    .as_str()
                    .map(|f| format!(" (field {f})"))
                    .unwrap_or_default()
            ),
            Err(_) => text.trim().to_owned(),
        };
        match status {
            200..=299 => {}
            401 | 403 => {
                return Err(PublishError::Unauthorized {
                    status,
                    message: message(),
                });
            }
            429 | 500.. => {
                return Err(PublishError::Unavailable {
                    status,
                    retry,
                    message: message(),
                });
            }
            _ => {
                return Err(PublishError::Refused {
                    status,
                    message: message(),
                });
            }
        }
    }
    Ok(())
}

/// The request bodies `args` give, checked to be JSON events (the server checks the rest).
fn bodies(args: &PublishArgs) -> Result<Vec<Vec<u8>>, PublishError> {
    if let Some(json) = &args.json {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| PublishError::Input(format!("--json is not JSON: {e}")))?;
        if !(value.is_object() || value.is_array()) {
            return Err(PublishError::Input(
                "--json must be an event object or an array of them".into(),
            ));
        }
        return Ok(vec![json.clone().into_bytes()]);
    }
    if let Some(path) = &args.file {
        let events = read_lines(path)?;
        if events.is_empty() {
            return Err(PublishError::Input(format!(
                "{} holds no events",
                path.display()
            )));
        }
        let per = usize::try_from(args.batch).unwrap_or(usize::MAX).max(1);
        return Ok(events
            .chunks(per)
            .map(|chunk| Value::Array(chunk.to_vec()).to_string().into_bytes())
            .collect());
    }
    let mut event = Map::new();
    let mut put = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            event.insert(name.into(), Value::String(v.clone()));
        }
    };
    put("user_id", &args.user);
    put("type", &args.kind);
    put("thread_id", &args.thread_id);
    put("run_id", &args.run_id);
    put("event_id", &args.event_id);
    if let Some(data) = &args.data {
        let data: Value = serde_json::from_str(data)
            .map_err(|e| PublishError::Input(format!("--data is not JSON: {e}")))?;
        if !data.is_object() {
            return Err(PublishError::Input("--data must be a JSON object".into()));
        }
        event.insert("data".into(), data);
    }
    Ok(vec![Value::Object(event).to_string().into_bytes()])
}

/// The events of a file of JSON lines (`-`: stdin), blank lines skipped.
fn read_lines(path: &Path) -> Result<Vec<Value>, PublishError> {
    let name = path.display().to_string();
    let read = |source| PublishError::Read {
        path: name.clone(),
        source,
    };
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(read)?,
        ))
    };
    let mut events = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(read)?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line)
            .map_err(|e| PublishError::Input(format!("{name}:{}: not JSON: {e}", n + 1)))?;
        if !event.is_object() {
            return Err(PublishError::Input(format!(
                "{name}:{}: expected one event object per line",
                n + 1
            )));
        }
        events.push(event);
    }
    Ok(events)
}
