-- Rooms, groups, private chats, messages and read positions (chat-service).
--
-- Every chat is a row of `conversations`, which carries the per-conversation message counter
-- (`last_seq`). A room's and a group's conversation share the room's or group's id. Membership
-- of any kind of chat is a row of `conversation_members`, which also holds that member's read
-- position, so authorization, the conversations list and unread counts all read one table.

CREATE TABLE rooms (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 64),
    description TEXT CHECK (char_length(description) <= 500),
    created_by  UUID NOT NULL REFERENCES users (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Room names are unique whatever their case.
CREATE UNIQUE INDEX rooms_name_lower_key ON rooms (lower(name));

CREATE TABLE groups (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 64),
    owner_id    UUID NOT NULL REFERENCES users (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE conversations (
    id              UUID PRIMARY KEY,
    chat_type       TEXT NOT NULL CHECK (chat_type IN ('ROOM', 'GROUP', 'PRIVATE')),
    room_id         UUID UNIQUE REFERENCES rooms (id) ON DELETE CASCADE,
    group_id        UUID UNIQUE REFERENCES groups (id) ON DELETE CASCADE,
    -- A private chat's two users, the smaller id first, so each pair has one conversation.
    user_low        UUID REFERENCES users (id),
    user_high       UUID REFERENCES users (id),
    -- The seq of the newest message; the next message gets last_seq + 1. Sends lock this row
    -- (UPDATE ... SET last_seq = last_seq + n) until their transaction commits, so seqs are
    -- gap-free and follow commit order whatever the number of chat-service replicas.
    last_seq        BIGINT NOT NULL DEFAULT 0,
    last_message_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((chat_type = 'ROOM') = (room_id IS NOT NULL)),
    CHECK ((chat_type = 'GROUP') = (group_id IS NOT NULL)),
    CHECK ((chat_type = 'PRIVATE') = (user_low IS NOT NULL AND user_high IS NOT NULL AND user_low < user_high))
);
-- Finds a private chat by its pair.
CREATE UNIQUE INDEX conversations_private_pair_key ON conversations (user_low, user_high);

CREATE TABLE conversation_members (
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Read position: the member has read every message up to this seq.
    last_read_seq   BIGINT NOT NULL DEFAULT 0,
    -- Authorization checks and member lists; member counts are index-only scans of it.
    PRIMARY KEY (conversation_id, user_id)
);
-- The conversations list and a gateway's subscriptions: every conversation of one user.
CREATE INDEX conversation_members_user_idx ON conversation_members (user_id, conversation_id);

CREATE TABLE messages (
    id              UUID PRIMARY KEY,
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL CHECK (seq > 0),
    from_user_id    UUID NOT NULL REFERENCES users (id),
    to_user_id      UUID REFERENCES users (id),
    room_id         UUID REFERENCES rooms (id) ON DELETE CASCADE,
    group_id        UUID REFERENCES groups (id) ON DELETE CASCADE,
    content         TEXT NOT NULL,
    message_type    TEXT NOT NULL CHECK (message_type IN ('TEXT', 'IMAGE')),
    chat_type       TEXT NOT NULL CHECK (chat_type IN ('ROOM', 'GROUP', 'PRIVATE')),
    reply_to_id     UUID REFERENCES messages (id),
    client_id       TEXT CHECK (char_length(client_id) BETWEEN 1 AND 128),
    is_edited       BOOLEAN NOT NULL DEFAULT FALSE,
    edited_at       TIMESTAMPTZ,
    is_deleted      BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at      TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- History pages (`WHERE conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT n`), the
-- last message of each conversation (seq = last_seq), sync after a seq, and the uniqueness of seq.
-- One B-tree descent per page however large the table grows.
CREATE UNIQUE INDEX messages_conversation_seq_key ON messages (conversation_id, seq);
-- Idempotent sends: the same client_id from the same user is the same message.
CREATE UNIQUE INDEX messages_sender_client_id_key ON messages (from_user_id, client_id)
    WHERE client_id IS NOT NULL;
