//! History: one page of a channel's history, oldest first.

use std::time::Duration;

use tonic::Request;

use crate::Relay;
use crate::error::{Error, Result};
use crate::proto::{HistoryRequest, HistoryResponse};
use crate::store::{After, Read};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub async fn history(relay: &Relay, req: Request<HistoryRequest>) -> Result<HistoryResponse> {
    let user = relay.authenticate(&req).await?.user;
    let req = req.into_inner();
    let channel = super::channel_id(&req.channelid)?;
    let cursor = super::cursor(req.cursor.as_ref())?;
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => {
            return Err(Error::InvalidArgument(format!("limit {n} is over the maximum of {MAX_LIMIT}")));
        }
        n => n,
    } as usize;
    let governed = relay.settings.get(&channel).await?;
    if !governed.settings.access.subscribe.allows(&user.id, &channel) {
        return Err(Error::PermissionDenied(format!("user {} may not read {channel}", user.id)));
    }
    let max_age = Duration::from_secs(governed.settings.history.max_age_secs);
    let ch = channel.as_str();
    let (page, recovered) = match cursor {
        None => (relay.store.read(ch, Read::Latest, limit, max_age).await?, true),
        Some(resume) => {
            let page = relay.store.read(ch, Read::After(resume.after), limit, max_age).await?;
            let recovered = page.covers(resume.after, &resume.epoch);
            if page.lost_since(resume.after, &resume.epoch) {
                // History was lost since the cursor: the page starts from the current epoch's beginning.
                (relay.store.read(ch, Read::After(After::Seq(0)), limit, max_age).await?, false)
            } else {
                (page, recovered)
            }
        }
    };
    Ok(HistoryResponse {
        messages: page.messages.into_iter().map(Into::into).collect(),
        more: page.more,
        epoch: page.epoch,
        recovered,
    })
}
