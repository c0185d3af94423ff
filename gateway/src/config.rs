//! Gateway settings. `.env.example` documents each variable.

use std::time::Duration;

use shared::config::{self, ConfigError, JwtConfig, RedisConfig, ServerConfig, HOUR_MS};

/// Everything the gateway reads at start.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `HOST`, `PORT` (default 8003).
    pub server: ServerConfig,
    /// `REDIS_URL`, `REDIS_PREFIX`.
    pub redis: RedisConfig,
    /// `SECRET_KEY`, `ACCESS_TOKEN_EXPIRE_MINUTES`: tokens are verified locally.
    pub jwt: JwtConfig,
    /// `ALLOWED_ORIGINS`: browser origins allowed to open WebSockets (exact match).
    pub allowed_origins: Vec<String>,
    /// `DEBUG`.
    pub debug: bool,
    /// `CHAT_SERVICE_URL`: chat-service's internal API (default `http://127.0.0.1:8002`).
    pub chat_service_url: String,
    /// `HEARTBEAT_INTERVAL_MS`: server pings this often; three silent intervals close the
    /// connection (default 25000).
    pub heartbeat_interval: Duration,
    /// `MAX_CONNECTIONS`: connections this node accepts (default 18000).
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_USER`: connections one user may hold on this node (default 20).
    pub max_connections_per_user: usize,
    /// `OUTBOUND_QUEUE`: frames queued per connection (default 256). Ephemeral events are
    /// dropped from half full. A burst may take the queue past it, up to four times it; a client
    /// whose queue stays past it for longer than `SLOW_CONSUMER_GRACE_MS` (default 5000), or
    /// reaches four times it, is too slow and is closed with 4008.
    pub outbound_queue: usize,
    pub slow_consumer_grace: Duration,
    /// `SEND_ENTRY_MAX_COMMANDS`: the most `send_message` commands one send-stream entry
    /// gathers (default 64). 1 writes one command per entry, which every chat-service version
    /// reads: use it while chat-service replicas older than gathered entries still run.
    pub send_entry_max_commands: usize,
    /// `SEND_PARTITIONS` (default 1): partitions of the send stream, as chat-service has them.
    pub send_partitions: u16,
    /// `SEND_RATE_PER_SECOND` and `SEND_BURST`: the send rate per user, across their sockets
    /// on every gateway and REST sends (20, 40).
    pub send_rate: shared::limits::Rate,
    /// `SYNC_RATE_PER_SECOND` and `SYNC_BURST`: `sync`s per user across their sockets on every
    /// gateway (5 a second, bursts of 40: every tab of a user reconnecting at once, and the
    /// pages of a long catch-up). One sync of 100 positions is hundreds of queries.
    pub sync_rate: shared::limits::Rate,
    /// `SEND_STREAM_MAX_ENTRIES`: while the send stream holds more entries than this (its
    /// consumers are behind: Postgres down, say), sends are refused with `unavailable`
    /// (default 20000).
    pub send_stream_max_entries: u64,
    /// `CONNECT_RATE_PER_SECOND` and `CONNECT_BURST`: WebSocket upgrades per user across every
    /// gateway (1 a second, bursts of 40: every tab of a user reconnecting twice at once);
    /// past it, 429 `rate_limited` with `Retry-After`.
    pub connect_rate: shared::limits::Rate,
    /// `INBOUND_FRAME_RATE_PER_SECOND` and `INBOUND_FRAME_BURST`: the pace at which each
    /// connection's frames are read (100 a second, bursts of 200; a frame counts one more per
    /// 8 KiB of payload). Past it the socket is read more slowly; nothing is refused.
    pub inbound_frame_rate: shared::limits::Rate,
    /// `TYPING_RATE_PER_SECOND`: `typing` frames per user across their sockets on every
    /// gateway (default 4, bursts of twice as many); each socket is held to it too before
    /// Redis is asked.
    pub typing_rate_per_second: u32,
    /// `WS_READ_BUFFER_BYTES`: tungstenite's read buffer per connection, allocated when the
    /// connection opens, and the most read per `read()` (default 1024: a typical chat frame in
    /// one read, and a quarter of the memory of 4096 on every idle connection; frames larger
    /// than it still arrive, the buffer grows for them).
    pub ws_read_buffer_bytes: usize,
    /// `WS_WRITE_BUFFER_BYTES`: tungstenite's write buffer, which now carries only its control
    /// frames (pings, pongs, close; default 16384). Data frames bypass it (see
    /// `connection::wire`).
    pub ws_write_buffer_bytes: usize,
    /// `SOCKET_SEND_BUFFER_BYTES`: the kernel's send buffer of each connection's socket
    /// (`SO_SNDBUF`; default 131072, which Linux doubles for its bookkeeping; 0 leaves it to
    /// the kernel's autotuning). Fixed, it keeps what a client has not read in the outbound
    /// queue, where `OUTBOUND_QUEUE` bounds it and a client that stops reading is closed with
    /// 4008; autotuned, the kernel holds up to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default)
    /// per socket first, memory no setting of this process bounds. A chat connection needs far
    /// less: even a full `synced` frame leaves it in a few round trips.
    pub socket_send_buffer_bytes: usize,
    /// `MAX_FRAME_BYTES`: a larger incoming frame closes the connection with 1009 (default 65536).
    pub max_frame_bytes: usize,
    /// `PRESENCE_TTL_SECONDS`: a gateway's claim on its users lasts this long unless renewed
    /// (every third of it), so the users of a gateway that died drop out within it (default 45).
    pub presence_ttl: Duration,
    /// `UPGRADES_IN_FLIGHT`: upgrades this node prepares at once (each asks chat-service for
    /// the user's conversations; default 64). Past it the upgrade is refused with 503 and a
    /// `Retry-After` of 1–5 s, jittered, so the clients of a gateway that died come back paced.
    pub upgrades_in_flight: usize,
    /// `REDIS_CLUSTER_CHECK_MS`: on a Redis Cluster, how often the node reads the slot map to
    /// notice slots that moved and subscribe their channels where they are now (default 2000).
    pub redis_cluster_check: Duration,
    /// `REAUTH_NOTICE_SECONDS`: `token_expiring` goes out this long before the connection's
    /// token expires (default 60); at the expiry, without a `reauth`, it closes with 4001.
    pub reauth_notice: Duration,
    /// `SHUTDOWN_GRACE_SECONDS`: how long a SIGTERM'd gateway drains before exiting (default 20).
    pub shutdown_grace: Duration,
    /// `SHUTDOWN_SPREAD_SECONDS`: closes (1012) are spread over this window so clients do not
    /// all reconnect at once (default 10; kept below the grace period).
    pub shutdown_spread: Duration,
}

impl GatewayConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        const MIB: usize = 1024 * 1024;
        let grace: u64 = config::between("SHUTDOWN_GRACE_SECONDS", 20, 0, 3600)?;
        let spread: u64 = config::between("SHUTDOWN_SPREAD_SECONDS", 10, 0, 3600)?;
        Ok(Self {
            server: ServerConfig::from_env(8003, 10)?,
            redis: RedisConfig::from_env()?,
            jwt: JwtConfig::from_env()?,
            allowed_origins: config::allowed_origins()?,
            debug: config::debug()?,
            chat_service_url: config::http_url("CHAT_SERVICE_URL", "http://127.0.0.1:8002")?,
            heartbeat_interval: config::millis("HEARTBEAT_INTERVAL_MS", 25_000, 1, HOUR_MS)?,
            max_connections: config::between("MAX_CONNECTIONS", 18_000, 1, 10_000_000)?,
            max_connections_per_user: config::between("MAX_CONNECTIONS_PER_USER", 20, 1, 100_000)?,
            outbound_queue: config::between("OUTBOUND_QUEUE", 256, 1, 1_000_000)?,
            slow_consumer_grace: config::millis("SLOW_CONSUMER_GRACE_MS", 5_000, 0, HOUR_MS)?,
            send_partitions: config::send_partitions()?,
            send_entry_max_commands: config::parsed::<usize>("SEND_ENTRY_MAX_COMMANDS", 64)?
                .clamp(1, 1024),
            send_rate: config::send_rate()?,
            sync_rate: sync_rate()?,
            send_stream_max_entries: config::between(
                "SEND_STREAM_MAX_ENTRIES",
                20_000,
                1,
                100_000_000,
            )?,
            connect_rate: config::rate(
                "CONNECT_RATE_PER_SECOND",
                "CONNECT_BURST",
                shared::limits::Rate {
                    per_second: 1,
                    burst: 40,
                },
            )?,
            inbound_frame_rate: config::rate(
                "INBOUND_FRAME_RATE_PER_SECOND",
                "INBOUND_FRAME_BURST",
                shared::limits::Rate {
                    per_second: 100,
                    burst: 200,
                },
            )?,
            typing_rate_per_second: config::between("TYPING_RATE_PER_SECOND", 4, 1, 1000)?,
            ws_read_buffer_bytes: config::between("WS_READ_BUFFER_BYTES", 1024, 1, 16 * MIB)?,
            ws_write_buffer_bytes: config::between(
                "WS_WRITE_BUFFER_BYTES",
                16 * 1024,
                0,
                16 * MIB,
            )?,
            socket_send_buffer_bytes: config::between(
                "SOCKET_SEND_BUFFER_BYTES",
                128 * 1024,
                0,
                64 * MIB,
            )?,
            max_frame_bytes: config::between("MAX_FRAME_BYTES", 64 * 1024, 1, 16 * MIB)?,
            presence_ttl: config::seconds(
                "PRESENCE_TTL_SECONDS",
                shared::presence::TTL_SECONDS,
                1,
                86_400,
            )?,
            reauth_notice: config::seconds("REAUTH_NOTICE_SECONDS", 60, 0, 86_400)?,
            upgrades_in_flight: config::between("UPGRADES_IN_FLIGHT", 64, 1, 100_000)?,
            redis_cluster_check: config::millis("REDIS_CLUSTER_CHECK_MS", 2_000, 100, HOUR_MS)?,
            shutdown_grace: Duration::from_secs(grace),
            shutdown_spread: Duration::from_secs(spread.min(grace.saturating_sub(2))),
        })
    }
}

/// `SYNC_RATE_PER_SECOND` (default 5) and `SYNC_BURST` (default 40), each at least 1.
fn sync_rate() -> Result<shared::limits::Rate, ConfigError> {
    config::rate(
        "SYNC_RATE_PER_SECOND",
        "SYNC_BURST",
        shared::limits::Rate {
            per_second: 5,
            burst: 40,
        },
    )
}
