-- A room's member count, kept on the room by a trigger on conversation_members, so listing rooms
-- reads one row per room instead of counting every membership of every room (a room's
-- conversation shares the room's id; other conversations match no room and change nothing).
-- Memberships are locked for the migration's transaction, so no join or leave falls between
-- the count and the trigger.

LOCK TABLE conversation_members IN SHARE MODE;

ALTER TABLE rooms ADD COLUMN member_count BIGINT NOT NULL DEFAULT 0;

UPDATE rooms r SET member_count = counted.members
FROM (SELECT conversation_id, count(*) AS members
      FROM conversation_members GROUP BY conversation_id) counted
WHERE counted.conversation_id = r.id;

CREATE FUNCTION rooms_count_members() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE rooms SET member_count = member_count + 1 WHERE id = NEW.conversation_id;
    ELSE
        UPDATE rooms SET member_count = member_count - 1 WHERE id = OLD.conversation_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER conversation_members_count_rooms
    AFTER INSERT OR DELETE ON conversation_members
    FOR EACH ROW EXECUTE FUNCTION rooms_count_members();
