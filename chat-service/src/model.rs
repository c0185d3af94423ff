//! Rows as Postgres returns them, and their API shapes.

use chrono::{DateTime, Utc};
use shared::{
    chat::{Attachment, ChatType, Message, MessageType},
    ApiError,
};
use uuid::Uuid;

/// A row of `messages`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub seq: i64,
    pub from_user_id: Uuid,
    pub to_user_id: Option<Uuid>,
    pub room_id: Option<Uuid>,
    pub group_id: Option<Uuid>,
    pub content: String,
    pub message_type: String,
    pub chat_type: String,
    pub reply_to_id: Option<Uuid>,
    pub client_id: Option<String>,
    pub is_edited: bool,
    pub edited_at: Option<DateTime<Utc>>,
    pub is_deleted: bool,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub mentions: Vec<Uuid>,
    pub mentions_all: bool,
    pub attachment_id: Option<Uuid>,
}

impl TryFrom<MessageRow> for Message {
    type Error = ApiError;

    fn try_from(r: MessageRow) -> Result<Self, ApiError> {
        Ok(Message {
            id: r.id,
            seq: r.seq,
            chat_type: ChatType::from_db(&r.chat_type)
                .ok_or_else(|| ApiError::internal(format!("chat_type {:?}", r.chat_type)))?,
            from_user_id: r.from_user_id,
            to_user_id: r.to_user_id,
            room_id: r.room_id,
            group_id: r.group_id,
            content: r.content,
            message_type: MessageType::from_db(&r.message_type)
                .ok_or_else(|| ApiError::internal(format!("message_type {:?}", r.message_type)))?,
            reply_to_id: r.reply_to_id,
            client_id: r.client_id,
            is_edited: r.is_edited,
            is_deleted: r.is_deleted,
            created_at: r.created_at,
            edited_at: r.edited_at,
            reactions: Vec::new(),
            mentions: r.mentions,
            mentions_all: r.mentions_all,
            // Its id only: `attachments::fill` loads the rest where messages are read. A
            // deleted message shows none.
            attachment: r
                .attachment_id
                .filter(|_| !r.is_deleted)
                .map(Attachment::unloaded),
        })
    }
}

/// Converts rows, failing on the first malformed one.
pub fn messages(rows: Vec<MessageRow>) -> Result<Vec<Message>, ApiError> {
    rows.into_iter().map(Message::try_from).collect()
}

pub use shared::chat::UserSummary;
