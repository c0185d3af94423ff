-- Objects to delete from the store, kept in the database so that a deletion survives a store
-- outage and a crash: a deleted message's files, expired uploads, and every copy made for a
-- send (`unless_used`: deleted only if no upload's `file_key` names it once it is due, i.e.
-- its send was never stored). A row goes once its object is gone; a failed attempt is tried
-- again later (`attempts`).
CREATE TABLE object_removals (
    key TEXT PRIMARY KEY,
    due_at TIMESTAMPTZ NOT NULL,
    unless_used BOOLEAN NOT NULL DEFAULT false,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX object_removals_due_idx ON object_removals (due_at);
