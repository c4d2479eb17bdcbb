//! QUIC transport over real sockets on 127.0.0.1. Every test is bounded by
//! a timeout so a regression fails instead of hanging CI.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use meridian_transport::{Feedback, PeerBatch, RaftEnvelope, SnapshotChunk, Transport};
use meridian_transport_quic::{node_server_name, DevCa, QuicConfig, QuicTransport, TlsMaterial};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a test body under its time bound. Set `RUST_LOG=meridian_transport=debug`
/// to see the transport's logs of a failing run.
async fn bounded<F: Future<Output = ()>>(f: F) {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    timeout(TEST_TIMEOUT, f).await.expect("test exceeded its time bound");
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Node {
    t: QuicTransport,
    rx: mpsc::Receiver<RaftEnvelope>,
}

fn start_with(node_id: u64, listen: SocketAddr, tls: TlsMaterial, queue: usize) -> Result<Node, String> {
    let (tx, rx) = mpsc::channel(4096);
    let mut config = QuicConfig::new(node_id, listen, tls);
    config.peer_queue_batches = queue;
    let t = QuicTransport::start(config, tx).map_err(|e| e.to_string())?;
    Ok(Node { t, rx })
}

fn start(ca: &DevCa, node_id: u64) -> Node {
    start_with(node_id, any_port(), ca.issue(node_id).unwrap(), 1024).unwrap()
}

/// Rebinding a just-released port can race the old socket's teardown.
async fn restart_on(ca: &DevCa, node_id: u64, addr: SocketAddr) -> Node {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match start_with(node_id, addr, ca.issue(node_id).unwrap(), 1024) {
            Ok(node) => return node,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}; retrying");
                sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("could not rebind {addr}: {e}"),
        }
    }
}

fn connect_pair(a: &Node, b: &Node) {
    a.t.set_peer_addr(b.t.node_id(), b.t.local_addr());
    b.t.set_peer_addr(a.t.node_id(), a.t.local_addr());
}

/// A heartbeat whose `commit` carries a sequence number.
fn heartbeat(range_id: u64, seq: u64) -> RaftEnvelope {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.commit = seq;
    RaftEnvelope { range_id, message: m.write_to_bytes().unwrap(), ..Default::default() }
}

fn seq_of(env: &RaftEnvelope) -> u64 {
    env.raft_message().unwrap().commit
}

fn snapshot(range_id: u64, data_bytes: usize) -> RaftEnvelope {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.mut_snapshot().mut_metadata().index = 42;
    m.mut_snapshot().mut_metadata().term = 3;
    let data: Vec<u8> = (0..data_bytes).map(|i| (i % 251) as u8).collect();
    m.mut_snapshot().set_data(data.into());
    let env = RaftEnvelope { range_id, message: m.write_to_bytes().unwrap(), ..Default::default() };
    assert!(env.is_snapshot());
    env
}

async fn recv_n(rx: &mut mpsc::Receiver<RaftEnvelope>, n: usize) -> Vec<RaftEnvelope> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.push(rx.recv().await.expect("inbound channel closed"));
    }
    got
}

/// Polls feedback until `want` shows up or `within` passes; returns all seen.
async fn wait_for_feedback(t: &QuicTransport, want: Feedback, within: Duration) -> Vec<Feedback> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        t.drain_feedback(&mut seen);
        if seen.contains(&want) {
            return seen;
        }
        assert!(Instant::now() < deadline, "no {want:?} within {within:?}; saw {seen:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts nothing arrives for `quiet`.
async fn assert_silent(rx: &mut mpsc::Receiver<RaftEnvelope>, quiet: Duration) {
    if let Ok(Some(env)) = timeout(quiet, rx.recv()).await {
        panic!("unexpected delivery: {env:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_flow_both_ways_in_send_order() {
    bounded(async {
        let ca = DevCa::generate().unwrap();
        let (mut a, mut b) = (start(&ca, 1), start(&ca, 2));
        connect_pair(&a, &b);
        const BATCHES: u64 = 100;
        const PER_BATCH: u64 = 5;
        for i in 0..BATCHES {
            let batch = |range| (0..PER_BATCH).map(|j| heartbeat(range, i * PER_BATCH + j)).collect();
            a.t.send(2, batch(10));
            b.t.send(1, batch(20));
        }
        let n = (BATCHES * PER_BATCH) as usize;
        let at_b = recv_n(&mut b.rx, n).await;
        let at_a = recv_n(&mut a.rx, n).await;
        assert_eq!(at_b.iter().map(seq_of).collect::<Vec<_>>(), (0..n as u64).collect::<Vec<_>>());
        assert_eq!(at_a.iter().map(seq_of).collect::<Vec<_>>(), (0..n as u64).collect::<Vec<_>>());
        assert!(at_b.iter().all(|e| (e.range_id, e.from_node, e.to_node) == (10, 1, 2)));
        assert!(at_a.iter().all(|e| (e.range_id, e.from_node, e.to_node) == (20, 2, 1)));
        let mut fb = Vec::new();
        a.t.drain_feedback(&mut fb);
        b.t.drain_feedback(&mut fb);
        assert!(fb.is_empty(), "nothing was lost: {fb:?}");
        a.t.shutdown().await;
        b.t.shutdown().await;
    })
    .await;
}

/// A snapshot of `chunks` chunks of `chunk_bytes` each, then its MsgSnapshot.
struct ChunkedSnapshot {
    range_id: u64,
    chunks: u64,
    chunk_bytes: usize,
    next: u64,
}

impl meridian_transport::SnapshotStream for ChunkedSnapshot {
    fn range_id(&self) -> u64 {
        self.range_id
    }

    fn next_envelope(&mut self) -> Result<Option<RaftEnvelope>, meridian_transport::TransportError> {
        let seq = self.next;
        self.next += 1;
        if seq < self.chunks {
            let data = (0..self.chunk_bytes).map(|i| ((i as u64 + seq) % 251) as u8).collect();
            let chunk = SnapshotChunk { index: 42, term: 3, seq, data, last: seq + 1 == self.chunks, total_keys: 0 };
            return Ok(Some(RaftEnvelope { range_id: self.range_id, chunk: Some(chunk), ..Default::default() }));
        }
        Ok((seq == self.chunks).then(|| snapshot(self.range_id, 16)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_snapshot_is_delivered_intact_without_blocking_heartbeats() {
    bounded(async {
        let ca = DevCa::generate().unwrap();
        let (a, mut b) = (start(&ca, 1), start(&ca, 2));
        connect_pair(&a, &b);
        // Establish the connection first so the snapshot starts streaming at once.
        a.t.send(2, vec![heartbeat(8, 0)]);
        assert_eq!(seq_of(&recv_n(&mut b.rx, 1).await[0]), 0);

        let chunks = 5;
        a.t.send_snapshot(2, Box::new(ChunkedSnapshot { range_id: 7, chunks, chunk_bytes: 1 << 20, next: 0 }));
        for seq in 1..=20 {
            a.t.send(2, vec![heartbeat(8, seq)]);
        }
        let got = recv_n(&mut b.rx, 20 + chunks as usize + 1).await;
        let (snaps, rest): (Vec<_>, Vec<_>) = got.into_iter().partition(|e| e.range_id == 7);
        let beats: Vec<_> = rest.iter().map(seq_of).collect();
        assert_eq!(beats, (1..=20).collect::<Vec<_>>(), "heartbeats all arrive, in order, beside the snapshot");
        assert_eq!(snaps.len(), chunks as usize + 1);
        for (seq, env) in snaps[..chunks as usize].iter().enumerate() {
            let c = env.chunk.as_ref().expect("chunks come first");
            assert_eq!(c.seq, seq as u64, "chunks arrive in order");
            assert_eq!((env.from_node, env.to_node), (1, 2));
            let want: Vec<u8> = (0..1usize << 20).map(|i| ((i as u64 + seq as u64) % 251) as u8).collect();
            assert!(c.data == want, "chunk {seq} bytes differ");
        }
        let last = snaps.last().unwrap();
        assert!(last.is_snapshot(), "the MsgSnapshot comes last");
        assert_eq!(last.raft_message().unwrap().get_snapshot().get_metadata().index, 42);

        let fb = wait_for_feedback(&a.t, Feedback::Snapshot { range_id: 7, to_node: 2, ok: true }, Duration::from_secs(10)).await;
        assert!(!fb.iter().any(|f| matches!(f, Feedback::Unreachable { .. })), "{fb:?}");
        a.t.shutdown().await;
        b.t.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_silent_peers_are_reported_unreachable() {
    bounded(async {
        let ca = DevCa::generate().unwrap();
        // A tiny queue shows that a full queue drops instead of blocking.
        let a = start_with(1, any_port(), ca.issue(1).unwrap(), 2).unwrap();

        // Unknown node: reported synchronously, snapshots as failed snapshots.
        a.t.send(9, vec![heartbeat(5, 0), snapshot(6, 16)]);
        let mut fb = Vec::new();
        a.t.drain_feedback(&mut fb);
        assert_eq!(fb, vec![Feedback::Unreachable { range_id: 5, to_node: 9 }, Feedback::Snapshot { range_id: 6, to_node: 9, ok: false },]);

        // A known address where nobody listens: free a port and keep it free.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        a.t.set_peer_addr(3, silent);
        let started = Instant::now();
        for i in 0..10 {
            a.t.send(3, vec![heartbeat(100 + i, 0)]);
        }
        assert!(started.elapsed() < Duration::from_millis(200), "send must not block");
        let mut fb = Vec::new();
        a.t.drain_feedback(&mut fb);
        assert!(fb.len() >= 8, "batches beyond the queue bound are dropped at once: {fb:?}");
        // The queued ones are reported once the dial fails.
        wait_for_feedback(&a.t, Feedback::Unreachable { range_id: 100, to_node: 3 }, Duration::from_secs(15)).await;
        a.t.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_is_reached_again() {
    bounded(async {
        let ca = DevCa::generate().unwrap();
        let (a, mut b) = (start(&ca, 1), start(&ca, 2));
        connect_pair(&a, &b);
        a.t.send(2, vec![heartbeat(1, 0)]);
        recv_n(&mut b.rx, 1).await;

        let b_addr = b.t.local_addr();
        b.t.shutdown().await;
        drop(b);
        let mut b = restart_on(&ca, 2, b_addr).await;

        // Keep sending, as raft would, until the redialled connection delivers.
        let mut seq = 1;
        let delivered = loop {
            a.t.send(2, vec![heartbeat(1, seq)]);
            seq += 1;
            if let Ok(Some(env)) = timeout(Duration::from_millis(100), b.rx.recv()).await {
                break env;
            }
        };
        assert_eq!((delivered.from_node, delivered.to_node), (1, 2));
        a.t.shutdown().await;
        b.t.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_are_rejected_both_ways() {
    bounded(async {
        let ca = DevCa::generate().unwrap();
        let other = DevCa::generate().unwrap();
        // Trusts our CA (so it would accept our server) but holds a foreign cert.
        let foreign = |node_id| TlsMaterial { ca_pem: ca.ca_pem(), ..other.issue(node_id).unwrap() };

        // Foreign client → our server: the server refuses it.
        let mut b = start(&ca, 2);
        let rogue_client = start_with(1, any_port(), foreign(1), 1024).unwrap();
        rogue_client.t.set_peer_addr(2, b.t.local_addr());
        for seq in 0..20 {
            rogue_client.t.send(2, vec![heartbeat(1, seq)]);
            sleep(Duration::from_millis(50)).await;
        }
        assert_silent(&mut b.rx, Duration::from_millis(500)).await;
        // The refused sender learns that node 2 is unreachable.
        wait_for_feedback(&rogue_client.t, Feedback::Unreachable { range_id: 1, to_node: 2 }, Duration::from_secs(15)).await;

        // Our client → foreign server: the client refuses it and reports.
        let mut rogue_server = start_with(3, any_port(), foreign(3), 1024).unwrap();
        b.t.set_peer_addr(3, rogue_server.t.local_addr());
        b.t.send(3, vec![heartbeat(4, 0)]);
        wait_for_feedback(&b.t, Feedback::Unreachable { range_id: 4, to_node: 3 }, Duration::from_secs(15)).await;
        assert_silent(&mut rogue_server.rx, Duration::from_millis(200)).await;

        rogue_client.t.shutdown().await;
        rogue_server.t.shutdown().await;
        b.t.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_claiming_another_node_are_dropped() {
    bounded(async {
        let ca = DevCa::generate().unwrap();
        let mut b = start(&ca, 2);
        // Node 1 holding node 3's (valid) certificate.
        let impostor = start_with(1, any_port(), ca.issue(3).unwrap(), 1024).unwrap();
        impostor.t.set_peer_addr(2, b.t.local_addr());
        impostor.t.send(2, vec![heartbeat(1, 0)]);
        assert_silent(&mut b.rx, Duration::from_secs(1)).await;

        let a = start(&ca, 1);
        a.t.set_peer_addr(2, b.t.local_addr());
        a.t.send(2, vec![heartbeat(1, 7)]);
        assert_eq!(seq_of(&recv_n(&mut b.rx, 1).await[0]), 7);
        impostor.t.shutdown().await;
        a.t.shutdown().await;
        b.t.shutdown().await;
    })
    .await;
}

/// Writes `bytes` on a new raw stream *without* finishing it, and returns
/// the code the receiver stopped it with. Not finishing matters: on a
/// finished, fully acknowledged stream a stop can no longer be observed.
async fn rejected_with(conn: &quinn::Connection, bytes: &[u8]) -> quinn::VarInt {
    let mut s = conn.open_uni().await.unwrap();
    // The receiver may stop the stream before we are done writing.
    let _ = s.write_all(bytes).await;
    let stopped = timeout(Duration::from_secs(5), s.stopped()).await.expect("receiver must stop the stream");
    stopped.expect("connection stays up").expect("stopped, not read to the end")
}

/// Writes `bytes` on a new raw stream, finishes it and waits until the
/// receiver has seen all of it (or stopped it).
async fn write_finished(conn: &quinn::Connection, bytes: &[u8]) {
    let mut s = conn.open_uni().await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.finish();
    let _ = timeout(Duration::from_secs(5), s.stopped()).await.expect("stream settles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_do_not_harm_the_receiver() {
    bounded(async {
        let ca = DevCa::generate().unwrap();
        let mut b = start(&ca, 2);

        let mut raw = quinn::Endpoint::client(any_port()).unwrap();
        raw.set_default_client_config(ca.issue(9).unwrap().quinn_client_config().unwrap());
        let conn = raw.connect(b.t.local_addr(), &node_server_name(2)).unwrap().await.unwrap();

        // Oversized length prefix: refused before any allocation.
        rejected_with(&conn, &u32::MAX.to_le_bytes()).await;
        // A plausible length followed by bytes that are not a PeerBatch.
        let mut garbage = 16u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 16]);
        rejected_with(&conn, &garbage).await;
        // Truncated: the header promises more than the stream holds.
        let mut truncated = 1000u32.to_le_bytes().to_vec();
        truncated.extend_from_slice(&[0x0a, 0x02]);
        write_finished(&conn, &truncated).await;
        // Half a header.
        write_finished(&conn, &[0x01, 0x00]).await;
        // A well-formed frame for another node is dropped but harmless.
        let env = RaftEnvelope { from_node: 9, to_node: 5, ..heartbeat(1, 0) };
        let body = PeerBatch { envelopes: vec![env] }.encode_frame();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        write_finished(&conn, &frame).await;
        assert_silent(&mut b.rx, Duration::from_millis(200)).await;
        assert!(conn.close_reason().is_none(), "bad streams cost the stream, not the connection");

        // A proper peer still gets through.
        let a = start(&ca, 1);
        a.t.set_peer_addr(2, b.t.local_addr());
        a.t.send(2, vec![heartbeat(3, 11)]);
        let got = recv_n(&mut b.rx, 1).await;
        assert_eq!((got[0].range_id, seq_of(&got[0])), (3, 11));

        conn.close(0u32.into(), b"");
        raw.close(0u32.into(), b"");
        a.t.shutdown().await;
        b.t.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_peer_address_is_dialled() {
    bounded(async {
        let ca = DevCa::generate().unwrap();
        let a = start(&ca, 1);
        let mut b1 = start(&ca, 2);
        a.t.set_peer_addr(2, b1.t.local_addr());
        a.t.send(2, vec![heartbeat(1, 1)]);
        recv_n(&mut b1.rx, 1).await;

        // Node 2 moves to a new address.
        let mut b2 = start(&ca, 2);
        a.t.set_peer_addr(2, b2.t.local_addr());
        let delivered = loop {
            a.t.send(2, vec![heartbeat(1, 2)]);
            if let Ok(Some(env)) = timeout(Duration::from_millis(100), b2.rx.recv()).await {
                break env;
            }
        };
        assert_eq!(seq_of(&delivered), 2);
        a.t.shutdown().await;
        b1.t.shutdown().await;
        b2.t.shutdown().await;
    })
    .await;
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let ca = DevCa::generate().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let config = QuicConfig { peers: HashMap::new(), ..QuicConfig::new(1, any_port(), ca.issue(1).unwrap()) };
    assert!(QuicTransport::start(config, tx).is_err());
}

/// A name service whose answers the test changes (a pod rescheduled under
/// the same DNS name at another IP).
#[derive(Debug, Default)]
struct MovableNames(std::sync::Mutex<HashMap<String, SocketAddr>>);

impl meridian_transport_quic::Resolve for MovableNames {
    fn resolve<'a>(&'a self, host_port: &'a str) -> meridian_transport_quic::ResolveFuture<'a> {
        let found = self.0.lock().unwrap().get(host_port).copied();
        Box::pin(async move { found.map(|a| vec![a]).ok_or_else(|| format!("{host_port}: no such name")) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_known_by_name_is_found_again_at_its_new_address() {
    bounded(async {
        let ca = DevCa::generate().unwrap();
        let names = std::sync::Arc::new(MovableNames::default());
        let (tx, _rx) = mpsc::channel(4096);
        let mut config = QuicConfig::new(1, any_port(), ca.issue(1).unwrap());
        config.resolver = names.clone();
        let a = QuicTransport::start(config, tx).unwrap();
        let mut b1 = start(&ca, 2);
        names.0.lock().unwrap().insert("meridian-2.meridian:2380".into(), b1.t.local_addr());
        a.set_peer_addr(2, "meridian-2.meridian:2380");
        a.send(2, vec![heartbeat(1, 1)]);
        recv_n(&mut b1.rx, 1).await;

        // Node 2 goes away and comes back elsewhere under the same name:
        // nobody tells the transport, the name now points at the new place.
        b1.t.shutdown().await;
        let mut b2 = start(&ca, 2);
        names.0.lock().unwrap().insert("meridian-2.meridian:2380".into(), b2.t.local_addr());
        let delivered = loop {
            a.send(2, vec![heartbeat(1, 2)]);
            if let Ok(Some(env)) = timeout(Duration::from_millis(100), b2.rx.recv()).await {
                break env;
            }
        };
        assert_eq!(seq_of(&delivered), 2, "the redial resolved the name again");
        a.shutdown().await;
        b2.t.shutdown().await;
    })
    .await;
}

/// Round trips of a ping-pong over a shaped link, ms: `n` in turn.
async fn round_trips(a: &mut Node, b: &mut Node, n: u64) -> Vec<f64> {
    let mut rtts = Vec::new();
    for seq in 0..n {
        let sent = Instant::now();
        a.t.send(2, vec![heartbeat(1, seq)]);
        let ping = recv_n(&mut b.rx, 1).await;
        b.t.send(1, vec![heartbeat(1, seq_of(&ping[0]))]);
        let pong = recv_n(&mut a.rx, 1).await;
        assert_eq!(seq_of(&pong[0]), seq);
        rtts.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    rtts
}

/// WAN shaping (`[debug.wan]`): each side delays what it sends by half the
/// round trip, so a ping and its answer take the round trip; order is
/// kept with jitter; turning the shaping off restores loopback speed.
/// Only lower bounds are asserted (a delay is never skipped); the
/// accuracy measured (within ±5 % of the matrix) is printed and recorded
/// in docs/performance.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shaped_link_delays_each_way_by_half_the_round_trip_in_order() {
    use meridian_transport_quic::LinkShape;
    bounded(async {
        let ca = DevCa::generate().unwrap();
        let (mut a, mut b) = (start(&ca, 1), start(&ca, 2));
        connect_pair(&a, &b);
        // Warm the connections first (the handshake is not shaped).
        round_trips(&mut a, &mut b, 3).await;
        for rtt_ms in [66u64, 146] {
            let shape = LinkShape { one_way: Duration::from_micros(rtt_ms * 500), jitter: Duration::ZERO, loss: 0.0 };
            a.t.set_peer_shape(2, shape);
            b.t.set_peer_shape(1, shape);
            let mut rtts = round_trips(&mut a, &mut b, 20).await;
            rtts.sort_by(f64::total_cmp);
            let p50 = rtts[rtts.len() / 2];
            println!(
                "shaped round trip {rtt_ms} ms: min {:.2} p50 {p50:.2} max {:.2} ms ({:+.1} % at p50)",
                rtts[0],
                rtts[rtts.len() - 1],
                (p50 / rtt_ms as f64 - 1.0) * 100.0
            );
            assert!(rtts[0] >= rtt_ms as f64, "a round trip of {:.2} ms beat the shaped {rtt_ms} ms", rtts[0]);
        }
        // With jitter, a burst still arrives in send order.
        let shape = LinkShape { one_way: Duration::from_millis(20), jitter: Duration::from_millis(10), loss: 0.0 };
        a.t.set_peer_shape(2, shape);
        for seq in 0..200 {
            a.t.send(2, vec![heartbeat(7, seq)]);
        }
        let got = recv_n(&mut b.rx, 200).await;
        assert_eq!(got.iter().map(seq_of).collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
        // Off again: loopback speed.
        a.t.set_peer_shape(2, LinkShape::NONE);
        b.t.set_peer_shape(1, LinkShape::NONE);
        let rtts = round_trips(&mut a, &mut b, 5).await;
        assert!(rtts.iter().any(|r| *r < 20.0), "unshaped round trips stayed slow: {rtts:?}");
        a.t.shutdown().await;
        b.t.shutdown().await;
    })
    .await;
}
