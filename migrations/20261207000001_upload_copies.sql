-- What an upload's use serves is a copy of it, made and checked when it is used: the client
-- can still write to its upload URL until that URL expires (on S3 nothing stops a second PUT),
-- so the object it uploaded is no record of what was checked. `file_key` is the checked copy
-- (an attachment's, or the resized avatar), null for uploads not used or used before copies
-- were made (they serve `object_key`). `upload_removed`: the upload's own object is deleted
-- (once a used upload's URL has expired), or every object of it (once its message is deleted).
ALTER TABLE uploads ADD COLUMN file_key TEXT UNIQUE;
ALTER TABLE uploads ADD COLUMN upload_removed BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX uploads_copied_unremoved_idx ON uploads (created_at)
    WHERE file_key IS NOT NULL AND NOT upload_removed;
