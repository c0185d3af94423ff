//! The send stream's bookkeeping at Redis, for one loop: its consumer group, reads, entries
//! another consumer abandoned taken over, this consumer's own pending entries retried, and
//! entries that keep failing moved to the dead letters.

use fred::prelude::*;
use shared::ApiError;

use super::{
    entries::{parse_read, StreamEntry},
    SendWorker,
};

impl SendWorker {
    pub(super) async fn ensure_group(&self) -> Result<(), Error> {
        let created: Result<(), Error> = self
            .reader
            .xgroup_create(self.stream.clone(), self.keys.send_group(), "0", true)
            .await;
        match created {
            Err(e) if !e.details().contains("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    pub(super) async fn read(&self, from: &str, count: u64) -> Result<Vec<StreamEntry>, ApiError> {
        let block = if from == ">" { Some(1000) } else { None };
        let response: Value = self
            .reader
            .xreadgroup(
                self.keys.send_group(),
                &self.consumer,
                Some(count),
                block,
                false,
                self.stream.clone(),
                from,
            )
            .await?;
        Ok(parse_read(response))
    }

    /// Takes over entries another consumer left pending for `min_idle_ms` (it probably died),
    /// all of them (page after page); they are this consumer's pending entries now, which it
    /// processes next. Returns how many.
    pub(super) async fn claim_abandoned(&self, min_idle_ms: u64) -> Result<usize, ApiError> {
        let mut cursor = "0-0".to_owned();
        let mut claimed = 0;
        loop {
            let response: Value = self
                .reader
                .xautoclaim(
                    self.stream.clone(),
                    self.keys.send_group(),
                    &self.consumer,
                    min_idle_ms,
                    cursor.as_str(),
                    Some(self.config.batch_size),
                    true,
                )
                .await?;
            let Value::Array(parts) = response else {
                break;
            };
            let mut parts = parts.into_iter();
            let next = parts.next().and_then(|v| v.as_string());
            if let Some(Value::Array(ids)) = parts.next() {
                claimed += ids.len();
            }
            match next {
                Some(next) if next != "0-0" => cursor = next,
                _ => break,
            }
        }
        if claimed > 0 {
            metrics::counter!("chat_send_entries_claimed_total").increment(claimed as u64);
            tracing::info!(count = claimed, "claimed abandoned send entries");
        }
        Ok(claimed)
    }

    /// This consumer's pending entries, at most `count`, with how often each was delivered.
    async fn own_pending(&self, count: u64) -> Result<Vec<(String, u64)>, ApiError> {
        let rows: Vec<(String, String, u64, u64)> = self
            .reader
            .xpending(
                self.stream.clone(),
                self.keys.send_group(),
                ("-", "+", count, self.consumer.as_str()),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, _, _, deliveries)| (id, deliveries))
            .collect())
    }

    /// Processes this consumer's pending entries again (after a failure or a claim): those
    /// delivered `max_deliveries` times go to the dead letters; the rest are read again and
    /// processed, as a batch when they were claimed, one entry at a time after a failure, so
    /// an entry that keeps failing holds up only itself. Returns the entries read and the
    /// commands they held; zero entries when nothing is pending.
    pub(super) async fn retry_pending(
        &self,
        count: u64,
        isolate: bool,
    ) -> Result<(usize, usize), ApiError> {
        let pending = self.own_pending(count).await?;
        if pending.is_empty() {
            return Ok((0, 0));
        }
        let (exhausted, retry): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|(_, deliveries)| *deliveries >= self.config.max_deliveries);
        for (id, deliveries) in &exhausted {
            self.dead_letter(id, *deliveries).await?;
        }
        if retry.is_empty() {
            return Ok((exhausted.len(), 0));
        }
        let entries = self.read("0", count).await?;
        let read = entries.len().max(exhausted.len());
        if !isolate {
            return Ok((read, self.process(entries).await?));
        }
        let mut commands = 0;
        let mut failed = None;
        for entry in entries {
            match self.process(vec![entry]).await {
                Ok(n) => commands += n,
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok((read, commands)),
        }
    }

    /// Moves one entry to the dead-letter stream: its fields as they were, plus `entry` (its
    /// id), `deliveries` and `consumer`; then acknowledges and deletes it.
    async fn dead_letter(&self, id: &str, deliveries: u64) -> Result<(), ApiError> {
        let stream = self.stream.clone();
        let found: Vec<StreamEntry> = self.reader.xrange(&stream, id, id, Some(1)).await?;
        let mut fields: Vec<(String, Vec<u8>)> = found
            .into_iter()
            .next()
            .map(|(_, f)| f.into_iter().collect())
            .unwrap_or_default();
        fields.push(("entry".into(), id.as_bytes().to_vec()));
        fields.push(("deliveries".into(), deliveries.to_string().into_bytes()));
        fields.push(("consumer".into(), self.consumer.clone().into_bytes()));
        let _: String = self
            .reader
            .xadd(self.keys.send_dead_letters(), false, None, "*", fields)
            .await?;
        let _: i64 = self
            .reader
            .xack(&stream, self.keys.send_group(), id)
            .await?;
        let _: i64 = self.reader.xdel(&stream, id).await?;
        metrics::counter!("chat_send_dead_letters_total").increment(1);
        tracing::error!(
            entry = %id,
            deliveries,
            dead_letters = %self.keys.send_dead_letters(),
            "a send entry kept failing and was moved to the dead letters"
        );
        Ok(())
    }
}
