-- The last foreign key the send path paid for on every row: `messages.conversation_id`. Postgres
-- checks a foreign key with a query of its own per inserted row (about 7 µs of Postgres CPU per
-- message, a sixth of the insert's cost, at 12k messages/s), yet the one statement that writes
-- messages (chat-service's send pipeline) inserts a row only by joining the conversation row it
-- has just locked and advanced in the same statement: a message cannot name a missing
-- conversation, and a conversation being deleted waits for that lock (or the insert finds no row
-- and writes nothing).
--
-- What the key also did, and a trigger now does: deleting a conversation (directly, or by the
-- cascade from its room or group) deletes its messages, in the same transaction.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_conversation_id_fkey;

CREATE FUNCTION messages_delete_with_conversation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM messages m USING gone g WHERE m.conversation_id = g.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER conversations_delete_messages
    AFTER DELETE ON conversations
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION messages_delete_with_conversation();
