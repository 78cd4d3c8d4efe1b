//! Reads: one node's records, a linearizable read from whichever node answers, and a
//! subscription to committed records.

use futures::StreamExt;

use super::{ClientError, KeelClient};
use crate::pb::client as api;
use crate::wire_error::WriteErrorKind;

impl KeelClient {
    /// Reads from `from_offset` on the node at `addr` (linearizable or local).
    ///
    /// # Errors
    /// The node's error.
    pub async fn read_at(
        &mut self,
        addr: &str,
        from_offset: u64,
        max_records: u32,
        linearizable: bool,
    ) -> Result<api::ReadResponse, ClientError> {
        let mut client = self.channel(addr)?;
        let response = client
            .read(api::ReadRequest {
                from_offset,
                max_records,
                linearizable,
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Reads from `from_offset`, linearizably, from whichever node answers.
    ///
    /// # Errors
    /// [`ClientError::GaveUp`] when no node could serve in time.
    pub async fn read(
        &mut self,
        from_offset: u64,
        max_records: u32,
    ) -> Result<api::ReadResponse, ClientError> {
        self.on_leader(
            WriteErrorKind::is_safe_to_retry,
            |_, mut client| async move {
                client
                    .read(api::ReadRequest {
                        from_offset,
                        max_records,
                        linearizable: true,
                    })
                    .await
                    .map(tonic::Response::into_inner)
            },
        )
        .await
    }

    /// Streams committed records from `from_offset` on the node at `addr`, calling `each`
    /// until it returns `false` or the stream ends.
    ///
    /// # Errors
    /// The node's error.
    pub async fn subscribe(
        &mut self,
        addr: &str,
        from_offset: u64,
        mut each: impl FnMut(api::Record) -> bool,
    ) -> Result<(), ClientError> {
        let mut stream = self
            .channel(addr)?
            .subscribe(api::SubscribeRequest { from_offset })
            .await?
            .into_inner();
        while let Some(record) = stream.next().await {
            if !each(record?) {
                break;
            }
        }
        Ok(())
    }
}
