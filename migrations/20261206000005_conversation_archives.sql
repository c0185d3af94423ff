-- A member's archived conversations: set aside until a message after `up_to_seq` arrives (a
-- conversation with news comes back by itself). Only archived pairs have a row. It belongs to
-- the membership: leaving, being removed or banned drops it.
CREATE TABLE conversation_archives (
    conversation_id UUID NOT NULL,
    user_id         UUID NOT NULL,
    up_to_seq       BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id),
    FOREIGN KEY (conversation_id, user_id)
        REFERENCES conversation_members (conversation_id, user_id) ON DELETE CASCADE
);
