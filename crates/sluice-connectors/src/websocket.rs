//! The shared websocket policy: connecting with a timeout and no Nagle delay, and what a failed
//! connection means (the HTTP status of a refused upgrade is classified by [`crate::http`]).

use std::time::Duration;

use sluice::{ErrorClass, SourceError};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, client::IntoClientRequest},
};

/// An open websocket.
pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `request` within `timeout`. `what` names the service in errors (never the URL's
/// secrets: callers pass a name, not the URL with a key in it).
///
/// # Errors
/// Transient for timeouts, network failures and refused upgrades with a transient status;
/// fatal for a bad URL or an upgrade refused for good (401, 403, 404, …).
pub async fn connect(
    request: impl IntoClientRequest + Unpin,
    what: &str,
    timeout: Duration,
) -> Result<Socket, SourceError> {
    // No Nagle on our side: small frames (subscribe, heartbeats) go out at once.
    let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(SourceError::transient(format!(
            "{what}: connecting timed out"
        ))),
        Ok(Err(error)) => Err(connect_error(what, error)),
        Ok(Ok((socket, _))) => Ok(socket),
    }
}

/// The class and text of a failed connection.
pub fn connect_error(what: &str, error: tungstenite::Error) -> SourceError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            crate::http::status_error(&format!("{what}: the upgrade was refused"), status, body)
        }
        tungstenite::Error::Url(_) => {
            SourceError::new(ErrorClass::Fatal, format!("{what}: bad URL")).with_source(error)
        }
        other => SourceError::transient(format!("{what}: connection failed")).with_source(other),
    }
}
