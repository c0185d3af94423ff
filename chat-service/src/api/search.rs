//! `GET /chat/search`: messages the caller may read that match every word of a query.
//!
//! One full-text index serves it (migration 20261201000006):
//! `to_tsvector('simple', search_text(content))` over undeleted messages. Words of scripts that
//! separate words with spaces are matched as word prefixes; terms in scripts written without
//! spaces (Chinese, Japanese, Thai, …), which `search_text` indexes a character at a time, as a
//! phrase of consecutive characters: a substring.

use axum::{extract::State, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{
    chat::Message,
    error::ErrorBody,
    extract::{bounded_int, ApiQuery},
    jwt::AuthUser,
    ApiError, ApiResult,
};
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    api::parse_chat,
    conversation,
    model::{self, MessageRow},
    AppState,
};

/// The longest query, in characters.
const MAX_QUERY_CHARS: usize = 200;
/// The most terms (whitespace-separated) a query may have.
const MAX_TERMS: usize = 10;
/// What answering a match through the index costs, in rows walked: the index plan visits each
/// match's page wherever it lies, keeps the whole row and sorts them all, while the walk reads a
/// conversation's rows in order. Over 1M messages in 50 conversations (2026-12-06, warm) a
/// match cost 4.4–5.5 µs that way and a walked row 1.3–1.5 µs.
const INDEX_ROW_COST: f64 = 3.3;

/// Which plan answers a query: every match from the index (then sorted), or the conversations
/// walked newest first until enough rows match, whichever reads less. The index plan reads the
/// query's `matches` (all of them, anywhere). The walk reads about `1 / frequency` rows per
/// match it finds, the frequency being `matches / messages`: each conversation's rows up to its
/// first match, then `take` matches' worth per merging statement (see [`merged`]). `conversations`
/// is how many the search covers.
pub fn from_index(matches: f64, messages: f64, conversations: f64, take: f64) -> bool {
    if matches <= 0.0 {
        return true;
    }
    let conversations = conversations.max(1.0);
    let statements = (conversations / MERGE_BRANCHES as f64).ceil();
    let walked = (conversations + statements * take) * messages.max(matches) / matches;
    matches * INDEX_ROW_COST <= walked
}

/// A query split into what each index matches.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Terms {
    /// Terms of spaced scripts, joined by spaces: Postgres parses them into lexemes, each
    /// matched as a word prefix.
    pub words: Option<String>,
    /// Terms with characters of a script written without spaces, each matched as a substring.
    pub substrings: Vec<String>,
    /// `ILIKE` patterns every match satisfies: the ASCII letter-and-digit runs of the words
    /// (a lexeme that prefixes a word of the message is in its text). Cheap to test, they let
    /// the walking plans skip most rows before parsing them.
    pub prefilter: Vec<String>,
}

/// The most prefilter patterns one query gets.
const MAX_PREFILTER: usize = 16;

/// `%text%` with `LIKE`'s wildcards and escape character taken literally.
fn like_pattern(text: &str) -> String {
    format!("%{}%", shared::db::like_literal(text))
}

/// Scripts written without spaces between words: their terms match as substrings. The same
/// ranges as the migration's `search_text`.
fn unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF      // Thai, Lao
        | 0x1000..=0x109F    // Myanmar
        | 0x1780..=0x17FF    // Khmer
        | 0x3040..=0x30FF    // Hiragana, Katakana
        | 0x31F0..=0x31FF    // Katakana extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x3134F) // CJK extensions B–G
}

/// Splits `q` into terms. Terms without a letter or digit are ignored; a query with nothing
/// left, too long or with too many terms is refused (the problem, for a 422 on `q`).
pub fn parse(q: &str) -> Result<Terms, String> {
    let q = q.trim();
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(format!("must be at most {MAX_QUERY_CHARS} characters"));
    }
    let terms: Vec<&str> = q.split_whitespace().collect();
    if terms.len() > MAX_TERMS {
        return Err(format!("must have at most {MAX_TERMS} words"));
    }
    let mut words = Vec::new();
    let mut substrings = Vec::new();
    let mut prefilter: Vec<String> = Vec::new();
    for term in terms {
        if term.chars().any(unspaced) {
            substrings.push(term.to_owned());
        } else if term.chars().any(char::is_alphanumeric) {
            words.push(term);
            for run in term.split(|c: char| !c.is_alphanumeric()) {
                let run = run.to_ascii_lowercase();
                if !run.is_empty() && run.is_ascii() && !prefilter.iter().any(|p| p.contains(&run))
                {
                    prefilter.push(like_pattern(&run));
                }
            }
        }
    }
    prefilter.truncate(MAX_PREFILTER);
    if words.is_empty() && substrings.is_empty() {
        return Err("must contain a letter or digit".to_owned());
    }
    Ok(Terms {
        words: (!words.is_empty()).then(|| words.join(" ")),
        substrings,
        prefilter,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// What to find: every word must match (a word prefix; a substring for scripts written
    /// without spaces). At most 200 characters and 10 words.
    q: Option<String>,
    /// With `chat_id`: search one conversation (read rules as history).
    #[param(value_type = Option<shared::chat::ChatType>)]
    chat_type: Option<String>,
    /// Room or group id; for private chats the other user's id.
    #[param(value_type = Option<Uuid>)]
    chat_id: Option<String>,
    /// 1–100, default 20.
    #[param(value_type = Option<i64>)]
    limit: Option<String>,
    /// With a conversation: matches older than this seq.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9007199254740991.0)]
    before_seq: Option<String>,
    /// Without a conversation: matches older than this message (the last of the previous page).
    #[param(value_type = Option<Uuid>)]
    before_id: Option<String>,
}

/// Matching messages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub messages: Vec<Message>,
    /// More (older) matches exist: ask again with `before_seq` (one conversation) or
    /// `before_id` (everywhere) set from the last message.
    pub has_more: bool,
}

#[derive(Clone, Copy)]
enum Scope {
    /// One conversation (checked readable).
    One(Uuid),
    /// Every conversation the caller is a member of.
    Mine(Uuid),
}

/// `GET /chat/search`
#[utoipa::path(get, path = "/chat/search", tag = "messages", security(("bearer" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "Matching messages the caller may read, newest first; deleted ones never", body = SearchResults),
        (status = 403, description = "Not a member of the group", body = ErrorBody),
        (status = 404, description = "No such room, group or user", body = ErrorBody),
        (status = 422, description = "Invalid parameters: `q` missing, too long, too many words or without a letter or digit; `chat_type` without `chat_id`; `before_seq` without a conversation", body = ErrorBody),
        (status = 429, description = "`rate_limited`: more searches than the user's rate (2 a second, bursts of 10, by default); `Retry-After` says when to try again", body = ErrorBody),
        (status = 503, description = "`busy`: the service is running as many searches as it takes at once; or a dependency (Postgres, Redis) is unavailable. Retry after `Retry-After`", body = ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(p): ApiQuery<SearchQuery>,
) -> ApiResult<Json<SearchResults>> {
    let terms = parse(p.q.as_deref().unwrap_or("")).map_err(|e| ApiError::invalid_field("q", e))?;
    let limit = bounded_int("limit", p.limit.as_deref(), 20, 1..=100)?;
    let before_seq = match p.before_seq.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) if shared::chat::is_client_seq(n) => Some(n),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "before_seq",
                shared::chat::SEQ_RANGE,
            ))
        }
    };
    let before_id = match p.before_id.as_deref().map(str::parse::<Uuid>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return Err(ApiError::invalid_field("before_id", "must be a UUID")),
    };
    let scope = match (p.chat_type.as_deref(), p.chat_id.as_deref()) {
        (Some(t), Some(id)) => {
            let (chat_type, chat_id) = parse_chat(t, id)?;
            match conversation::for_reading(&state.db, caller.user_id, chat_type, chat_id).await? {
                Some(c) => Scope::One(c.id),
                // A private chat without a message yet.
                None => {
                    return Ok(Json(SearchResults {
                        messages: vec![],
                        has_more: false,
                    }))
                }
            }
        }
        (None, None) => {
            if before_seq.is_some() {
                return Err(ApiError::invalid_field(
                    "before_seq",
                    "needs chat_type and chat_id (use before_id across conversations)",
                ));
            }
            Scope::Mine(caller.user_id)
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid_field(
                "chat_type",
                "is needed with chat_id",
            ))
        }
        (Some(_), None) => {
            return Err(ApiError::invalid_field(
                "chat_id",
                "is needed with chat_type",
            ))
        }
    };
    // Checked once the request is known to be good: a malformed one costs no token. The slot
    // is held until the answer is built.
    state.search_rate(caller.user_id).await?;
    let _slot = state.search_slots.try_acquire().map_err(|_| {
        metrics::counter!("chat_searches_shed_total").increment(1);
        ApiError::unavailable("busy", "too many searches at once; retry shortly")
    })?;

    let mut rows = find(&state.db, terms, scope, limit + 1, before_seq, before_id).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut messages = model::messages(rows)?;
    crate::api::enrich(&state, caller.user_id, &mut messages).await?;
    Ok(Json(SearchResults { messages, has_more }))
}

/// Up to `take` matches of `terms` in `scope`, newest first, older than `before_seq` (one
/// conversation) or the message `before_id` (across conversations) when given.
async fn find(
    db: &sqlx::PgPool,
    terms: Terms,
    scope: Scope,
    take: i64,
    before_seq: Option<i64>,
    before_id: Option<Uuid>,
) -> ApiResult<Vec<MessageRow>> {
    // Two plans, chosen by [`from_index`] from the planner's estimate of the query's matches
    // (migration 20261205000001; counting them cost as much as the cheaper plan). A rare query:
    // its matches through the index (in one conversation, only that conversation's; across
    // conversations every match, then the caller's), newest first. A common
    // one: the conversations' messages walked newest first, each checked, until the answer is
    // found. Left to itself the planner did the worst of each: for a common word it sorted
    // hundreds of thousands of matches, for a rare one it walked every row.
    let mut tx = db.begin().await?;
    set_local(&mut tx, SEARCHING).await?;
    // The query as Postgres parses it (as it parsed the messages: the same function and
    // `simple` configuration), its estimated matches, the table's size, the conversations
    // searched and where the page starts, in one round trip.
    let mut first: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT q::text, search_match_estimate(q), \
         (SELECT reltuples::float8 FROM pg_class WHERE oid = 'messages'::regclass), ",
    );
    match scope {
        Scope::One(_) => first.push("NULL::uuid[]"),
        Scope::Mine(user) => first
            .push(
                "(SELECT array_agg(conversation_id ORDER BY conversation_id) \
                 FROM conversation_members WHERE user_id = ",
            )
            .push_bind(user)
            .push(")"),
    };
    first
        .push(", (SELECT created_at FROM messages WHERE id = ")
        .push_bind(before_id)
        .push(") FROM (SELECT ");
    push_tsquery(&mut first, &terms);
    first.push(" AS q) parsed");
    type First = (
        Option<String>,
        Option<i64>,
        f64,
        Option<Vec<Uuid>>,
        Option<DateTime<Utc>>,
    );
    let (tsquery, estimate, table_rows, conversations, before_time): First =
        first.build_query_as().fetch_one(&mut *tx).await?;
    // Words the parser finds no lexeme in match nothing; a page after a message that does not
    // exist has nothing on it.
    let Some(tsquery) = tsquery else {
        return Ok(vec![]);
    };
    if before_id.is_some() && before_time.is_none() && matches!(scope, Scope::Mine(_)) {
        return Ok(vec![]);
    }
    let conversations = conversations.unwrap_or_default();
    let rare = from_index(
        estimate.unwrap_or(0) as f64,
        table_rows,
        match scope {
            Scope::One(_) => 1.0,
            Scope::Mine(_) => conversations.len() as f64,
        },
        take as f64,
    );
    let matching = Matching {
        tsquery,
        prefilter: terms.prefilter,
        substrings: terms.substrings.iter().map(|t| like_pattern(t)).collect(),
        take,
    };
    let rows = match (scope, rare) {
        (Scope::One(conversation), rare) => {
            let (sql, settings) = if rare {
                (ONE_FROM_INDEX, BITMAPS_ONLY)
            } else {
                (ONE_WALKED, WALKING)
            };
            set_local(&mut tx, settings).await?;
            matching
                .bind(sqlx::query_as(sql))
                .bind(conversation)
                .bind(before_seq.unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?
        }
        (Scope::Mine(user), true) => {
            matching
                .bind(sqlx::query_as(MINE_FROM_INDEX))
                .bind(user)
                .bind(before_time)
                .bind(before_id)
                .fetch_all(&mut *tx)
                .await?
        }
        (Scope::Mine(_), false) => {
            set_local(&mut tx, MERGING).await?;
            merged(&mut tx, &matching, &conversations, before_time, before_id).await?
        }
    };
    tx.commit().await?;
    Ok(rows)
}

/// The conditions on `m` that make it a match: undeleted, the unspaced terms' characters
/// consecutive (`$3`: a phrase of single characters also matches when punctuation stands
/// between them), and the query (`$1`). A macro so the statements below are constants.
macro_rules! matching {
    () => {
        "NOT m.is_deleted AND m.content LIKE ALL($3) \
         AND to_tsvector('simple', search_text(m.content)) @@ $1::tsquery"
    };
}

/// [`matching!`] for the plans that walk rows: the prefilter's patterns (`$2`) first, cheap, so
/// most rows are passed over before they are parsed. (The index's matches need no prefilter.)
macro_rules! walked_matching {
    () => {
        concat!("m.content ILIKE ALL($2) AND ", matching!())
    };
}

/// One conversation (`$5`), its matches through the index, older than seq `$6`: run with
/// [`BITMAPS_ONLY`], the search index's matches and the conversation's rows are two bitmaps
/// Postgres intersects before it reads a row, so only the conversation's matches are read.
const ONE_FROM_INDEX: &str = concat!(
    "SELECT m.* FROM messages m WHERE m.conversation_id = $5 AND m.seq < $6 AND ",
    matching!(),
    " ORDER BY m.seq DESC LIMIT $4"
);

/// One conversation (`$5`) walked newest first from seq `$6`.
const ONE_WALKED: &str = concat!(
    "SELECT m.* FROM messages m WHERE m.conversation_id = $5 AND m.seq < $6 AND ",
    walked_matching!(),
    " ORDER BY m.seq DESC LIMIT $4"
);

/// The conversations of user `$5`, every match through the index, older than the message at
/// (`$6`, `$7`) when they are given.
const MINE_FROM_INDEX: &str = concat!(
    "WITH hits AS MATERIALIZED (SELECT m.* FROM messages m WHERE ",
    matching!(),
    ") SELECT m.* FROM hits m WHERE m.conversation_id IN \
     (SELECT conversation_id FROM conversation_members WHERE user_id = $5) \
     AND (m.created_at, m.id) < (COALESCE($6, 'infinity'), COALESCE($7, 'ffffffff-ffff-ffff-ffff-ffffffffffff')) \
     ORDER BY m.created_at DESC, m.id DESC LIMIT $4"
);

/// What a statement needs to find matches: `$1` to `$4` of each.
struct Matching {
    /// The query as Postgres parsed it.
    tsquery: String,
    /// `ILIKE` patterns every match satisfies ([`Terms::prefilter`]).
    prefilter: Vec<String>,
    /// `LIKE` patterns of the unspaced terms.
    substrings: Vec<String>,
    /// Rows wanted: a page and one more (to tell whether there are more).
    take: i64,
}

type RowQuery<'q> = sqlx::query::QueryAs<'q, Postgres, MessageRow, sqlx::postgres::PgArguments>;

impl Matching {
    fn bind<'q>(&'q self, query: RowQuery<'q>) -> RowQuery<'q> {
        query
            .bind(&self.tsquery)
            .bind(&self.prefilter)
            .bind(&self.substrings)
            .bind(self.take)
    }
}

/// Planner settings, for the rest of a search's transaction.
type Settings = &'static [(&'static str, &'static str)];

/// Every search: no sequential scan of `messages`, and no JIT compilation (about 9 ms whenever
/// a plan's estimated cost crossed its threshold, more than most searches take).
const SEARCHING: Settings = &[("enable_seqscan", "off"), ("jit", "off")];

/// The walking plans read rows in order and check each: a bitmap of the index's matches is what
/// they are there to avoid.
const WALKING: Settings = &[("enable_bitmapscan", "off")];

/// The merging statements walk (as [`WALKING`]) and are planned once per connection, not per
/// search: a custom plan of 128 branches costs about 16 ms, and the plan is the same whatever
/// the conversations.
const MERGING: Settings = &[
    ("enable_bitmapscan", "off"),
    ("plan_cache_mode", "force_generic_plan"),
];

/// The one-conversation index plan reads only rows both bitmaps hold (Postgres's BitmapAnd):
/// no index scan in seq order (which walks the conversation), and a plan made for this query's
/// words, not a generic one that cannot tell how many rows they match. Over 1M messages
/// (2026-12-06, warm) 1.2–1.9 ms where materializing every match of the table and keeping the
/// conversation's took 3.3–7.5.
const BITMAPS_ONLY: Settings = &[
    ("enable_indexscan", "off"),
    ("plan_cache_mode", "force_custom_plan"),
];

/// Applies `settings` until the transaction ends, in one round trip.
async fn set_local(tx: &mut sqlx::PgConnection, settings: Settings) -> ApiResult<()> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new("SELECT ");
    let mut calls = sql.separated(", ");
    for (name, value) in settings {
        calls
            .push("set_config(")
            .push_bind_unseparated(*name)
            .push_unseparated(", ")
            .push_bind_unseparated(*value)
            .push_unseparated(", true)");
    }
    sql.build().execute(tx).await?;
    Ok(())
}

/// The most conversations one merging statement walks (its `UNION ALL` branches). A search over
/// more runs a statement per this many and keeps the newest of their answers.
const MERGE_BRANCHES: usize = 128;
/// The fewest branches a merging statement has. Statements come in powers of two from this to
/// [`MERGE_BRANCHES`], padded with a conversation that does not exist, so a connection
/// prepares (and plans) at most five of them, once.
const MERGE_MIN_BRANCHES: usize = 8;

/// A statement that walks `branches` conversations (`$7` on) newest first, each by
/// `messages (conversation_id, created_at, id)` from the message at (`$5`, `$6`) when given,
/// and merges the walks: Postgres reads each conversation up to its first match, then only as
/// far as the answer needs (its Merge Append).
fn merge_statement(branches: usize) -> String {
    let mut sql = String::from("SELECT m.* FROM (");
    for k in 0..branches {
        if k > 0 {
            sql.push_str(" UNION ALL ");
        }
        sql.push_str(&format!(
            "(SELECT m.* FROM messages m WHERE m.conversation_id = ${} AND (m.created_at, m.id) < \
             (COALESCE($5, 'infinity'), COALESCE($6, 'ffffffff-ffff-ffff-ffff-ffffffffffff')) AND {} \
             ORDER BY m.created_at DESC, m.id DESC)",
            7 + k,
            walked_matching!()
        ));
    }
    sql.push_str(") m ORDER BY m.created_at DESC, m.id DESC LIMIT $4");
    sql
}

/// How many branches the statement for `conversations` conversations has.
fn branches(conversations: usize) -> usize {
    conversations
        .next_power_of_two()
        .clamp(MERGE_MIN_BRANCHES, MERGE_BRANCHES)
}

/// The newest matches across `conversations`, older than (`before_time`, `before_id`) when
/// given: one merging statement per [`MERGE_BRANCHES`] conversations, their answers merged here.
/// Run with [`MERGING`].
async fn merged(
    tx: &mut sqlx::PgConnection,
    matching: &Matching,
    conversations: &[Uuid],
    before_time: Option<DateTime<Utc>>,
    before_id: Option<Uuid>,
) -> ApiResult<Vec<MessageRow>> {
    let mut rows = Vec::new();
    for chunk in conversations.chunks(MERGE_BRANCHES) {
        let branches = branches(chunk.len());
        let sql = merge_statement(branches);
        let mut query = matching
            .bind(sqlx::query_as(&sql))
            .bind(before_time)
            .bind(before_id);
        for id in chunk
            .iter()
            .copied()
            .chain(std::iter::repeat(Uuid::nil()))
            .take(branches)
        {
            query = query.bind(id);
        }
        rows.extend(query.fetch_all(&mut *tx).await?);
    }
    rows.sort_unstable_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
    rows.truncate(matching.take as usize);
    Ok(rows)
}

/// The query as one `tsquery`: each lexeme of the words a prefix term, each unspaced term a
/// phrase of its characters, all of them required. NULL when the words hold no lexeme.
fn push_tsquery(sql: &mut QueryBuilder<'_, Postgres>, terms: &Terms) {
    let mut parts = 0;
    if let Some(words) = &terms.words {
        sql.push(
            "(SELECT to_tsquery('simple', \
             string_agg('''' || translate(lexeme, '''\\', '') || ''':*', ' & ')) \
             FROM unnest(to_tsvector('simple', ",
        )
        .push_bind(words.clone())
        .push(")))");
        parts += 1;
    }
    for term in &terms.substrings {
        if parts > 0 {
            sql.push(" && ");
        }
        sql.push("phraseto_tsquery('simple', search_text(")
            .push_bind(term.clone())
            .push("))");
        parts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaced_words_and_unspaced_terms_go_to_their_index() {
        let t = parse("  Hello   wor 你好 ").unwrap();
        assert_eq!(t.words.as_deref(), Some("Hello wor"));
        assert_eq!(t.substrings, vec!["你好"]);
        assert_eq!(t.prefilter, vec!["%hello%", "%wor%"]);
        let t = parse("สวัสดี").unwrap();
        assert_eq!(t.words, None);
        assert_eq!(t.substrings, vec!["สวัสดี"]);
    }

    #[test]
    fn like_wildcards_are_literal() {
        assert_eq!(like_pattern("50%_東\\"), "%50\\%\\_東\\\\%");
        let t = parse("O'Neil's café 3.14").unwrap();
        assert_eq!(t.prefilter, vec!["%o%", "%neil%", "%s%", "%3%", "%14%"]);
    }

    #[test]
    fn the_plan_that_reads_fewer_rows_is_chosen() {
        // 1M messages, 21 rows wanted from one conversation: the walk reads 22M / matches (up
        // to the first match, then 21 more), the index 3.3 × matches.
        assert!(from_index(2_500.0, 1e6, 1.0, 21.0));
        assert!(!from_index(2_600.0, 1e6, 1.0, 21.0));
        // Across 50 conversations, merged: each read up to its first match, then 21 matches'
        // worth in all (71M / matches).
        assert!(from_index(4_600.0, 1e6, 50.0, 21.0));
        assert!(!from_index(4_700.0, 1e6, 50.0, 21.0));
        // 200 conversations take two merging statements, each finding 21 (242M / matches).
        assert!(from_index(8_500.0, 1e6, 200.0, 21.0));
        assert!(!from_index(8_600.0, 1e6, 200.0, 21.0));
        // Nothing matches: the index says so at once. A table whose size is not known yet
        // (never analyzed) counts as holding the matches.
        assert!(from_index(0.0, 1e6, 50.0, 21.0));
        assert!(from_index(3.0, -1.0, 1.0, 21.0));
    }

    #[test]
    fn merging_statements_come_in_five_sizes() {
        assert_eq!(branches(1), 8);
        assert_eq!(branches(8), 8);
        assert_eq!(branches(9), 16);
        assert_eq!(branches(100), 128);
        assert_eq!(branches(128), 128);
        let sql = merge_statement(8);
        assert_eq!(sql.matches("UNION ALL").count(), 7);
        assert!(sql.contains("$14 ") && !sql.contains("$15"));
    }

    #[test]
    fn empty_long_and_wordless_queries_are_refused() {
        assert!(parse("").is_err());
        assert!(parse("  !!! ?? ").is_err());
        assert!(parse(&"a".repeat(201)).is_err());
        assert!(parse(&"a ".repeat(11)).is_err());
        assert!(parse(&"a ".repeat(10)).is_ok());
        // Punctuation-only terms are dropped, the rest kept.
        assert_eq!(parse("?? cats").unwrap().words.as_deref(), Some("cats"));
    }
}
