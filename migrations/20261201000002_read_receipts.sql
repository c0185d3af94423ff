-- When a member last moved their read position (read receipts list rooms' readers by it).
ALTER TABLE conversation_members ADD COLUMN read_at TIMESTAMPTZ;
