//! What a connection's frames look like on the wire, chosen per connection with
//! `?format=` (on `/ws` and `/v1/stream`): agentwire's own frames (the default), or their
//! AG-UI projection (`ag-ui`, docs/ag-ui.md), made by the connection's writer from the
//! shared frames of its queue.

use agentwire_protocol::{AgUiProjection, CloseCode, ServerFrame, project_close};
use bytes::Bytes;

use super::metrics::WsMetrics;
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

/// One connection's AG-UI projection (the streamed messages it opened), counting the open
/// messages it forgets at `AGUI_MAX_OPEN_MESSAGES`.
#[derive(Debug, Default)]
pub(crate) struct Projector {
    projection: AgUiProjection,
    forgotten: u64,
}

impl Projector {
    /// The projector of a connection in `format`; `None` for agentwire's own frames.
    pub(crate) fn for_format(format: Format) -> Option<Projector> {
        (format == Format::AgUi).then(Projector::default)
    }

    /// The AG-UI events of one queued frame, each as JSON. A frame that does not decode
    /// (none should: the manager wrote it) is passed through as it is.
    pub(crate) fn project(&mut self, frame: &Bytes, metrics: &WsMetrics) -> Vec<Bytes> {
        let out = match ServerFrame::decode(frame) {
            Ok(f) => self
                .projection
                .project(&f)
                .into_iter()
                .map(|e| Bytes::from(e.to_json()))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "a queued frame did not decode; sent unprojected");
                vec![frame.clone()]
            }
        };
        let forgotten = self.projection.forgotten();
        if forgotten > self.forgotten {
            metrics.agui_messages_forgotten(forgotten - self.forgotten);
            self.forgotten = forgotten;
        }
        out
    }

    /// Replaces every frame of `batch` by its AG-UI events.
    pub(crate) fn project_batch(&mut self, batch: &mut Vec<Bytes>, metrics: &WsMetrics) {
        let frames = std::mem::take(batch);
        for frame in &frames {
            batch.extend(self.project(frame, metrics));
        }
    }
}

/// The AG-UI event that ends a stream closed with `code`.
pub(crate) fn close_event(code: CloseCode) -> Bytes {
    Bytes::from(project_close(code).to_json())
}
