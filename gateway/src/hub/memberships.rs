//! The conversations one user is in, as the node keeps them for as long as the user is
//! connected: small, because every connected user has a list (30 entries is common).
//!
//! A room's or group's conversation has the room's or group's own id (chat-service creates
//! them so), so such an entry is that id and its type: 17 bytes. Private chats (and, should the
//! ids ever differ, anything else) keep the conversation, the chat id and the `seq` the user's
//! list was read at, which is where the node's order for the chat starts when its first message
//! arrives (see [`super::Hub`]): 41 bytes, the `seq` stored as bytes so that nothing pads the
//! entry to 48. The wire's [`Membership`] takes 48 bytes whatever the kind.
//!
//! Both lists are kept sorted by conversation, so that connecting a user whose list is long
//! (a support account with tens of thousands of private chats) costs a sort, and each lookup
//! by conversation a binary search, where a scan per entry made it quadratic.

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

impl Other {
    fn of(m: &Membership) -> Self {
        Self {
            conversation: m.conversation_id,
            chat_id: m.chat_id,
            chat_type: m.chat_type,
            last_seq: m.last_seq.to_ne_bytes(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Memberships {
    /// Rooms and groups: `(id, kind)`, the id being both the chat's and its conversation's;
    /// sorted by id.
    own_id: Vec<(Uuid, ChatType)>,
    /// Sorted by conversation.
    others: Vec<Other>,
}

impl Memberships {
    /// Adds `m` unless it is there already (then the first `last_seq` stays).
    pub fn add(&mut self, m: &Membership) {
        if m.chat_type != ChatType::Private && m.chat_id == m.conversation_id {
            if let Err(at) = self.own_index(m.conversation_id) {
                if self.other_index(m.conversation_id).is_err() {
                    self.own_id.insert(at, (m.conversation_id, m.chat_type));
                }
            }
        } else if let Err(at) = self.other_index(m.conversation_id) {
            if self.own_index(m.conversation_id).is_err() {
                self.others.insert(at, Other::of(m));
            }
        }
    }

    /// Adds each of `ms` as [`Self::add`] does, in one sort rather than one insertion each: a
    /// connecting user's whole list (thousands of private chats, for some) costs
    /// O(n log n), not O(n²).
    pub fn extend(&mut self, ms: &[Membership]) {
        for m in ms {
            if m.chat_type != ChatType::Private && m.chat_id == m.conversation_id {
                self.own_id.push((m.conversation_id, m.chat_type));
            } else {
                self.others.push(Other::of(m));
            }
        }
        // Stable: of equal entries the earliest stays, so what was known before wins.
        self.own_id.sort_by_key(|(id, _)| *id);
        self.own_id.dedup_by_key(|(id, _)| *id);
        self.others.sort_by_key(|o| o.conversation);
        self.others.dedup_by_key(|o| o.conversation);
    }

    fn own_index(&self, conversation: Uuid) -> Result<usize, usize> {
        self.own_id
            .binary_search_by_key(&conversation, |(id, _)| *id)
    }

    fn other_index(&self, conversation: Uuid) -> Result<usize, usize> {
        self.others
            .binary_search_by_key(&conversation, |o| o.conversation)
    }

    #[cfg(test)]
    fn contains(&self, conversation: Uuid) -> bool {
        self.own_index(conversation).is_ok() || self.other_index(conversation).is_ok()
    }

    pub fn remove(&mut self, conversation: Uuid) {
        if let Ok(i) = self.own_index(conversation) {
            self.own_id.remove(i);
        }
        if let Ok(i) = self.other_index(conversation) {
            self.others.remove(i);
        }
    }

    /// Gives back what the lists hold beyond their entries.
    pub fn shrink_to_fit(&mut self) {
        self.own_id.shrink_to_fit();
        self.others.shrink_to_fit();
    }

    /// The conversation of the chat `(chat_type, chat_id)`, if the user is in it. A private
    /// chat is found by its other user, in a scan (the list is sorted by conversation): this
    /// serves `typing` and `mark_read`, which are rate-limited per user.
    pub fn conversation(&self, chat_type: ChatType, chat_id: Uuid) -> Option<Uuid> {
        if let Ok(i) = self.own_index(chat_id) {
            if self.own_id[i].1 == chat_type {
                return Some(chat_id);
            }
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
        let o = &self.others[self.other_index(conversation).ok()?];
        (o.chat_type == ChatType::Private).then(|| i64::from_ne_bytes(o.last_seq))
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
    fn a_long_list_added_at_once_keeps_what_was_known_and_finds_every_entry() {
        let known = Uuid::new_v4();
        let mut m = Memberships::default();
        m.add(&member(known, ChatType::Private, Uuid::new_v4(), 5));
        let peers: Vec<Uuid> = (0..5000).map(|_| Uuid::new_v4()).collect();
        let mut list: Vec<Membership> = peers
            .iter()
            .map(|&p| member(Uuid::new_v4(), ChatType::Private, p, 9))
            .collect();
        // The one known already, again with a later seq, and one listed twice.
        list.push(member(known, ChatType::Private, Uuid::new_v4(), 8));
        list.push(list[0].clone());
        let room = Uuid::new_v4();
        list.push(member(room, ChatType::Room, room, 1));
        list.push(member(room, ChatType::Room, room, 2));
        m.extend(&list);
        assert_eq!(m.private().count(), 5001);
        assert_eq!(m.with_channel().collect::<Vec<_>>(), vec![room]);
        assert_eq!(m.private_start(known), Some(5), "the first seq stays");
        for (entry, peer) in list.iter().zip(&peers) {
            assert!(m.contains(entry.conversation_id));
            assert_eq!(m.private_start(entry.conversation_id), Some(9));
            assert_eq!(
                m.conversation(ChatType::Private, *peer),
                Some(entry.conversation_id)
            );
        }
        assert_eq!(m.private_start(room), None, "not a private chat");
        // Single additions and removals keep the order lookups rely on.
        let late = Uuid::new_v4();
        m.add(&member(late, ChatType::Group, late, 0));
        m.remove(list[100].conversation_id);
        assert!(!m.contains(list[100].conversation_id));
        assert!(m.contains(late) && m.contains(list[101].conversation_id));
        assert_eq!(m.conversation(ChatType::Group, late), Some(late));
        assert_eq!(m.private().count(), 5000);
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
