-- A member's choice to be told nothing of a conversation while away: no webhook notification
-- (the mobile push an operator plugs in) for its messages, except those that mention the member
-- by name, until `until` (NULL: until unmuted). Only muted pairs have a row. It belongs to the
-- membership: leaving, being removed or banned drops it.
CREATE TABLE notification_mutes (
    conversation_id UUID NOT NULL,
    user_id         UUID NOT NULL,
    until           TIMESTAMPTZ,
    PRIMARY KEY (conversation_id, user_id),
    FOREIGN KEY (conversation_id, user_id)
        REFERENCES conversation_members (conversation_id, user_id) ON DELETE CASCADE
);
