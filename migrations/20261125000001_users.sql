-- Users and their refresh tokens (auth-service).

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    username      TEXT NOT NULL CHECK (username ~ '^[A-Za-z0-9_.-]{3,32}$'),
    email         TEXT NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254),
    display_name  TEXT NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 64),
    password_hash TEXT NOT NULL,
    avatar_url    TEXT CHECK (char_length(avatar_url) <= 2048),
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen     TIMESTAMPTZ
);

-- Usernames and emails are unique whatever their case. Login looks users up through these too.
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

-- GET /auth/users?q=PREFIX: text_pattern_ops lets `lower(x) LIKE 'pre%'` use a B-tree range scan
-- whatever the database's collation.
CREATE INDEX users_username_prefix_idx ON users (lower(username) text_pattern_ops);
CREATE INDEX users_display_name_prefix_idx ON users (lower(display_name) text_pattern_ops);

-- Refresh tokens are opaque random strings; only their SHA-256 is stored. Every token descends
-- from one login, its family: rotation marks the presented token `rotated_at` and issues a child
-- in the same family. Presenting a rotated token again is reuse (a stolen copy, or a replay), and
-- revokes the whole family.
CREATE TABLE refresh_tokens (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   UUID NOT NULL,
    token_hash  BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    rotated_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

-- Refresh and logout find a token by its hash.
CREATE UNIQUE INDEX refresh_tokens_token_hash_key ON refresh_tokens (token_hash);
-- Reuse detection and logout revoke a family.
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
-- ON DELETE CASCADE from users.
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);
-- The periodic purge of expired tokens.
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);
