//! RefreshToken: swaps the token of an open stream for a fresh one of the same user, so that the
//! stream is not ended when the token it was opened with expires.

use tonic::Request;

use crate::Relay;
use crate::error::Result;
use crate::proto::{RefreshTokenRequest, RefreshTokenResponse};
use crate::route::{self, Call};

pub async fn refresh_token(relay: &Relay, req: Request<RefreshTokenRequest>) -> Result<RefreshTokenResponse> {
    let caller = relay.authenticate(&req).await?;
    let stream = req.into_inner().stream_id;
    let call =
        Call::Refresh { stream: stream.clone(), user: caller.user.id, token: caller.token, expires: caller.expires };
    route::call(relay, &stream, call).await?;
    Ok(RefreshTokenResponse { token_expires: caller.expires })
}
