-- Mentions, resolved when a message is stored (contract, "Conversation features"): the members
-- named `@username`, and whether `@room` / `@group` named them all. Counting a member's unread
-- mentions reads only the unread range of the (conversation_id, seq) index.
ALTER TABLE messages
    ADD COLUMN mentions UUID[] NOT NULL DEFAULT '{}',
    ADD COLUMN mentions_all BOOLEAN NOT NULL DEFAULT FALSE;
