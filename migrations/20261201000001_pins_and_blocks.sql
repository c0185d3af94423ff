-- Pinned messages and blocked users (contract, "Conversation features").

-- A message pinned in its conversation; newest pin first.
CREATE TABLE message_pins (
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_id      UUID NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    pinned_by       UUID NOT NULL REFERENCES users (id),
    pinned_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, message_id)
);
CREATE INDEX message_pins_newest_idx ON message_pins (conversation_id, pinned_at DESC);

-- `blocker_id` blocked `blocked_id`: the blocked user cannot send to the blocker's private chat
-- nor add them to a group, and their typing and presence never reach the blocker.
CREATE TABLE user_blocks (
    blocker_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
);
-- "Has anyone of these blocked me?" (sending to a private chat, adding to a group).
CREATE INDEX user_blocks_blocked_idx ON user_blocks (blocked_id, blocker_id);
