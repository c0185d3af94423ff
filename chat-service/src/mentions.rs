//! `@username`, `@room` and `@group` in message content, resolved when a message is stored:
//! the named users who are members of the conversation, and whether everyone was named (then,
//! in a conversation of at most [`MAX_NAMES`] members, every member is listed too).
//! A word counts as a mention when `@` starts it (start of text or after a character that
//! cannot be part of a username) and a username's characters (`A-Z a-z 0-9 _ . -`, 3–32) follow;
//! a trailing `.` or `-` (the end of a sentence) is not part of it.

use std::collections::{BTreeSet, HashMap};

use shared::chat::ChatType;
use sqlx::PgPool;
use uuid::Uuid;

/// The most users one message mentions: the first this many distinct names. Without a bound one
/// message of 4,000 characters named some 800, each a lookup when stored, a row of
/// `message_mentions` and a webhook recipient. `@room` / `@group` names everyone: their ids are
/// listed as well when the conversation has at most this many members; in a larger one the
/// message says `mentions_all` alone (thousands of ids in every copy of it, and a row each,
/// would cost more than the rest of the message).
pub const MAX_NAMES: usize = 50;

fn username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// What `content` names: lower-cased usernames, and whether it names everyone (`@room` in a
/// room, `@group` in a group).
pub fn parse(content: &str, chat_type: ChatType) -> (BTreeSet<String>, bool) {
    let mut names = BTreeSet::new();
    let mut everyone = false;
    let chars: Vec<char> = content.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts =
            chars[i] == '@' && (i == 0 || !username_char(chars[i - 1]) && chars[i - 1] != '@');
        if !starts {
            i += 1;
            continue;
        }
        let mut end = i + 1;
        while end < chars.len() && username_char(chars[end]) {
            end += 1;
        }
        let mut word: String = chars[i + 1..end].iter().collect();
        while word.ends_with('.') || word.ends_with('-') {
            word.pop();
        }
        let word = word.to_ascii_lowercase();
        match (word.as_str(), chat_type) {
            ("room", ChatType::Room) | ("group", ChatType::Group) => everyone = true,
            _ if (3..=32).contains(&word.len()) && names.len() < MAX_NAMES => {
                names.insert(word);
            }
            _ => {}
        }
        i = end.max(i + 1);
    }
    (names, everyone)
}

/// One message's mentions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mentions {
    pub users: Vec<Uuid>,
    pub everyone: bool,
}

/// Resolves the mentions of each `(conversation, chat_type, content)`: one query for all the
/// names of all of them, and none when no content has an `@`.
pub async fn resolve(db: &PgPool, items: &[(Uuid, ChatType, &str)]) -> sqlx::Result<Vec<Mentions>> {
    let parsed: Vec<(BTreeSet<String>, bool)> = items
        .iter()
        .map(|(_, t, content)| {
            if content.contains('@') {
                parse(content, *t)
            } else {
                (BTreeSet::new(), false)
            }
        })
        .collect();
    let mut conversations = Vec::new();
    let mut names = Vec::new();
    for ((conversation, _, _), (wanted, _)) in items.iter().zip(&parsed) {
        for name in wanted {
            conversations.push(*conversation);
            names.push(name.clone());
        }
    }
    let everyone_in: Vec<Uuid> = items
        .iter()
        .zip(&parsed)
        .filter(|(_, (_, everyone))| *everyone)
        .map(|((conversation, _, _), _)| *conversation)
        .collect();
    let mut members: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    if !everyone_in.is_empty() {
        // Each conversation's members, for those with at most MAX_NAMES: no more than one
        // over the bound is read from any.
        let rows = sqlx::query!(
            r#"SELECT c.id AS "id!", s.members AS "members!"
               FROM unnest($1::uuid[]) AS c(id),
               LATERAL (SELECT array_agg(f.user_id ORDER BY f.user_id) AS members, count(*) AS n
                        FROM (SELECT user_id FROM conversation_members
                              WHERE conversation_id = c.id LIMIT $2 + 1) f) s
               WHERE s.n <= $2"#,
            &everyone_in,
            MAX_NAMES as i64
        )
        .fetch_all(db)
        .await?;
        members.extend(rows.into_iter().map(|r| (r.id, r.members)));
    }
    let mut found: HashMap<(Uuid, String), Uuid> = HashMap::new();
    if !names.is_empty() {
        let rows = sqlx::query!(
            r#"SELECT t.conversation_id AS "conversation_id!", t.name AS "name!", u.id
               FROM unnest($1::uuid[], $2::text[]) AS t(conversation_id, name)
               JOIN users u ON lower(u.username) = t.name
               JOIN conversation_members m
                 ON m.conversation_id = t.conversation_id AND m.user_id = u.id"#,
            &conversations,
            &names
        )
        .fetch_all(db)
        .await?;
        for r in rows {
            found.insert((r.conversation_id, r.name), r.id);
        }
    }
    Ok(items
        .iter()
        .zip(parsed)
        .map(|((conversation, _, _), (wanted, everyone))| {
            let mut users: Vec<Uuid> = wanted
                .into_iter()
                .filter_map(|name| found.get(&(*conversation, name)).copied())
                .collect();
            if let Some(all) = members.get(conversation).filter(|_| everyone) {
                users.extend(
                    all.iter()
                        .filter(|id| !users.contains(id))
                        .collect::<Vec<_>>(),
                );
            }
            Mentions { users, everyone }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(content: &str, t: ChatType) -> (Vec<String>, bool) {
        let (n, all) = parse(content, t);
        (n.into_iter().collect(), all)
    }

    #[test]
    fn a_message_names_at_most_max_names_users() {
        let content: String = (0..MAX_NAMES + 10)
            .map(|i| format!("@user{i:03} @user000 "))
            .collect();
        let (found, _) = names(&content, ChatType::Room);
        assert_eq!(found.len(), MAX_NAMES);
        assert!(found.contains(&"user000".to_owned()));
        assert!(found.contains(&format!("user{:03}", MAX_NAMES - 1)));
        assert!(
            !found.contains(&format!("user{MAX_NAMES:03}")),
            "the first ones count"
        );
    }

    #[test]
    fn mentions_are_words_that_start_with_an_at() {
        assert_eq!(
            names("hi @Alice and @bob.smith, see @carol.", ChatType::Group),
            (
                vec!["alice".into(), "bob.smith".into(), "carol".into()],
                false
            )
        );
        // Not mentions: an email, a lone @, names too short or too long, @@.
        assert_eq!(
            names("mail me@example.com @ @ab @@dave", ChatType::Room),
            (vec![], false)
        );
        assert_eq!(
            names(&format!("@{}", "x".repeat(33)), ChatType::Room)
                .0
                .len(),
            0
        );
        // Everyone: @room in a room, @group in a group, and not the other way round.
        assert_eq!(names("@room meeting now", ChatType::Room), (vec![], true));
        assert_eq!(names("@group meeting now", ChatType::Group), (vec![], true));
        assert_eq!(
            names("@room", ChatType::Group),
            (vec!["room".into()], false)
        );
        assert_eq!(
            names("(@erin) and @erin", ChatType::Private).0,
            vec!["erin"]
        );
    }
}
