//! Streaming an assistant message: any `Stream` of text pieces becomes `message_delta`
//! events and a closing `message_completed`.

use agentwire_emitter::{EmitterError, UnifiedWebSocketEmitter};
use futures_util::{Stream, StreamExt};

/// A message streamed to the user: its id and the whole text its deltas carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedMessage {
    /// The `message_id` its events named.
    pub message_id: String,
    /// The concatenation of every piece, as the user's client assembles it.
    pub text: String,
}

/// Emits each non-empty piece of `pieces` as a `message_delta` of a fresh `message_id`, in
/// order, then `message_completed`. A stream with no text still opens and closes the
/// message (one empty delta), so the user sees an empty answer rather than none.
pub(crate) async fn stream_message<S>(
    emitter: &UnifiedWebSocketEmitter,
    pieces: S,
) -> Result<StreamedMessage, EmitterError>
where
    S: Stream<Item = String>,
{
    let message_id = format!("m_{}", uuid::Uuid::now_v7().simple());
    let mut pieces = std::pin::pin!(pieces);
    let mut text = String::new();
    let mut opened = false;
    while let Some(piece) = pieces.next().await {
        if piece.is_empty() {
            continue;
        }
        text.push_str(&piece);
        emitter
            .emit_message_delta(message_id.as_str(), piece)
            .await?;
        opened = true;
    }
    if !opened {
        emitter.emit_message_delta(message_id.as_str(), "").await?;
    }
    emitter
        .emit_message_completed(message_id.as_str(), None)
        .await?;
    Ok(StreamedMessage { message_id, text })
}
