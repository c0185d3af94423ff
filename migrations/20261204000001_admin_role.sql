-- The admin role (`auth-service admin grant USERNAME`): admins may use /admin/* — find and
-- deactivate users, list every room, delete any message, read every room's audit log.
ALTER TABLE users ADD COLUMN is_admin BOOLEAN NOT NULL DEFAULT FALSE;
