-- How many messages a search query matches, told by the planner's statistics instead of counted.
--
-- `GET /chat/search` chooses between two plans by how many messages its query matches
-- (chat-service/src/api/search.rs). Counting them costs as much as the cheaper plan for the
-- common words: building the index's bitmap of every match (23 ms for a word in a third of a
-- million messages) and visiting up to 20,000 rows. The planner's estimate costs a planning.
--
-- The search index is partial (undeleted messages), and Postgres does not use a partial index's
-- expression statistics for estimates: every `@@` was estimated at 0.5 % of the table, whatever
-- the word. Statistics on the expression itself give the lexemes' frequencies (ANALYZE keeps the
-- most common 1,000 or so of them), word prefixes included: on 2026-12-05, over 1M messages, 346k
-- estimated for a word matching 345k, 28.5k for 29.0k, 6.7k for 6.6k.
CREATE STATISTICS messages_search_text_stats
    ON (to_tsvector('simple', search_text(content))) FROM messages;

-- The planner's estimate of the undeleted messages matching `query`, through the search index's
-- expression. EXPLAIN is the one way to ask for it (hence VOLATILE: Postgres refuses EXPLAIN in
-- any other kind of function); the query goes in as a literal, so that the estimate is this
-- query's and not a generic plan's. About 0.2 ms once a connection has run it.
CREATE FUNCTION search_match_estimate(query tsquery) RETURNS bigint
    LANGUAGE plpgsql VOLATILE STRICT
AS $$
DECLARE
    line text;
BEGIN
    FOR line IN EXECUTE format(
        'EXPLAIN SELECT 1 FROM messages WHERE NOT is_deleted '
        'AND to_tsvector(''simple'', search_text(content)) @@ %L::tsquery',
        query::text)
    LOOP
        RETURN substring(line FROM 'rows=(\d+)')::bigint;
    END LOOP;
    RETURN NULL;
END
$$;
