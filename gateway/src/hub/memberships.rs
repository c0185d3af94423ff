//! The conversations one user is in, as the node keeps them for as long as the user is
//! connected: small, because every connected user has a list (30 entries is common).
//!
//! A room's or group's conversation has the room's or group's own id (chat-service creates
//! them so), so such an entry is that id and its type: 17 bytes. Private chats (and, should the
//! ids ever differ, anything else) keep the conversation, the chat id and the `seq` the user's
//! list was read at, which is where the node's order for the chat starts when its first message
//! arrives (see [`super::Hub`]): 41 bytes, the `seq` stored as bytes so that nothing pads the
//! entry to 48. The wire's [`Membership`] takes 48 bytes whatever the kind.

use shared::{chat::ChatType, internal::Membership};
use uuid::Uuid;

/// A conversation whose id is not its chat id: a private chat, whose chat id is the other user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Other {
    conversation: Uuid,
    chat_id: Uuid,
    chat_type: ChatType,
    last_seq: [u8; 8],
}

#[derive(Debug, Default)]
pub struct Memberships {
    /// Rooms and groups: `(id, kind)`, the id being both the chat's and its conversation's.
    own_id: Vec<(Uuid, ChatType)>,
    others: Vec<Other>,
}

impl Memberships {
    /// Adds `m` unless it is there already (then the first `last_seq` stays).
    pub fn add(&mut self, m: &Membership) {
        if self.contains(m.conversation_id) {
            return;
        }
        if m.chat_type != ChatType::Private && m.chat_id == m.conversation_id {
            self.own_id.push((m.conversation_id, m.chat_type));
        } else {
            self.others.push(Other {
                conversation: m.conversation_id,
                chat_id: m.chat_id,
                chat_type: m.chat_type,
                last_seq: m.last_seq.to_ne_bytes(),
            });
        }
    }

    pub fn contains(&self, conversation: Uuid) -> bool {
        self.own_id.iter().any(|(id, _)| *id == conversation)
            || self.others.iter().any(|o| o.conversation == conversation)
    }

    pub fn remove(&mut self, conversation: Uuid) {
        self.own_id.retain(|(id, _)| *id != conversation);
        self.others.retain(|o| o.conversation != conversation);
    }

    /// Gives back what the lists hold beyond their entries.
    pub fn shrink_to_fit(&mut self) {
        self.own_id.shrink_to_fit();
        self.others.shrink_to_fit();
    }

    /// The conversation of the chat `(chat_type, chat_id)`, if the user is in it.
    pub fn conversation(&self, chat_type: ChatType, chat_id: Uuid) -> Option<Uuid> {
        if self
            .own_id
            .iter()
            .any(|&(id, kind)| id == chat_id && kind == chat_type)
        {
            return Some(chat_id);
        }
        self.others
            .iter()
            .find(|o| o.chat_id == chat_id && o.chat_type == chat_type)
            .map(|o| o.conversation)
    }

    /// The conversations that have a channel of their own (rooms and groups).
    pub fn with_channel(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.own_id.iter().map(|(id, _)| *id).chain(
            self.others
                .iter()
                .filter(|o| o.chat_type != ChatType::Private)
                .map(|o| o.conversation),
        )
    }

    /// The private chats, each with the `seq` the user's list was read at.
    pub fn private(&self) -> impl Iterator<Item = (Uuid, i64)> + '_ {
        self.others
            .iter()
            .filter(|o| o.chat_type == ChatType::Private)
            .map(|o| (o.conversation, i64::from_ne_bytes(o.last_seq)))
    }

    /// The `seq` the user's list was read at for the private chat `conversation`.
    pub fn private_start(&self, conversation: Uuid) -> Option<i64> {
        self.private()
            .find(|(c, _)| *c == conversation)
            .map(|(_, seq)| seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conversation: Uuid, chat_type: ChatType, chat_id: Uuid, seq: i64) -> Membership {
        Membership {
            conversation_id: conversation,
            chat_type,
            chat_id,
            last_seq: seq,
        }
    }

    #[test]
    fn entries_are_small() {
        assert_eq!(std::mem::size_of::<(Uuid, ChatType)>(), 17);
        assert_eq!(std::mem::size_of::<Other>(), 41);
    }

    #[test]
    fn chats_map_to_their_conversations() {
        let (room, group, private, peer) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let mut m = Memberships::default();
        m.add(&member(room, ChatType::Room, room, 3));
        m.add(&member(group, ChatType::Group, group, 4));
        m.add(&member(private, ChatType::Private, peer, 7));
        assert_eq!(m.conversation(ChatType::Room, room), Some(room));
        assert_eq!(m.conversation(ChatType::Group, group), Some(group));
        assert_eq!(m.conversation(ChatType::Private, peer), Some(private));
        assert_eq!(m.conversation(ChatType::Group, room), None, "kind matters");
        assert_eq!(m.conversation(ChatType::Private, private), None);
        let mut channels: Vec<Uuid> = m.with_channel().collect();
        channels.sort();
        let mut want = vec![room, group];
        want.sort();
        assert_eq!(channels, want);
        assert_eq!(m.private().collect::<Vec<_>>(), vec![(private, 7)]);
        assert_eq!(m.private_start(private), Some(7));
        assert_eq!(m.private_start(room), None);
    }

    #[test]
    fn the_first_entry_stays_and_removal_is_by_conversation() {
        let (private, peer) = (Uuid::new_v4(), Uuid::new_v4());
        let mut m = Memberships::default();
        m.add(&member(private, ChatType::Private, peer, 7));
        m.add(&member(private, ChatType::Private, peer, 9));
        assert_eq!(m.private().collect::<Vec<_>>(), vec![(private, 7)]);
        m.remove(private);
        assert!(!m.contains(private));
        assert_eq!(m.conversation(ChatType::Private, peer), None);
    }

    #[test]
    fn a_room_whose_ids_differ_is_still_found() {
        let (conversation, room) = (Uuid::new_v4(), Uuid::new_v4());
        let mut m = Memberships::default();
        m.add(&member(conversation, ChatType::Room, room, 0));
        assert_eq!(m.conversation(ChatType::Room, room), Some(conversation));
        assert_eq!(m.with_channel().collect::<Vec<_>>(), vec![conversation]);
        assert_eq!(m.private().count(), 0);
    }
}
