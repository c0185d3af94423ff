-- A room's moderators are members of it: leaving and being banned end the role. Moderator
-- rows of users who left before leaving ended it are removed, so none outlives membership.
DELETE FROM room_moderators d
WHERE NOT EXISTS (SELECT 1 FROM conversation_members m
                  WHERE m.conversation_id = d.room_id AND m.user_id = d.user_id);
