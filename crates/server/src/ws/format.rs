//! What a connection's frames look like on the wire, chosen per connection with
//! `?format=` (on `/ws` and `/v1/stream`): agentwire's own frames (the default), or their
//! AG-UI projection (`ag-ui`, docs/ag-ui.md), made by the connection's writer from the
//! shared frames of its queue.

use agentwire_protocol::{CloseCode, ServerFrame, project_close, project_frame};
use bytes::Bytes;

use crate::http::{ApiError, ErrorCode};

/// The frames a connection receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Format {
    /// agentwire's frames, as docs/protocol.md specifies them.
    #[default]
    Agentwire,
    /// Each frame projected to AG-UI events (`@ag-ui/core`).
    AgUi,
}

impl Format {
    /// The format `?format=` asks for.
    pub(crate) fn from_query(value: Option<&str>) -> Result<Format, ApiError> {
        match value {
            None | Some("agentwire") => Ok(Format::Agentwire),
            Some("ag-ui") => Ok(Format::AgUi),
            Some(_) => Err(
                ApiError::new(ErrorCode::BadRequest, "must be `agentwire` or `ag-ui`").at("format"),
            ),
        }
    }
}

/// The AG-UI events of one queued frame, each as JSON. A frame that does not decode (none
/// should: the manager wrote it) is passed through as it is.
pub(crate) fn project(frame: &Bytes) -> Vec<Bytes> {
    match ServerFrame::decode(frame) {
        Ok(f) => project_frame(&f)
            .into_iter()
            .map(|e| Bytes::from(e.to_json()))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "a queued frame did not decode; sent unprojected");
            vec![frame.clone()]
        }
    }
}

/// Replaces every frame of `batch` by its AG-UI events.
pub(crate) fn project_batch(batch: &mut Vec<Bytes>) {
    let frames = std::mem::take(batch);
    for frame in &frames {
        batch.extend(project(frame));
    }
}

/// The AG-UI event that ends a stream closed with `code`.
pub(crate) fn close_event(code: CloseCode) -> Bytes {
    Bytes::from(project_close(code).to_json())
}
