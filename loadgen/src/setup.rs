//! Test data straight into Postgres (registering thousands of users through Argon2 would take
//! minutes and measure the wrong thing), and access tokens minted with `SECRET_KEY`, as any
//! service would.

use anyhow::Context;
use shared::{config::JwtConfig, jwt::JwtKeys};
use sqlx::PgPool;
use uuid::Uuid;

pub struct Setup {
    pub db: PgPool,
    jwt: JwtKeys,
    /// Distinguishes this run's names from earlier runs'.
    pub run: String,
}

pub struct User {
    pub id: Uuid,
    pub token: String,
}

impl Setup {
    pub async fn from_env() -> anyhow::Result<Self> {
        let url = std::env::var("DATABASE_URL").context("DATABASE_URL")?;
        let secret = std::env::var("SECRET_KEY").context("SECRET_KEY")?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .context("connecting to DATABASE_URL")?;
        Ok(Self {
            db,
            jwt: JwtKeys::new(&JwtConfig {
                secret_key: secret,
                access_token_expire_minutes: 120,
                revocation_poll: std::time::Duration::from_millis(200),
            }),
            run: Uuid::new_v4().simple().to_string()[..8].to_owned(),
        })
    }

    pub fn token(&self, user: Uuid) -> anyhow::Result<String> {
        Ok(self
            .jwt
            .issue(user)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .token)
    }

    /// `n` users sharing `password_hash` (any string when they will not log in).
    pub async fn users(&self, n: usize, password_hash: &str) -> anyhow::Result<Vec<User>> {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let names: Vec<String> = (0..n).map(|i| format!("lg{}u{i}", self.run)).collect();
        for (ids, names) in ids.chunks(5000).zip(names.chunks(5000)) {
            sqlx::query(
                "INSERT INTO users (id, username, email, display_name, password_hash)
                 SELECT id, name, name || '@bench.test', name, $3 FROM unnest($1::uuid[], $2::text[]) AS t(id, name)",
            )
            .bind(ids)
            .bind(names)
            .bind(password_hash)
            .execute(&self.db)
            .await?;
        }
        ids.into_iter()
            .map(|id| {
                Ok(User {
                    id,
                    token: self.token(id)?,
                })
            })
            .collect()
    }

    /// Refreshes the planner's statistics of the tables the setup fills. A benchmark database
    /// grows by hundreds of thousands of users and memberships at once, and a Postgres whose
    /// autovacuum is off (as on the benchmark machine) would otherwise plan every membership
    /// lookup for the tables as they were when empty.
    pub async fn analyze(&self) -> anyhow::Result<()> {
        sqlx::query("ANALYZE users, rooms, conversations, conversation_members")
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// A room with `members` (the first is its creator).
    pub async fn room(&self, members: &[Uuid]) -> anyhow::Result<Uuid> {
        let id = Uuid::now_v7();
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO rooms (id, name, created_by) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(format!("lg-{}-{}", self.run, id.simple()))
            .bind(members[0])
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO conversations (id, chat_type, room_id) VALUES ($1, 'ROOM', $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO conversation_members (conversation_id, user_id) SELECT $1, unnest($2::uuid[])")
            .bind(id)
            .bind(members)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Puts every user of `users` in `rooms_per_user` rooms of 100 (each round of rooms splits
    /// the users, shifted, into consecutive hundreds) and `privates_per_user` private chats with
    /// the users next to them (about; the ends of the list have fewer).
    ///
    /// Every room and conversation is created first and the tables analyzed, and only then the
    /// members go in. Each member row's foreign-key check and the rooms' member-count trigger
    /// are statements Postgres plans once per connection: planned while `conversations` was
    /// nearly empty (and autovacuum off), they scanned the whole table for every member, and
    /// 15,000 users' 450,000 memberships read billions of rows (tens of minutes).
    pub async fn memberships(
        &self,
        users: &[Uuid],
        rooms_per_user: usize,
        privates_per_user: usize,
    ) -> anyhow::Result<()> {
        const MEMBERS: usize = 100;
        const ROWS_PER_STATEMENT: usize = 10_000;
        let n = users.len();
        // (conversation, user) pairs, inserted once every conversation exists.
        let mut members: Vec<(Uuid, Uuid)> = Vec::new();
        let mut rooms: Vec<(Uuid, Uuid)> = Vec::new(); // (room, creator)
        if n >= MEMBERS {
            for round in 0..rooms_per_user {
                let shift = round * 37 % n;
                for start in (0..n - n % MEMBERS).step_by(MEMBERS) {
                    let room = Uuid::now_v7();
                    rooms.push((room, users[(start + shift) % n]));
                    members
                        .extend((start..start + MEMBERS).map(|i| (room, users[(i + shift) % n])));
                }
            }
        }
        for chunk in rooms.chunks(ROWS_PER_STATEMENT) {
            let (ids, creators): (Vec<Uuid>, Vec<Uuid>) = chunk.iter().copied().unzip();
            let names: Vec<String> = ids
                .iter()
                .map(|id| format!("lg-{}-{}", self.run, id.simple()))
                .collect();
            let mut tx = self.db.begin().await?;
            sqlx::query(
                "INSERT INTO rooms (id, name, created_by)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[])",
            )
            .bind(&ids)
            .bind(names)
            .bind(creators)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO conversations (id, chat_type, room_id)
                 SELECT i, 'ROOM', i FROM unnest($1::uuid[]) AS t(i)",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        let mut privates: Vec<(Uuid, Uuid, Uuid)> = Vec::new(); // (conversation, low, high)
        for i in 0..n {
            for d in 1..=privates_per_user / 2 {
                if let Some(&other) = users.get(i + d) {
                    let (low, high) = if users[i] < other {
                        (users[i], other)
                    } else {
                        (other, users[i])
                    };
                    let id = Uuid::now_v7();
                    privates.push((id, low, high));
                    members.extend([(id, low), (id, high)]);
                }
            }
        }
        for chunk in privates.chunks(ROWS_PER_STATEMENT) {
            let ids: Vec<Uuid> = chunk.iter().map(|p| p.0).collect();
            let low: Vec<Uuid> = chunk.iter().map(|p| p.1).collect();
            let high: Vec<Uuid> = chunk.iter().map(|p| p.2).collect();
            sqlx::query(
                "INSERT INTO conversations (id, chat_type, user_low, user_high)
                 SELECT i, 'PRIVATE', l, h FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(i, l, h)",
            )
            .bind(ids)
            .bind(low)
            .bind(high)
            .execute(&self.db)
            .await?;
        }
        // Plans made from here on see the tables as they now are.
        self.analyze().await?;
        for chunk in members.chunks(ROWS_PER_STATEMENT) {
            let (conversations, users): (Vec<Uuid>, Vec<Uuid>) = chunk.iter().copied().unzip();
            sqlx::query(
                "INSERT INTO conversation_members (conversation_id, user_id)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[])",
            )
            .bind(conversations)
            .bind(users)
            .execute(&self.db)
            .await?;
        }
        self.analyze().await
    }

    /// Fills a room with `n` messages (seq 1..=n) in one statement.
    pub async fn history(&self, room: Uuid, author: Uuid, n: i64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO messages (id, conversation_id, seq, from_user_id, room_id, content, message_type, chat_type, created_at)
             SELECT gen_random_uuid(), $1, s, $2, $1, 'history message number ' || s, 'TEXT', 'ROOM', now()
             FROM generate_series(1, $3::bigint) AS s",
        )
        .bind(room)
        .bind(author)
        .bind(n)
        .execute(&self.db)
        .await?;
        sqlx::query(
            "UPDATE conversations SET last_seq = $2, last_message_at = now() WHERE id = $1",
        )
        .bind(room)
        .bind(n)
        .execute(&self.db)
        .await?;
        sqlx::query("ANALYZE messages").execute(&self.db).await?;
        Ok(())
    }

    /// A search corpus: `n` messages over `rooms` rooms. Each message has eight words drawn
    /// from a vocabulary of 5,000 (skewed: a few words are in most messages, most in few, as in
    /// real text); one in ten is instead a Chinese sentence of twelve characters out of 600.
    /// Returns the vocabulary, most frequent word first, and the Chinese characters.
    pub async fn search_corpus(
        &self,
        rooms: &[Uuid],
        author: Uuid,
        n: i64,
    ) -> anyhow::Result<(Vec<String>, Vec<char>)> {
        let per_room = (n / rooms.len().max(1) as i64).max(1);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let words: Vec<String> = (0..5000)
            .map(|i| {
                (0..3 + i % 7)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        char::from(b'a' + ((x >> 33) % 26) as u8)
                    })
                    .collect()
            })
            .collect();
        let han: Vec<char> = (0..600u32)
            .filter_map(|i| char::from_u32(0x4E00 + i * 7))
            .collect();
        for room in rooms {
            // The `s > 0` makes each subquery run per message (so random() is drawn anew);
            // random()^3 skews the draw towards the vocabulary's first words.
            sqlx::query(
                "INSERT INTO messages (id, conversation_id, seq, from_user_id, room_id, content, message_type, chat_type, created_at)
                 SELECT gen_random_uuid(), $1, s, $2, $1,
                        CASE WHEN s % 10 = 0 THEN
                            (SELECT string_agg(chr(19968 + 7 * floor(random() * 600)::int), '')
                             FROM generate_series(1, 12) AS k WHERE s > 0)
                        ELSE
                            (SELECT string_agg(($4::text[])[1 + floor(5000 * power(random(), 3))::int], ' ')
                             FROM generate_series(1, 8) AS k WHERE s > 0)
                        END,
                        'TEXT', 'ROOM', now() - make_interval(secs => ($3 - s)::double precision)
                 FROM generate_series(1, $3::bigint) AS s",
            )
            .bind(room)
            .bind(author)
            .bind(per_room)
            .bind(&words)
            .execute(&self.db)
            .await?;
            sqlx::query(
                "UPDATE conversations SET last_seq = $2, last_message_at = now() WHERE id = $1",
            )
            .bind(room)
            .bind(per_room)
            .execute(&self.db)
            .await?;
        }
        // What a deployment's search index looks like between bulk loads: the rows just
        // inserted merged into it (chat-service does so every 2 s, in the background, where it
        // would otherwise take the measured window's CPU for seconds).
        sqlx::query(
            "SELECT gin_clean_pending_list(i) FROM (SELECT to_regclass('messages_search_idx') AS i) s \
             WHERE i IS NOT NULL",
        )
        .execute(&self.db)
        .await?;
        sqlx::query("ANALYZE messages").execute(&self.db).await?;
        Ok((words, han))
    }
}
