-- Room moderation (contract, "Conversation features"): moderators, bans, mutes and the audit
-- log. A room's owner is its creator (`rooms.created_by`); the other roles live here, apart
-- from membership, so a moderator who leaves and comes back is still one.

CREATE TABLE room_moderators (
    room_id    UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_by   UUID NOT NULL REFERENCES users (id),
    added_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

-- A banned user is not a member and cannot join again until `until` (never, when NULL) or
-- until the ban is lifted.
CREATE TABLE room_bans (
    room_id    UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    banned_by  UUID NOT NULL REFERENCES users (id),
    reason     TEXT CHECK (char_length(reason) <= 500),
    until      TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

-- A muted member's sends are refused until `until`. Sends read this by primary key.
CREATE TABLE room_mutes (
    room_id    UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    muted_by   UUID NOT NULL REFERENCES users (id),
    until      TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

-- Every moderation action, newest first for the owner.
CREATE TABLE room_audit_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id    UUID NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    actor_id   UUID NOT NULL REFERENCES users (id),
    action     TEXT NOT NULL CHECK (action IN ('banned', 'unbanned', 'muted', 'unmuted',
                                               'promoted', 'demoted', 'message_deleted')),
    target_id  UUID REFERENCES users (id),
    message_id UUID,
    reason     TEXT CHECK (char_length(reason) <= 500),
    until      TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX room_audit_log_room_idx ON room_audit_log (room_id, id DESC);
