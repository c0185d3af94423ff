-- A room's owner changes its name or description (PATCH /chat/rooms/{id}); each change is a row
-- of the room's audit log like a moderation action: action `updated`, what changed in `reason`.
ALTER TABLE room_audit_log DROP CONSTRAINT room_audit_log_action_check;
ALTER TABLE room_audit_log ADD CONSTRAINT room_audit_log_action_check
    CHECK (action IN ('banned', 'unbanned', 'muted', 'unmuted', 'promoted', 'demoted',
                      'message_deleted', 'updated'));
