//! Presence and PresenceStats: verify -> channel -> settings (presence enabled) -> may subscribe ->
//! read ([`crate::presence`]).

use std::sync::Arc;

use tonic::Request;

use crate::Relay;
use crate::error::{Error, Result};
use crate::proto::{Member, PresenceRequest, PresenceResponse, PresenceStatsRequest, PresenceStatsResponse};
use crate::settings::Governed;

pub async fn presence(relay: &Relay, req: Request<PresenceRequest>) -> Result<PresenceResponse> {
    let user = relay.authenticate(&req).await?.user;
    let (channel, governed) = allowed(relay, &user, &req.get_ref().channelid).await?;
    let list = relay.presence.members(channel.as_str(), &governed.settings.presence).await?;
    Ok(PresenceResponse {
        truncated: list.truncated,
        members: list
            .members
            .iter()
            .map(|m| Member {
                userid: m.user.clone(),
                username: m.name.clone(),
                streams: m.streams,
                since: m.since_ms.saturating_mul(1_000_000),
            })
            .collect(),
    })
}

pub async fn presence_stats(relay: &Relay, req: Request<PresenceStatsRequest>) -> Result<PresenceStatsResponse> {
    let user = relay.authenticate(&req).await?.user;
    let (channel, governed) = allowed(relay, &user, &req.get_ref().channelid).await?;
    let stats = relay.presence.stats(channel.as_str(), &governed.settings.presence).await?;
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(PresenceStatsResponse { members: clamp(stats.members), streams: clamp(stats.streams) })
}

/// The channel, if it has presence and `user` may subscribe to it.
async fn allowed(
    relay: &Relay,
    user: &crate::auth::User,
    raw: &str,
) -> Result<(relay_channel::ChannelId, Arc<Governed>)> {
    let channel = super::channel_id(raw)?;
    let governed = relay.settings.get(&channel).await?;
    if !governed.settings.access.subscribe.allows(&user.id, &channel) {
        return Err(Error::PermissionDenied(format!(
            "user {} may not subscribe to {channel}, so may not see who does",
            user.id
        )));
    }
    if !governed.settings.presence.enabled {
        return Err(Error::FailedPrecondition(format!(
            "channel {channel} does not keep presence: set spec.presence.enabled on RelayChannel {}",
            governed.declared_by
        )));
    }
    Ok((channel, governed))
}
