-- Message search (contract, "Search"): one full-text index over undeleted messages.
--
-- Words of scripts that put spaces between words are the `simple` configuration's lexemes,
-- matched as word prefixes. Scripts written without spaces (Chinese, Japanese kana, Thai, Lao,
-- Khmer, Myanmar) are indexed a character at a time: `search_text` puts spaces around each such
-- character, so a query term in them is a phrase of consecutive characters, which matches
-- exactly the messages that contain it as a substring. The ranges are those of `unspaced` in
-- chat-service/src/api/search.rs.
--
-- One GIN index, not a full-text index plus a trigram one: on 2026-12-01, 200k inserts took
-- 2.0 s with this index, 2.0 s with a plain full-text one and 3.8 s with a trigram one
-- (0.09 s with none). GIN's pending list (fastupdate, on by default) batches the index work of
-- new rows.
CREATE FUNCTION search_text(content TEXT) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN regexp_replace(
        content,
        '([\u0E00-\u0EFF\u1000-\u109F\u1780-\u17FF\u3040-\u30FF\u31F0-\u31FF\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF\uFF66-\uFF9F\U00020000-\U0003134F])',
        ' \1 ',
        'g'
    );

CREATE INDEX messages_search_idx ON messages
    USING gin (to_tsvector('simple', search_text(content))) WHERE NOT is_deleted;
