//! gateway: holds WebSocket connections and fans events out to them. Any number of gateways
//! run behind a load balancer; they share nothing but Redis and never talk to each other.
//!
//! - [`config`] — settings.
//! - [`ws`] — `GET /ws`: authentication, origin, caps and the upgrade.
//! - [`connection`] — one connection's loop: frames in, queued frames out, heartbeats, its
//!   token's life; [`connection::state`] is what it shares with the dispatcher (its bounded
//!   queue and cursors).
//! - [`hub`] — the node's registry, Redis subscriptions, ordering, gap repair and fan-out.
//! - [`presence`] — online/offline across gateways.
//! - [`protocol`] — the contract's envelopes, JSON or MessagePack.
//! - [`chat_client`] — chat-service's internal API.
//! - [`sends`] — the node's writer to the send stream (sends gathered into one `XADD`).

pub mod chat_client;
pub mod config;
pub mod connection;
pub mod hub;
pub mod presence;
pub mod protocol;
pub mod sends;
pub mod ws;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{routing::get, Router};
use fred::prelude::*;
use shared::{health::HealthState, http::EdgeConfig, jwt::JwtKeys, keys::Keys};
use tokio::{net::TcpListener, sync::watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::Instrument;

pub use config::GatewayConfig;

/// The send bus and event publishing, through the node's command connection.
pub struct Bus {
    pub(crate) redis: Client,
    /// `send_message` commands on their way to the send stream.
    pub sends: sends::Sends,
}

impl Bus {
    /// Publishes an ephemeral event (typing).
    pub async fn publish(&self, channel: String, bytes: Vec<u8>) {
        let span = shared::telemetry::traced(None, || {
            tracing::info_span!(
                "redis.publish",
                otel.kind = "producer",
                messaging.system = "redis",
                channels = 1,
            )
        });
        let sent = shared::redis::publish(&self.redis, &channel, bytes)
            .instrument(span)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "ephemeral publish failed");
        }
    }
}

/// Everything connections share.
pub struct Gateway {
    pub config: GatewayConfig,
    pub jwt: Arc<JwtKeys>,
    pub hub: hub::Hub,
    pub bus: Bus,
    pub presence: presence::Presence,
    /// Upgrades being prepared (`UPGRADES_IN_FLIGHT`).
    pub upgrades: Arc<tokio::sync::Semaphore>,
    /// Revoked logins and deactivated accounts (checked at the upgrade and at `reauth`).
    pub revocations: Arc<shared::revocation::Revocations>,
    /// Turns true when the node is shutting down.
    pub shutdown: watch::Receiver<bool>,
}

impl Gateway {
    /// tungstenite's buffers, sized deliberately: its defaults reserve 128 KiB per connection.
    pub fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.config.ws_read_buffer_bytes)
            .write_buffer_size(self.config.ws_write_buffer_bytes)
            .max_write_buffer_size(
                self.config
                    .ws_write_buffer_bytes
                    .max(self.config.max_frame_bytes)
                    * 4,
            )
            .max_message_size(Some(self.config.max_frame_bytes))
            .max_frame_size(Some(self.config.max_frame_bytes))
    }
}

/// A bound, ready-to-run gateway.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    gateway: Arc<Gateway>,
    subscriber: Client,
    hub_tasks: hub::Tasks,
    writer: sends::Writer,
    stop: watch::Sender<bool>,
}

impl Application {
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        shared::metrics::zero_counters(&[
            "gateway_connections_opened_total",
            "gateway_connections_closed_total",
            "gateway_slow_consumer_closes_total",
            "gateway_gaps_detected_total",
            "gateway_gap_messages_repaired_total",
            "gateway_repair_failures_total",
            "gateway_redis_reconnects_total",
            "gateway_send_append_failures_total",
            "gateway_upgrades_shed_total",
            "gateway_held_messages_dropped_total",
        ]);
        metrics::gauge!("gateway_connections").set(0.0);
        metrics::gauge!("gateway_connections_max").set(config.max_connections as f64);
        let redis = shared::redis::connect(&config.redis).context("REDIS_URL")?;
        if !shared::redis::wait_until_ready(&redis, Duration::from_secs(5)).await {
            tracing::warn!("Redis is not answering yet");
        }
        let subscriber =
            Builder::from_config(Config::from_url(&config.redis.url).context("REDIS_URL")?)
                .with_performance_config(|c| {
                    // Events queue here between the socket and the dispatcher; a lagging dispatcher
                    // is detected and repaired, but should be rare.
                    c.broadcast_channel_capacity = 65_536;
                    c.default_command_timeout = Duration::from_secs(5);
                })
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    // (Un)subscribes go out at once, not behind an unacknowledged one.
                    c.tcp = TcpConfig {
                        nodelay: Some(true),
                        ..Default::default()
                    };
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
                .build()
                .context("REDIS_URL")?;
        subscriber.connect();
        let keys = Keys::new(config.redis.prefix.clone());
        let jwt = Arc::new(JwtKeys::new(&config.jwt));
        let chat = chat_client::ChatClient::new(&config.chat_service_url, jwt.clone())
            .context("CHAT_SERVICE_URL")?;
        let node = format!("gw-{}", uuid::Uuid::new_v4().simple());
        let (sends, writer) = sends::channel(
            redis.clone(),
            keys.clone(),
            sends::Settings {
                max_per_entry: config.send_entry_max_commands,
                rate: config.send_rate,
                max_backlog: config.send_stream_max_entries,
                partitions: config.send_partitions,
            },
        );
        let (stop, shutdown) = watch::channel(false);
        let revocations = shared::revocation::Revocations::start(
            redis.clone(),
            keys.clone(),
            &jwt,
            config.jwt.revocation_poll,
        )
        .await;
        let (hub, hub_tasks) = hub::Hub::new(
            subscriber.clone(),
            keys.clone(),
            chat,
            config.max_connections,
            config.max_connections_per_user,
            revocations.clone(),
        );
        let gateway = Arc::new(Gateway {
            hub,
            bus: Bus {
                redis: redis.clone(),
                sends,
            },
            presence: presence::Presence::new(redis.clone(), keys, node, config.presence_ttl),
            revocations,
            upgrades: Arc::new(tokio::sync::Semaphore::new(config.upgrades_in_flight)),
            jwt,
            shutdown,
            config: config.clone(),
        });
        let health = HealthState {
            service: "gateway",
            version: env!("CARGO_PKG_VERSION"),
            db: None,
            redis: Some(redis),
            ready: shared::health::Readiness::new(config.server.ready_grace),
        };
        let router = Router::new()
            .route("/ws", get(ws::handler))
            .with_state(gateway.clone())
            .merge(shared::health::router(health));
        let router = shared::http::finish(
            router,
            &EdgeConfig {
                allowed_origins: config.allowed_origins.clone(),
                max_body_bytes: 64 * 1024,
                body_timeout: config.server.body_timeout,
            },
        );
        let (listener, port) = shared::server::bind(&config.server).await?;
        Ok(Self {
            listener,
            router,
            port,
            gateway,
            subscriber,
            hub_tasks,
            writer,
            stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state, for tests and embedding (connection counts).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// The Redis id of the node's subscriber connection (tests kill it to simulate a Redis
    /// outage). Ask before any client connects: a subscribed connection answers nothing else.
    pub async fn subscriber_redis_id(&self) -> Result<i64, Error> {
        self.subscriber.wait_for_connect().await?;
        self.subscriber.client_id().await
    }

    /// Serves until SIGTERM or SIGINT, then drains: no new connections, every open one closed
    /// with 1012 at a random moment within `SHUTDOWN_SPREAD_SECONDS` after its queue is written,
    /// and exit within `SHUTDOWN_GRACE_SECONDS`.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shared::shutdown::signal()).await
    }

    /// As [`Application::run_until_stopped`], stopping when `stop` completes (tests use this).
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(port = self.port, "gateway listening");
        let gw = self.gateway;
        let tasks = [
            tokio::spawn(dispatch(gw.clone(), self.subscriber.clone())),
            tokio::spawn(self.hub_tasks.subscriber.run()),
            tokio::spawn(hub::repair::run(gw.clone(), self.hub_tasks.repairs)),
            tokio::spawn(watch_reconnects(gw.clone(), self.subscriber.clone())),
            tokio::spawn(watch_topology(gw.clone(), self.subscriber.clone())),
            tokio::spawn(refresh_presence(gw.clone())),
            tokio::spawn(close_revoked(gw.clone())),
            tokio::spawn(self.writer.watch_backlog()),
            tokio::spawn(self.writer.run()),
        ];
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let served = shared::server::serve_until(
            self.listener,
            self.router,
            gw.config.server.header_timeout,
            async move {
                stop.await;
                let _ = stopping_tx.send(());
            },
        )
        .await;
        let _ = stopping_rx.await;
        tracing::info!(
            connections = gw.hub.connection_count(),
            "draining connections"
        );
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + gw.config.shutdown_grace;
        while (gw.hub.connection_count() > 0 || gw.bus.sends.unfinished() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for t in tasks {
            t.abort();
        }
        served
    }
}

/// Reads every event from the node's subscriber connection and fans it out.
///
/// What has arrived by the time the dispatcher wakes (up to [`DISPATCH_RUN`] payloads) is
/// delivered corked (see [`connection::wire::corked`]): each connection's frames from all of it
/// leave in one write, as many as a busy moment brings, while a quiet moment's single event goes
/// out at once.
async fn dispatch(gw: Arc<Gateway>, subscriber: Client) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};

    let mut messages = subscriber.message_rx();
    loop {
        let first = messages.recv().await;
        let open = connection::wire::corked(|| {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(received) = next.take() {
                match received {
                    Ok(m) => {
                        let channel = m.channel.to_string();
                        match m.value.as_bytes() {
                            Some(bytes) => gw.hub.dispatch(&channel, bytes),
                            None => tracing::warn!(%channel, "non-binary event dropped"),
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "dispatcher lagged; repairing from history");
                        metrics::counter!("gateway_dispatch_lagged_total").increment(1);
                        gw.hub.repair_all();
                    }
                    Err(RecvError::Closed) => return false,
                }
                taken += 1;
                if taken < DISPATCH_RUN {
                    next = match messages.try_recv() {
                        Ok(m) => Some(Ok(m)),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                    };
                }
            }
            true
        });
        if !open {
            return;
        }
    }
}

/// The most payloads delivered under one cork: the first one's frames wait for the rest.
const DISPATCH_RUN: usize = 64;

/// After the subscriber connection comes back, subscribe again and repair what was missed.
async fn watch_reconnects(gw: Arc<Gateway>, subscriber: Client) {
    let mut reconnects = subscriber.reconnect_rx();
    while reconnects.recv().await.is_ok() {
        metrics::counter!("gateway_redis_reconnects_total").increment(1);
        tracing::info!("Redis subscriber connected; subscribing again and checking for gaps");
        gw.hub.resubscribe_all().await;
    }
}

/// On a cluster: reads the slot map every `REDIS_CLUSTER_CHECK_MS`; the channels of every slot
/// whose primary changed (a resharding, a failover) are subscribed again where the slot is now
/// — a sharded subscription ends when its slot leaves a node — and their conversations checked
/// for what was published meanwhile.
async fn watch_topology(gw: Arc<Gateway>, subscriber: Client) {
    if !subscriber.is_clustered() {
        return;
    }
    let mut known = subscriber.cached_cluster_state();
    let mut every = tokio::time::interval(gw.config.redis_cluster_check);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = subscriber.sync_cluster().await {
            tracing::debug!(error = %e, "cluster check failed");
            continue;
        }
        let now = subscriber.cached_cluster_state();
        let (Some(before), Some(after)) = (&known, &now) else {
            known = now;
            continue;
        };
        if before.slots() != after.slots() {
            metrics::counter!("gateway_cluster_changes_total").increment(1);
            let moved = gw
                .hub
                .resubscribe(|name| {
                    let slot = fred::util::redis_keyslot(name.as_bytes());
                    before.get_server(slot) != after.get_server(slot)
                })
                .await;
            tracing::info!(
                channels = moved,
                "cluster slots moved; channels subscribed again"
            );
            known = now;
        }
    }
}

/// Closes the local sockets of every revocation the node learns by polling: the fallback for a
/// node that missed the live event (its subscriber was reconnecting, say).
async fn close_revoked(gw: Arc<Gateway>) {
    let mut news = gw.revocations.subscribe();
    loop {
        match news.recv().await {
            Ok(revocation) => gw
                .hub
                .revoke(|user, sid| revocation.covers(user, sid), revocation.user()),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed some: check every local socket against what is known.
                let all = gw.hub.all_connections();
                for conn in all {
                    if gw.revocations.check(conn.user, conn.login()).is_some() {
                        conn.revoke();
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn refresh_presence(gw: Arc<Gateway>) {
    let mut every = tokio::time::interval(gw.presence.refresh_every());
    loop {
        every.tick().await;
        let sockets: Vec<(uuid::Uuid, String)> = gw
            .hub
            .all_connections()
            .iter()
            .map(|c| (c.user, c.session.clone()))
            .collect();
        gw.presence.refresh(&gw.hub.local_users(), &sockets).await;
    }
}
