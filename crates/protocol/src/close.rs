//! WebSocket close codes agentwire uses, what each means, and what a client should do.

use std::fmt;

/// What a client should do after a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAction {
    /// Stop; do not reconnect.
    Stop,
    /// Stop and report: the client (or server) has a bug.
    StopAndReport,
    /// Reconnect at once (to another node if there is one) and resume.
    ReconnectAndResume,
    /// Back off, then reconnect.
    BackOffThenReconnect,
    /// Reconnect with exponential backoff and resume.
    ReconnectWithBackoffAndResume,
    /// Get a new token before reconnecting.
    NewTokenThenReconnect,
    /// Refresh the token, reconnect and resume.
    RefreshTokenThenResume,
    /// Do not reconnect on its own; a user action may.
    DoNotReconnect,
}

impl ClientAction {
    /// Whether the client should reconnect by itself.
    pub fn reconnects(self) -> bool {
        !matches!(
            self,
            ClientAction::Stop | ClientAction::StopAndReport | ClientAction::DoNotReconnect
        )
    }

    /// Whether the client needs a new token first.
    pub fn needs_new_token(self) -> bool {
        matches!(
            self,
            ClientAction::NewTokenThenReconnect | ClientAction::RefreshTokenThenResume
        )
    }
}

/// The close codes of agentwire, with their numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the server is shutting down, or an operator disconnected the user.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol.
    ProtocolError,
    /// 1007: a frame's payload was invalid (e.g. text that is not UTF-8).
    InvalidPayload,
    /// 1008: policy violation: repeated bad frames, or sending too fast.
    PolicyViolation,
    /// 1009: a message was larger than the server accepts.
    MessageTooBig,
    /// 1011: the server failed.
    InternalError,
    /// 1013: the node is overloaded, or this connection fell behind (slow consumer).
    TryAgainLater,
    /// 4001: the token is invalid.
    TokenInvalid,
    /// 4002: the token expired while connected.
    TokenExpired,
    /// 4003: replaced by a newer connection of the same user.
    Replaced,
    /// 4004: the user's connection limit is reached.
    Rejected,
}

impl CloseCode {
    /// Every close code, in numeric order.
    pub const ALL: [CloseCode; 12] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::InvalidPayload,
        CloseCode::PolicyViolation,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::TryAgainLater,
        CloseCode::TokenInvalid,
        CloseCode::TokenExpired,
        CloseCode::Replaced,
        CloseCode::Rejected,
    ];

    /// The number sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TryAgainLater => 1013,
            CloseCode::TokenInvalid => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::Replaced => 4003,
            CloseCode::Rejected => 4004,
        }
    }

    /// The reason sent in the close frame (short: a close reason holds at most 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "server going away",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidPayload => "invalid payload",
            CloseCode::PolicyViolation => "policy violation",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::TryAgainLater => "try again later",
            CloseCode::TokenInvalid => "token invalid",
            CloseCode::TokenExpired => "token expired",
            CloseCode::Replaced => "replaced by a newer connection",
            CloseCode::Rejected => "connection limit reached",
        }
    }

    /// What the client should do.
    pub fn client_action(self) -> ClientAction {
        match self {
            CloseCode::Normal => ClientAction::Stop,
            CloseCode::GoingAway => ClientAction::ReconnectAndResume,
            CloseCode::ProtocolError | CloseCode::InvalidPayload | CloseCode::MessageTooBig => {
                ClientAction::StopAndReport
            }
            CloseCode::PolicyViolation => ClientAction::BackOffThenReconnect,
            CloseCode::InternalError | CloseCode::TryAgainLater => {
                ClientAction::ReconnectWithBackoffAndResume
            }
            CloseCode::TokenInvalid => ClientAction::NewTokenThenReconnect,
            CloseCode::TokenExpired => ClientAction::RefreshTokenThenResume,
            CloseCode::Replaced | CloseCode::Rejected => ClientAction::DoNotReconnect,
        }
    }

    /// The close code with this number, if agentwire uses it.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_reasons_fit_a_close_frame() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(c.reason().len() <= 123);
        }
        assert_eq!(CloseCode::from_code(1005), None);
    }

    #[test]
    fn the_table_of_the_design() {
        use ClientAction::*;
        let table = [
            (1000, Stop),
            (1001, ReconnectAndResume),
            (1002, StopAndReport),
            (1007, StopAndReport),
            (1008, BackOffThenReconnect),
            (1009, StopAndReport),
            (1011, ReconnectWithBackoffAndResume),
            (1013, ReconnectWithBackoffAndResume),
            (4001, NewTokenThenReconnect),
            (4002, RefreshTokenThenResume),
            (4003, DoNotReconnect),
            (4004, DoNotReconnect),
        ];
        for (code, action) in table {
            let c = CloseCode::from_code(code).expect("known code");
            assert_eq!(c.client_action(), action, "{code}");
        }
        assert!(!CloseCode::Replaced.client_action().reconnects());
        assert!(CloseCode::TryAgainLater.client_action().reconnects());
        assert!(CloseCode::TokenExpired.client_action().needs_new_token());
    }
}
