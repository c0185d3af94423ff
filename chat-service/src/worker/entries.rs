//! The send stream's entries as the worker reads them: what an `XREADGROUP` answer holds,
//! the commands in each entry (one, or the several a gateway gathered), how many entries to
//! read next, and where a read is cut into batches.

use std::collections::HashMap;

use fred::prelude::*;
use shared::chat::{decode, SendCommand};

/// The field of a stream entry that holds several (gateways gather the sends that arrive while
/// their previous `XADD` is under way).
pub use shared::chat::SEND_BATCH_FIELD as BATCH_FIELD;
/// The field of a stream entry that holds one MessagePack-encoded [`SendCommand`].
pub use shared::chat::SEND_FIELD as COMMAND_FIELD;

/// A stream entry: its id and fields.
pub(super) type StreamEntry = (String, HashMap<String, Vec<u8>>);

/// How many entries to read next so that a read holds about `batch_size` commands, given that
/// the last `read` entries held `commands`; `None` when the last read tells nothing.
pub(super) fn entries_per_read(batch_size: u64, read: usize, commands: usize) -> Option<u64> {
    if read == 0 || commands == 0 {
        return None;
    }
    let per_entry = (commands as f64 / read as f64).max(1.0);
    Some(((batch_size as f64 / per_entry).round() as u64).clamp(1, batch_size.max(1)))
}

/// Where the batches end among entries holding `sizes` commands each: every batch holds whole
/// entries, at least one, and no more than `batch_size` commands unless its one entry does.
/// A read may bring far more than a batch's worth (the next read is sized from the last one's
/// entries, and gateways' entries grow while the stream is backed up): persisted as one batch,
/// the whole in-flight window would move in one wave, the gateways and clients idle while it
/// is persisted and the worker idle while they answer; as batches, the first one's
/// acknowledgements go out while the next is persisted.
pub(super) fn batch_ends(sizes: &[usize], batch_size: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut held = 0;
    for (i, &size) in sizes.iter().enumerate() {
        if held > 0 && held + size > batch_size {
            ends.push(i);
            held = 0;
        }
        held += size;
    }
    if !sizes.is_empty() {
        ends.push(sizes.len());
    }
    ends
}

/// The commands of one stream entry: one (`c`), or the several a gateway gathered (`b`); an
/// entry that cannot be decoded counts as one command nobody can be told about.
pub(super) fn decode_entry(
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
) -> Vec<Option<SendCommand>> {
    let decoded = if let Some(bytes) = fields.get(COMMAND_FIELD) {
        decode::<SendCommand>(bytes).map(|c| vec![Some(c)])
    } else if let Some(bytes) = fields.get(BATCH_FIELD) {
        decode::<Vec<SendCommand>>(bytes).map(|list| list.into_iter().map(Some).collect())
    } else {
        Ok(vec![None])
    };
    decoded.unwrap_or_else(|e| {
        tracing::warn!(entry = %id, error = %e, "undecodable send entry dropped");
        vec![None]
    })
}

/// Entries of an `XREADGROUP` answer (`[[stream, entries]]`, a map in RESP3, or nil).
pub(super) fn parse_read(response: Value) -> Vec<StreamEntry> {
    match response {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => parse_entries(pair.swap_remove(1)),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(map) => map.inner().into_values().flat_map(parse_entries).collect(),
        _ => Vec::new(),
    }
}

/// `[[id, [field, value, ...]], ...]`; an entry deleted meanwhile has nil fields and comes
/// back empty (it is acknowledged and skipped).
fn parse_entries(entries: Value) -> Vec<StreamEntry> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = parts.pop()?.as_string()?;
            let mut map = HashMap::new();
            if let Value::Array(flat) = fields {
                for pair in flat.chunks(2) {
                    if let [k, v] = pair {
                        if let (Some(k), Some(v)) = (k.as_string(), v.as_bytes()) {
                            map.insert(k, v.to_vec());
                        }
                    }
                }
            }
            Some((id, map))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::chat::{encode, ChatType, MessageType};
    use uuid::Uuid;

    #[test]
    fn a_read_is_persisted_as_batches_of_whole_entries() {
        assert_eq!(batch_ends(&[], 512), Vec::<usize>::new());
        assert_eq!(batch_ends(&[16], 512), vec![1]);
        assert_eq!(batch_ends(&[200; 8], 512), vec![2, 4, 6, 8]);
        assert_eq!(batch_ends(&[256, 256, 1], 512), vec![2, 3]);
        // An entry larger than a batch is a batch of its own.
        assert_eq!(batch_ends(&[10, 5000, 10], 512), vec![1, 2, 3]);
        // Entries that hold nothing decodable still count (each is one command).
        assert_eq!(batch_ends(&[1, 1, 1], 2), vec![2, 3]);
    }

    #[test]
    fn reads_aim_at_batch_size_commands() {
        assert_eq!(entries_per_read(512, 512, 512), Some(512));
        assert_eq!(entries_per_read(512, 10, 640), Some(8));
        assert_eq!(entries_per_read(512, 1, 5000), Some(1));
        assert_eq!(entries_per_read(512, 0, 0), None);
        assert_eq!(entries_per_read(512, 3, 0), None);
    }

    #[test]
    fn entries_hold_one_command_or_several() -> Result<(), Box<dyn std::error::Error>> {
        let command = SendCommand {
            user_id: Uuid::nil(),
            session_id: "s".into(),
            client_id: "c".into(),
            chat_type: ChatType::Room,
            chat_id: Uuid::nil(),
            content: "hi".into(),
            message_type: MessageType::Text,
            reply_to_id: None,
            attachment_id: None,
            traceparent: None,
        };
        let one = HashMap::from([(COMMAND_FIELD.to_owned(), encode(&command)?)]);
        assert_eq!(decode_entry("1-0", &one), vec![Some(command.clone())]);
        let list = vec![command.clone(), command.clone(), command.clone()];
        let many = HashMap::from([(BATCH_FIELD.to_owned(), encode(&list)?)]);
        assert_eq!(decode_entry("2-0", &many).len(), 3);
        let garbage = HashMap::from([(BATCH_FIELD.to_owned(), b"nope".to_vec())]);
        assert_eq!(decode_entry("3-0", &garbage), vec![None]);
        assert_eq!(decode_entry("4-0", &HashMap::new()), vec![None]);
        Ok(())
    }
}
