//! What the binary logs at its default level (issue 19): each connection, each
//! disconnection and each refused handshake, at info, with the reason and never the token;
//! and plain lines (no ANSI colour codes) when stderr is not a terminal.

mod support;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use support::{BIN, ServerProcess, WAIT, temp_dir, websocket};

#[tokio::test]
async fn connects_disconnects_and_refusals_are_logged_at_info_without_the_token() {
    let dir = temp_dir("logs");
    let secret = "a production secret of 32 bytes!";
    let mut cmd = std::process::Command::new(BIN);
    cmd.env_clear().args([
        "--listen",
        "127.0.0.1:0",
        "--drain-delay",
        "0s",
        "--jwt-secret",
        secret,
    ]);
    let mut server = ServerProcess::spawn(cmd).expect("starts");
    let token = agentwire_server::mint_hs256(
        secret.as_bytes(),
        &agentwire_protocol::UserId::new("alice").expect("user"),
        std::time::Duration::from_secs(600),
        None,
        None,
    )
    .expect("mint");

    let mut ws = websocket(server.addr, &token).await;
    ws.send(Message::Close(None)).await.expect("close");
    drop(ws);

    let forged = agentwire_server::mint_hs256(
        b"another secret, not the server's!",
        &agentwire_protocol::UserId::new("mallory").expect("user"),
        std::time::Duration::from_secs(600),
        None,
        None,
    )
    .expect("mint");
    let mut req = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {forged}")).expect("header"),
    );
    let refused = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("an answer in time");
    assert!(refused.is_err(), "a forged token is refused");

    // Let the disconnection be logged, then stop.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    server.sigterm();
    assert!(server.wait_exit(WAIT).is_some_and(|s| s.success()));
    let log = server.stderr.until_exit();

    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` line in:\n{log}"))
            .to_owned()
    };
    let connected = line(" connected");
    assert!(
        connected.contains("INFO") && connected.contains("user=alice"),
        "{connected}"
    );
    let disconnected = line("disconnected");
    assert!(
        disconnected.contains("INFO") && disconnected.contains("closed by the client (1005)"),
        "{disconnected}"
    );
    let refused = line("ws handshake refused");
    assert!(
        refused.contains("INFO") && refused.contains("token_signature"),
        "{refused}"
    );
    assert!(refused.contains("peer=127.0.0.1:"), "{refused}");
    for secret in [token.as_str(), forged.as_str(), secret] {
        assert!(!log.contains(secret), "a credential in the log:\n{log}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in a piped log:\n{log:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
