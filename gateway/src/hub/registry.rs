//! The node's connections and what it knows of their users: the conversations each user is in
//! (which are also the channels the user's connections are on, so a disconnect looks only at
//! its own channels), their contacts and whom they blocked.

use std::{collections::HashMap, sync::Arc};

use shared::{
    chat::{ChatType, Message},
    internal::{Membership, UserConversations},
    keys::Keys,
};
use uuid::Uuid;

use super::memberships::Memberships;
use crate::connection::state::{ConnId, ConnShared};

/// Why a connection was not registered.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NodeFull,
    UserFull,
}

/// What the node knows about one of its users.
#[derive(Default)]
pub struct UserEntry {
    pub conns: Vec<ConnId>,
    /// The user's conversations (see [`Memberships`] for how they are looked up).
    pub conversations: Memberships,
    /// Users this user blocked: their typing and presence are not passed on.
    pub blocked: Vec<Uuid>,
    pub contacts: Vec<Uuid>,
}

impl UserEntry {
    /// Adds the private chat `conv` that `message` belongs to, seen from `user`, and its other
    /// user as a contact (they get each other's presence from now on).
    pub fn learn_private(&mut self, conv: Uuid, message: &Message, user: Uuid) {
        let Some(peer) = message.chat_id_for(user) else {
            return;
        };
        self.conversations.add(&Membership {
            conversation_id: conv,
            chat_type: ChatType::Private,
            chat_id: peer,
            last_seq: 0,
        });
        if !self.contacts.contains(&peer) {
            self.contacts.push(peer);
        }
    }

    /// The channels the user's connections are on: their own and their rooms' and groups'.
    pub fn channels(&self, user: Uuid, keys: &Keys) -> Vec<String> {
        let mut names = vec![keys.user_channel(user)];
        names.extend(
            self.conversations
                .with_channel()
                .map(|id| keys.conversation_channel(id)),
        );
        names
    }
}

pub struct Registry {
    pub conns: HashMap<ConnId, Arc<ConnShared>>,
    /// Boxed, as the channels are (a table slot per entry or more, for every connected user).
    pub users: HashMap<Uuid, Box<UserEntry>>,
    max_connections: usize,
    max_per_user: usize,
}

impl Registry {
    pub fn new(max_connections: usize, max_per_user: usize) -> Self {
        Self {
            conns: HashMap::new(),
            users: HashMap::new(),
            max_connections,
            max_per_user,
        }
    }

    /// Checks the node and per-user caps.
    pub fn admit(&self, user: Uuid) -> Result<(), Refusal> {
        if self.conns.len() >= self.max_connections {
            return Err(Refusal::NodeFull);
        }
        if self
            .users
            .get(&user)
            .is_some_and(|u| u.conns.len() >= self.max_per_user)
        {
            return Err(Refusal::UserFull);
        }
        Ok(())
    }

    /// Adds a connection and what its user belongs to; true when it is the user's first.
    pub fn add(
        &mut self,
        conn: Arc<ConnShared>,
        info: &UserConversations,
    ) -> Result<bool, Refusal> {
        self.admit(conn.user)?;
        let entry = self.users.entry(conn.user).or_default();
        let first = entry.conns.is_empty();
        entry.conns.push(conn.id);
        // Added to, never replaced: a conversation an earlier connection of the user joined
        // (a membership event newer than this connection's list) stays known, so that
        // `remove` finds every channel the user's connections are on.
        entry.conversations.extend(&info.conversations);
        entry.conversations.shrink_to_fit();
        entry.contacts.clone_from(&info.contacts);
        entry.blocked.clone_from(&info.blocked);
        self.conns.insert(conn.id, conn);
        Ok(first)
    }

    /// Removes a connection; returns the channels it was on and whether it was its user's last.
    pub fn remove(&mut self, conn: &ConnShared, keys: &Keys) -> (Vec<String>, bool) {
        self.conns.remove(&conn.id);
        let Some(entry) = self.users.get_mut(&conn.user) else {
            return (vec![keys.user_channel(conn.user)], false);
        };
        entry.conns.retain(|c| *c != conn.id);
        let channels = entry.channels(conn.user, keys);
        let last = entry.conns.is_empty();
        if last {
            self.users.remove(&conn.user);
        }
        (channels, last)
    }

    /// The local connections of `user`.
    pub fn conns_of(&self, user: Uuid) -> Vec<ConnId> {
        self.users
            .get(&user)
            .map(|u| u.conns.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::Encoding;

    fn conn(id: ConnId, user: Uuid) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(
            id,
            user,
            format!("s{id}"),
            Encoding::Json,
            8,
            Duration::from_secs(1),
        ))
    }

    fn member_of(rooms: &[Uuid]) -> UserConversations {
        UserConversations {
            conversations: rooms
                .iter()
                .map(|r| Membership {
                    conversation_id: *r,
                    chat_type: ChatType::Room,
                    chat_id: *r,
                    last_seq: 0,
                })
                .collect(),
            contacts: Vec::new(),
            blocked: Vec::new(),
        }
    }

    #[test]
    fn caps_hold_per_node_and_per_user() {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut r = Registry::new(3, 2);
        let none = member_of(&[]);
        assert_eq!(r.add(conn(1, alice), &none), Ok(true));
        assert_eq!(r.add(conn(2, alice), &none), Ok(false));
        assert_eq!(r.add(conn(3, alice), &none), Err(Refusal::UserFull));
        assert_eq!(r.add(conn(3, bob), &none), Ok(true));
        assert_eq!(r.admit(Uuid::new_v4()), Err(Refusal::NodeFull));
    }

    #[test]
    fn a_disconnect_names_only_its_own_channels() {
        let keys = Keys::new("t:");
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let (room_a, room_b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut r = Registry::new(10, 10);
        let a1 = conn(1, alice);
        let a2 = conn(2, alice);
        r.add(a1.clone(), &member_of(&[room_a])).unwrap();
        r.add(a2.clone(), &member_of(&[room_a])).unwrap();
        r.add(conn(3, bob), &member_of(&[room_b])).unwrap();

        let (mut channels, last) = r.remove(&a1, &keys);
        channels.sort();
        let mut want = vec![keys.user_channel(alice), keys.conversation_channel(room_a)];
        want.sort();
        assert_eq!(channels, want);
        assert!(!last);
        let (_, last) = r.remove(&a2, &keys);
        assert!(last);
        assert!(!r.users.contains_key(&alice));
        assert_eq!(r.conns.len(), 1);
    }
}
