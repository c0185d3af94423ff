//! The node's channels: for each one it is subscribed to, the local connections it feeds and
//! the order of each conversation it carries. A channel exists while at least one local
//! connection needs it; [`Channels::join`] and [`Channels::leave`] say when it appears and
//! when it empties, which is when the node subscribes and unsubscribes.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use shared::chat::Message;
use uuid::Uuid;

use super::ordering::Order;
use crate::connection::state::{ConnId, ConnShared};

/// A message waiting in a stream under repair.
#[derive(Debug)]
pub struct Pending {
    pub message: Message,
    pub published_at_us: i64,
    pub repaired: bool,
}

/// A subscribed channel and who needs it.
pub struct Channel {
    conns: HashSet<ConnId>,
    /// The same connections as one shared list, built on the first message after a change:
    /// a message is handed to its receivers without a list (and a reference) per message.
    snapshot: Option<Arc<[Arc<ConnShared>]>>,
    /// Whose channel it is, for user channels.
    pub user: Option<Uuid>,
    /// The order of each conversation it carries; absent until known.
    pub streams: HashMap<Uuid, Order<Pending>>,
}

impl Channel {
    fn new(user: Option<Uuid>) -> Self {
        Self {
            conns: HashSet::new(),
            snapshot: None,
            user,
            streams: HashMap::new(),
        }
    }

    pub fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.iter().copied()
    }

    /// Its receiving connections, from the snapshot.
    pub fn receivers(
        &mut self,
        conns: &HashMap<ConnId, Arc<ConnShared>>,
    ) -> Arc<[Arc<ConnShared>]> {
        self.snapshot
            .get_or_insert_with(|| {
                self.conns
                    .iter()
                    .filter_map(|id| conns.get(id).cloned())
                    .collect()
            })
            .clone()
    }
}

#[derive(Default)]
pub struct Channels {
    /// Boxed: a map's table has up to twice as many slots as entries, and every user's own
    /// channel is an entry; a pointer per slot, not a channel, keeps the empty ones small.
    map: HashMap<String, Box<Channel>>,
}

impl Channels {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<&Channel> {
        self.map.get(name).map(|c| &**c)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Channel> {
        self.map.get_mut(name).map(|c| &mut **c)
    }

    /// Whose user channel `name` is, if it is one.
    pub fn user_of(&self, name: &str) -> Option<Uuid> {
        self.map.get(name).and_then(|c| c.user)
    }

    /// Adds `conn` to `name`; true when the channel is new to the node (to subscribe).
    pub fn join(&mut self, name: &str, conn: ConnId, user: Option<Uuid>) -> bool {
        let (channel, new) = match self.map.get_mut(name) {
            Some(c) => (c, false),
            None => (
                self.map
                    .entry(name.to_owned())
                    .or_insert_with(|| Box::new(Channel::new(user))),
                true,
            ),
        };
        if channel.conns.insert(conn) {
            channel.snapshot = None;
        }
        new
    }

    /// Takes `conns` off `name`; true when it no longer feeds anyone and is gone (to
    /// unsubscribe).
    pub fn leave(&mut self, name: &str, conns: &[ConnId]) -> bool {
        let Some(channel) = self.map.get_mut(name) else {
            return false;
        };
        for conn in conns {
            if channel.conns.remove(conn) {
                channel.snapshot = None;
            }
        }
        if channel.conns.is_empty() {
            self.map.remove(name);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::Encoding;

    fn conn(id: ConnId) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(
            id,
            Uuid::new_v4(),
            format!("s{id}"),
            Encoding::Json,
            8,
            Duration::from_secs(1),
        ))
    }

    #[test]
    fn a_channel_is_new_once_and_gone_with_its_last_connection() {
        let mut channels = Channels::default();
        assert!(channels.join("c", 1, None));
        assert!(!channels.join("c", 2, None));
        assert!(!channels.join("c", 2, None));
        assert_eq!(channels.len(), 1);
        assert!(!channels.leave("c", &[1]));
        assert!(channels.leave("c", &[2]));
        assert_eq!(channels.len(), 0);
        assert!(!channels.leave("c", &[2]), "leaving twice is nothing");
    }

    #[test]
    fn the_receiver_list_follows_joins_and_leaves() {
        let conns: HashMap<ConnId, Arc<ConnShared>> = (1..=3).map(|id| (id, conn(id))).collect();
        let mut channels = Channels::default();
        channels.join("c", 1, None);
        channels.join("c", 2, None);
        let ids = |channels: &mut Channels| {
            let mut ids: Vec<ConnId> = channels
                .get_mut("c")
                .map(|c| c.receivers(&conns).iter().map(|c| c.id).collect())
                .unwrap_or_default();
            ids.sort_unstable();
            ids
        };
        assert_eq!(ids(&mut channels), vec![1, 2]);
        channels.join("c", 3, None);
        assert_eq!(ids(&mut channels), vec![1, 2, 3]);
        channels.leave("c", &[1, 3]);
        assert_eq!(ids(&mut channels), vec![2]);
    }

    #[test]
    fn a_user_channel_knows_its_user() {
        let user = Uuid::new_v4();
        let mut channels = Channels::default();
        channels.join("u", 1, Some(user));
        channels.join("r", 1, None);
        assert_eq!(channels.user_of("u"), Some(user));
        assert_eq!(channels.user_of("r"), None);
        assert_eq!(channels.user_of("missing"), None);
    }
}
