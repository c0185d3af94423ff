-- Attachments and avatars (contract, "Attachments and avatars"). An upload is what a client
-- declared before sending the bytes to object storage; it is checked against the stored object
-- when it is used, once, by a message or as an avatar. Unused uploads are deleted (row and
-- object) after `expires_at`.
CREATE TABLE uploads (
    id            UUID PRIMARY KEY,
    owner_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename      TEXT NOT NULL CHECK (char_length(filename) BETWEEN 1 AND 255),
    content_type  TEXT NOT NULL CHECK (char_length(content_type) BETWEEN 1 AND 127),
    size          BIGINT NOT NULL CHECK (size > 0),
    object_key    TEXT NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL,
    used_at       TIMESTAMPTZ,
    -- Images, once their thumbnail is made (off the send path).
    width         INT,
    height        INT,
    thumbnail_key TEXT
);
-- The clean-up of expired, unused uploads.
CREATE INDEX uploads_unused_expiry_idx ON uploads (expires_at) WHERE used_at IS NULL;

ALTER TABLE messages ADD COLUMN attachment_id UUID REFERENCES uploads (id);
-- An upload is used by one message at most.
CREATE UNIQUE INDEX messages_attachment_key ON messages (attachment_id) WHERE attachment_id IS NOT NULL;
ALTER TABLE messages DROP CONSTRAINT messages_message_type_check;
ALTER TABLE messages ADD CONSTRAINT messages_message_type_check
    CHECK (message_type IN ('TEXT', 'IMAGE', 'FILE'));
-- An image or file message with an attachment has an optional caption; every other message
-- has content.
ALTER TABLE users ADD COLUMN avatar_upload_id UUID REFERENCES uploads (id) ON DELETE SET NULL;
