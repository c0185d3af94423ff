-- no-transaction
-- Each conversation's messages in time order (contract, "Search", across conversations).
--
-- A search over every conversation of a user wants the newest matches across all of them. With
-- this index each conversation's messages can be read newest first in the order the answer
-- uses (created_at, then id), so Postgres merges one walk per conversation and stops once it
-- has the answer: it reads each conversation up to its first match, then about as many rows as
-- the answer needs. Before it, each conversation had to give its own newest `limit` matches,
-- which were then sorted: 50 conversations read 50 times as many rows
-- (chat-service/src/api/search.rs; docs/bench/findings.md).
--
-- Built CONCURRENTLY, so a deployment with many messages keeps taking sends while it is built
-- (hence no transaction, and this one statement). Should a build fail, Postgres leaves an
-- invalid index of this name: drop it (`DROP INDEX CONCURRENTLY messages_conversation_time_idx`)
-- and start the service again.
CREATE INDEX CONCURRENTLY messages_conversation_time_idx
    ON messages (conversation_id, created_at, id);
