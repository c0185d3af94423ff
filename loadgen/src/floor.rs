//! `loadgen floor`: what writing frames to loopback sockets costs the writer on this machine when
//! it does nothing else — the floor under a gateway's CPU per delivery.
//!
//! One thread writes, as a gateway's one runtime thread does, to `--sockets` connected loopback
//! sockets; reader threads (the same ones `fanout` uses) read them on the other end. Each round
//! writes to a group of `--group` sockets in turn, one `write` of `--frames` text frames of
//! `--frame-bytes` each per socket (520 by default, about the size of a `message` event in
//! `fanout`); rounds come `--rate` times a second. The patterns that match `fanout`'s, per
//! gateway:
//!
//! ```text
//! 200k deliveries/s (500 members per gateway, a write every 20 ms of ~4 frames):
//!     loadgen floor --sockets 500 --group 500 --frames 4 --rate 50
//! 20k deliveries/s (each message its own write to its room's 50 members on this gateway):
//!     loadgen floor --sockets 500 --group 50 --frames 1 --rate 200
//! hot room (2,500 members per gateway, one frame each, 20 messages a second):
//!     loadgen floor --sockets 2500 --group 2500 --frames 1 --rate 20
//! ```
//!
//! The writer's CPU comes from its own thread's `/proc` figures, user and system time, which is
//! what a gateway's process figures count for the same writes: on loopback the kernel does the
//! receiving socket's work (its TCP receive, waking its reader) in the writer's send call.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::{
    coding::{Data, OpCode},
    Frame,
};

use crate::{
    raw,
    scenarios::Outcome,
    stats::{cpu_seconds, machine_cpu_since, thread_cpu_seconds, CpuSnapshot},
};

/// How long the readers may take to catch up after the last write.
const DRAIN_PATIENCE: Duration = Duration::from_secs(5);

/// The write pattern.
pub struct Pattern {
    pub sockets: usize,
    pub group: usize,
    pub frames: usize,
    pub rate: u32,
    pub frame_bytes: usize,
    pub seconds: u64,
    pub readers: usize,
}

/// Counts the frames a reader thread sees, into a total the writer's side can watch.
struct Counter(Arc<AtomicU64>);

impl raw::Tally for Counter {
    fn text(&mut self, _payload: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the writing thread did and what it cost.
struct Written {
    writes: u64,
    /// Times a socket's buffer was full and the writer had to wait for its reader.
    stalls: u64,
    cpu_seconds: f64,
    wall: Duration,
}

pub fn floor(p: &Pattern) -> anyhow::Result<Outcome> {
    if p.sockets == 0 || p.group == 0 || p.group > p.sockets || p.frames == 0 || p.rate == 0 {
        bail!("--sockets, --group (at most --sockets), --frames and --rate must be positive");
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("listen on loopback")?;
    let address = listener.local_addr()?;
    let mut servers = Vec::with_capacity(p.sockets);
    let mut clients = Vec::with_capacity(p.sockets);
    for _ in 0..p.sockets {
        let client = TcpStream::connect(address).context("connect over loopback")?;
        let (server, _) = listener.accept()?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        server.set_nonblocking(true)?;
        clients.push(raw::unwrapped(client)?);
        servers.push(server);
    }
    let frame = Frame::message(vec![b'x'; p.frame_bytes], OpCode::Data(Data::Text), true);
    let mut one = Vec::with_capacity(frame.len());
    frame.format(&mut one)?;
    let bytes = one.repeat(p.frames);

    let seen = Arc::new(AtomicU64::new(0));
    let readers = raw::read_on_threads(clients, p.readers, |_| Counter(seen.clone()))?;
    let me = std::process::id();
    let process_before = cpu_seconds(me);
    let machine_before = CpuSnapshot::now();
    let deadline = Duration::from_secs(p.seconds);
    let pattern = (p.group, p.rate);
    let written = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || write_rounds(&servers, &bytes, pattern, deadline))?
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    let machine = machine_cpu_since(machine_before);
    let process_cpu = cpu_seconds(me)
        .zip(process_before)
        .map(|(after, before)| after - before);

    let expected = written.writes * p.frames as u64;
    let waited = Instant::now();
    while seen.load(Ordering::Relaxed) < expected && waited.elapsed() < DRAIN_PATIENCE {
        std::thread::sleep(Duration::from_millis(10));
    }
    readers.stop()?;
    let received = seen.load(Ordering::Relaxed);

    let wall = written.wall.as_secs_f64();
    let frames = expected as f64;
    let per_million = written.cpu_seconds / frames * 1e6;
    let per_write_us = written.cpu_seconds / written.writes as f64 * 1e6;
    // The readers are the rest of this process (the main thread only sleeps meanwhile).
    let reader_cores = process_cpu.map(|c| ((c - written.cpu_seconds) / wall).max(0.0));
    let json = json!({
        "scenario": "floor",
        "sockets": p.sockets, "group": p.group, "frames_per_write": p.frames,
        "rounds_per_second": p.rate, "frame_bytes": p.frame_bytes, "write_bytes": one.len() * p.frames,
        "seconds": wall, "writes": written.writes, "frames": expected, "received": received,
        "missing": expected.saturating_sub(received), "stalls": written.stalls,
        "writes_per_second": written.writes as f64 / wall,
        "frames_per_second": frames / wall,
        "writer_cores": written.cpu_seconds / wall,
        "writer_cpu_us_per_write": per_write_us,
        "writer_cpu_s_per_million_frames": per_million,
        "reader_cores": reader_cores,
        // For the record only: /proc/stat's busy time is sampled at the clock tick, and a writer
        // that sleeps between rounds runs mostly between ticks, so it reads low here (the
        // writer's own time, from its thread's figures, does not).
        "machine_cpu": machine,
    });
    let row = format!(
        "| floor | {} loopback sockets, one writing thread, rounds of {} writes of {} frame(s) of {} B, {}/s; no stack | {:.0} frames/s in {:.0} writes/s: writer {:.2} cores, **{:.2} CPU-s per million frames, {:.1} µs per write**; readers {:.2} cores; {} of {} frames read, {} stalls | none: about the least a gateway's writes of this pattern cost |",
        p.sockets,
        p.group,
        p.frames,
        p.frame_bytes,
        p.rate,
        frames / wall,
        written.writes as f64 / wall,
        written.cpu_seconds / wall,
        per_million,
        per_write_us,
        reader_cores.unwrap_or(f64::NAN),
        received,
        expected,
        written.stalls,
    );
    Ok(Outcome { json, row })
}

/// Writes rounds until `deadline` has passed: round `r` writes `bytes` once to each socket of
/// group `r mod (sockets / group)`, at `rate` rounds a second (late rounds go at once).
fn write_rounds(
    sockets: &[TcpStream],
    bytes: &[u8],
    (group, rate): (usize, u32),
    deadline: Duration,
) -> anyhow::Result<Written> {
    let groups = sockets.len() / group;
    let period = Duration::from_secs(1) / rate;
    let cpu_before = thread_cpu_seconds().context("/proc/thread-self/stat is unreadable")?;
    let started = Instant::now();
    let (mut writes, mut stalls) = (0u64, 0u64);
    let mut round = 0u32;
    while started.elapsed() < deadline {
        let due = period * round;
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let first = (round as usize % groups) * group;
        for socket in &sockets[first..first + group] {
            stalls += write_whole(socket, bytes)?;
            writes += 1;
        }
        round += 1;
    }
    let wall = started.elapsed();
    let cpu = thread_cpu_seconds().context("/proc/thread-self/stat is unreadable")?;
    Ok(Written {
        writes,
        stalls,
        cpu_seconds: cpu - cpu_before,
        wall,
    })
}

/// Writes `bytes` whole to a non-blocking socket; how many times it found the buffer full.
fn write_whole(mut socket: &TcpStream, mut bytes: &[u8]) -> anyhow::Result<u64> {
    use std::io::{ErrorKind, Write};
    let mut stalls = 0;
    while !bytes.is_empty() {
        match socket.write(bytes) {
            Ok(0) => bail!("a loopback socket took nothing"),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                stalls += 1;
                if stalls > 25_000 {
                    bail!("a loopback socket stayed full for 5 s");
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(stalls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_written_is_read_and_the_writer_is_charged() {
        let pattern = Pattern {
            sockets: 6,
            group: 3,
            frames: 2,
            rate: 200,
            frame_bytes: 300,
            seconds: 1,
            readers: 2,
        };
        let outcome = floor(&pattern).unwrap();
        let j = &outcome.json;
        let writes = j["writes"].as_u64().unwrap();
        // About 200 rounds of 3 writes (a 300-byte frame has a 4-byte header); a slow machine
        // may fall behind, never ahead.
        assert!((300..=606).contains(&writes), "{j}");
        assert_eq!(j["frames"].as_u64(), Some(writes * 2));
        assert_eq!(j["received"], j["frames"], "{j}");
        assert_eq!(j["missing"].as_u64(), Some(0));
        assert_eq!(j["write_bytes"].as_u64(), Some(2 * (4 + 300)));
        assert!(
            outcome.row.starts_with("| floor | 6 loopback sockets"),
            "{}",
            outcome.row
        );
    }

    #[test]
    fn a_group_larger_than_the_sockets_is_refused() {
        let pattern = Pattern {
            sockets: 2,
            group: 3,
            frames: 1,
            rate: 10,
            frame_bytes: 10,
            seconds: 1,
            readers: 1,
        };
        assert!(floor(&pattern).is_err());
    }
}
