//! A network fault injector: a TCP proxy on `127.0.0.1:<ephemeral>` that forwards every
//! connection to an upstream address (a broker, a PostgreSQL server) and that a test steers
//! while traffic flows:
//!
//! * [`Proxy::set_latency`]: delay each direction by its own amount (applied to every chunk
//!   read after the call; chunks stay in order, throughput is not limited);
//! * [`Proxy::cut`]: end every open connection now, on both sides, with a reset
//!   ([`Cut::Reset`]: `SO_LINGER` 0, the peers read `ECONNRESET`) or an orderly close
//!   ([`Cut::Close`]: FIN both ways, the peers read end-of-file);
//! * [`Proxy::blackhole`]: stop forwarding in both directions but keep every socket open, so
//!   both ends see a half-open connection that is silent (what a network partition or a
//!   crashed NAT looks like). The proxy stops reading, so the kernel buffers fill and the
//!   senders' writes eventually block. Connections accepted meanwhile are held without an
//!   upstream connection;
//! * [`Proxy::refuse_new`]: answer every new connection with a reset (the connect succeeds,
//!   the first read or write fails), as a server that is down would (a real refusal happens at
//!   the SYN; no client here can tell the difference from a reset on its first operation);
//! * [`Proxy::resume`]: forward again (black hole and refusal lifted; data held meanwhile is
//!   delivered, as TCP retransmission does after a partition heals). Latency stays as set.
//!
//! Otherwise the proxy is transparent: an end-of-file is passed on as a half-close, a reset
//! (or a failed write) on one side resets the other.
//!
//! Each operation takes effect before it returns (a cut waits until every connection it ended
//! is closed), so a test needs no sleeps around them. [`Proxy::stats`] counts connections and
//! bytes, which tests use to wait for a reconnect or to prove traffic went through the proxy.
//!
//! Built on tokio alone; every connection is one task that owns both sockets. Dropping the
//! proxy closes its listener and every connection.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

/// How a [`Proxy::cut`] ends connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// RST to both peers (`SO_LINGER` 0 and close): they read `ECONNRESET`.
    Reset,
    /// FIN to both peers (shutdown for writing), then the proxy reads and discards what they
    /// still send until they close too (up to 2 s), so that no reset follows the FIN.
    Close,
}

/// A direction of traffic through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the client (who connected to the proxy) to the upstream server.
    Upstream,
    /// From the upstream server back to the client.
    Downstream,
}

/// Counters of a proxy's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and forwarded (or held), all time.
    pub accepted: u64,
    /// Connections answered with a reset by [`Proxy::refuse_new`].
    pub refused: u64,
    /// Connections whose upstream connect failed (closed with a reset).
    pub upstream_failures: u64,
    /// Connections ended by [`Proxy::cut`].
    pub cut: u64,
    /// Connections open now (one cut with [`Cut::Close`] counts until its peers closed too, up
    /// to 2 s).
    pub open: u64,
    /// Bytes delivered to the upstream server.
    pub bytes_upstream: u64,
    /// Bytes delivered to the clients.
    pub bytes_downstream: u64,
}

/// What the connections obey; changed through the proxy's methods.
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    blackhole: bool,
    refuse: bool,
    latency_up: Duration,
    latency_down: Duration,
}

impl Control {
    fn latency(&self, dir: Direction) -> Duration {
        match dir {
            Direction::Upstream => self.latency_up,
            Direction::Downstream => self.latency_down,
        }
    }
}

/// A cut order: how, and whom to tell once the sockets are closed.
type CutOrder = (Cut, oneshot::Sender<()>);

#[derive(Debug)]
struct Conn {
    cut: Option<oneshot::Sender<CutOrder>>,
    task: Option<AbortHandle>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    upstream_failures: AtomicU64,
    cut: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    control: watch::Sender<Control>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The TCP proxy; see the module docs.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("control", &*self.shared.control.borrow())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// How long a [`Cut::Close`] waits for the peers to close their side.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bytes one read takes at most.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction (read, waiting for their latency to pass) at most.
const QUEUED_CHUNKS: usize = 256;

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`. Must be called inside a tokio
    /// runtime, which then runs the proxy.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Listens on `listen` and forwards to `upstream`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (control, _) = watch::channel(Control::default());
        let shared = Arc::new(Shared {
            upstream,
            control,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Proxy { addr, shared, accept })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Delays traffic: `upstream` for client-to-server bytes, `downstream` for the answers
    /// (so a request/response round trip takes at least their sum). Applies to bytes read
    /// from now on, on open and new connections; zero removes the delay.
    pub fn set_latency(&self, upstream: Duration, downstream: Duration) {
        self.shared.control.send_modify(|c| {
            c.latency_up = upstream;
            c.latency_down = downstream;
        });
    }

    /// Stops forwarding in both directions; every socket stays open (half-open connections).
    pub fn blackhole(&self) {
        self.shared.control.send_modify(|c| c.blackhole = true);
    }

    /// Answers new connections with a reset (open ones are not touched: [`Proxy::cut`] them).
    pub fn refuse_new(&self) {
        self.shared.control.send_modify(|c| c.refuse = true);
    }

    /// Lifts [`Proxy::blackhole`] and [`Proxy::refuse_new`]; data held meanwhile is delivered.
    pub fn resume(&self) {
        self.shared.control.send_modify(|c| {
            c.blackhole = false;
            c.refuse = false;
        });
    }

    /// Ends every open connection, on both sides, the way `how` says; returns how many,
    /// once all of them are closed (for [`Cut::Close`]: once the FINs are sent).
    pub async fn cut(&self, how: Cut) -> usize {
        let orders: Vec<oneshot::Sender<CutOrder>> =
            lock(&self.shared.conns).values_mut().filter_map(|c| c.cut.take()).collect();
        let mut done = Vec::with_capacity(orders.len());
        for order in orders {
            let (tx, rx) = oneshot::channel();
            if order.send((how, tx)).is_ok() {
                done.push(rx);
            }
        }
        let n = done.len();
        for rx in done {
            // An error means the connection ended by itself meanwhile: closed all the same.
            let _ = rx.await;
        }
        self.shared.counters.cut.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Counters of connections and bytes.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
            cut: c.cut.load(Ordering::Relaxed),
            open: self.open_connections() as u64,
            bytes_upstream: c.bytes_up.load(Ordering::Relaxed),
            bytes_downstream: c.bytes_down.load(Ordering::Relaxed),
        }
    }

    /// Waits up to `timeout` until `open_connections() >= n`; returns whether it happened.
    pub async fn wait_open(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.open_connections() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, c) in lock(&self.shared.conns).drain() {
            if let Some(t) = c.task {
                t.abort();
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if shared.control.borrow().refuse {
            reset(client);
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = client.set_nodelay(true);
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (cut_tx, cut_rx) = oneshot::channel();
        // Registered before the task runs, so that it is found by a cut and removes itself.
        let mut conns = lock(&shared.conns);
        let task = tokio::spawn(connection(id, client, Arc::clone(&shared), cut_rx));
        conns.insert(id, Conn { cut: Some(cut_tx), task: Some(task.abort_handle()) });
    }
}

/// Closes with a reset (`SO_LINGER` 0).
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Shuts down for writing (FIN), then discards input until the peer closes (or the grace
/// period ends), so that the close sends no reset.
async fn close_gracefully(mut s: TcpStream) {
    let _ = s.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Ends both sockets the way `how` says.
async fn end(how: Cut, client: TcpStream, upstream: Option<TcpStream>) {
    match how {
        Cut::Reset => {
            reset(client);
            if let Some(u) = upstream {
                reset(u);
            }
        }
        Cut::Close => {
            let c = close_gracefully(client);
            match upstream {
                Some(u) => {
                    tokio::join!(c, close_gracefully(u));
                }
                None => c.await,
            }
        }
    }
}

/// Waits until the control allows forwarding (no black hole).
async fn forwarding(control: &mut watch::Receiver<Control>) {
    // The sender lives as long as the proxy's shared state, which outlives this task.
    let _ = control.wait_for(|c| !c.blackhole).await;
}

/// How one direction of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEnd {
    /// End of file read and passed on (write side shut down).
    Eof,
    /// A read or write failed: the whole connection is reset.
    Failed,
}

/// One connection: connects upstream (once forwarding is allowed) and pumps both ways until
/// both directions end, one fails, or a cut order arrives.
async fn connection(id: u64, client: TcpStream, shared: Arc<Shared>, mut cut: oneshot::Receiver<CutOrder>) {
    let mut control = shared.control.subscribe();
    let mut client = client;
    // A black hole holds new connections too: no upstream connection until it is lifted.
    let upstream = tokio::select! {
        order = &mut cut => {
            finish(&shared, id, order.ok(), client, None).await;
            return;
        }
        r = async {
            forwarding(&mut control).await;
            TcpStream::connect(shared.upstream).await
        } => r,
    };
    let Ok(mut upstream) = upstream else {
        shared.counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
        reset(client);
        lock(&shared.conns).remove(&id);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let order = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up = pump(cr, uw, Direction::Upstream, shared.control.subscribe(), &shared.counters.bytes_up);
        let down =
            pump(ur, cw, Direction::Downstream, shared.control.subscribe(), &shared.counters.bytes_down);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                order = &mut cut => break order.ok(),
                end = &mut up, if !up_done => {
                    if end == PumpEnd::Failed {
                        break Some((Cut::Reset, oneshot::channel().0));
                    }
                    up_done = true;
                }
                end = &mut down, if !down_done => {
                    if end == PumpEnd::Failed {
                        break Some((Cut::Reset, oneshot::channel().0));
                    }
                    down_done = true;
                }
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    finish(&shared, id, order, client, Some(upstream)).await;
}

/// Closes the sockets (as ordered, or plainly), unregisters, and confirms a cut.
async fn finish(
    shared: &Shared,
    id: u64,
    order: Option<CutOrder>,
    client: TcpStream,
    upstream: Option<TcpStream>,
) {
    match order {
        Some((how, done)) => {
            // The FINs (or RSTs) go out before the cut is confirmed; a graceful close then
            // lingers in its own task.
            match how {
                Cut::Reset => {
                    end(how, client, upstream).await;
                    let _ = done.send(());
                }
                Cut::Close => {
                    let mut client = client;
                    let _ = client.shutdown().await;
                    let mut upstream = upstream;
                    if let Some(u) = upstream.as_mut() {
                        let _ = u.shutdown().await;
                    }
                    let _ = done.send(());
                    end(how, client, upstream).await;
                }
            }
        }
        None => drop((client, upstream)),
    }
    lock(&shared.conns).remove(&id);
}

/// Copies `from` to `to`, each chunk delayed by the direction's latency and held while the
/// black hole lasts. A reader and a writer run concurrently with a bounded queue between them.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    dir: Direction,
    control: watch::Receiver<Control>,
    bytes: &AtomicU64,
) -> PumpEnd {
    enum Item {
        Data(Instant, Vec<u8>),
        Eof,
        Failed,
    }
    let (tx, mut rx) = mpsc::channel::<Item>(QUEUED_CHUNKS);
    let mut read_control = control.clone();
    let reader = async move {
        loop {
            forwarding(&mut read_control).await;
            let mut buf = vec![0u8; CHUNK];
            let item = match from.read(&mut buf).await {
                Ok(0) => Item::Eof,
                Ok(n) => {
                    buf.truncate(n);
                    let due = Instant::now() + read_control.borrow().latency(dir);
                    Item::Data(due, buf)
                }
                Err(_) => Item::Failed,
            };
            let last = !matches!(item, Item::Data(..));
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    };
    let mut write_control = control;
    let writer = async move {
        while let Some(item) = rx.recv().await {
            match item {
                Item::Data(due, data) => {
                    tokio::time::sleep_until(due).await;
                    forwarding(&mut write_control).await;
                    if to.write_all(&data).await.is_err() {
                        return PumpEnd::Failed;
                    }
                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Item::Eof => {
                    forwarding(&mut write_control).await;
                    let _ = to.shutdown().await;
                    return PumpEnd::Eof;
                }
                Item::Failed => return PumpEnd::Failed,
            }
        }
        PumpEnd::Failed
    };
    // The writer decides: a reader still waiting for bytes must not keep a failed direction
    // alive, and a reader that passed on EOF waits for the writer to deliver it.
    let reader = async move {
        reader.await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        end = writer => end,
        () = reader => unreachable!("the reader never ends first"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;

    /// An echo server: every connection gets its bytes back; counts connections and remembers
    /// how each one ended (`Ok(())` at EOF, the error kind otherwise).
    struct Echo {
        addr: SocketAddr,
        ends: mpsc::UnboundedReceiver<Result<(), ErrorKind>>,
        _task: JoinHandle<()>,
    }

    async fn echo() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, ends) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let end = loop {
                        match s.read(&mut buf).await {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                if let Err(e) = s.write_all(&buf[..n]).await {
                                    break Err(e.kind());
                                }
                            }
                            Err(e) => break Err(e.kind()),
                        }
                    };
                    let _ = tx.send(end);
                });
            }
        });
        Echo { addr, ends, _task: task }
    }

    const T: Duration = Duration::from_secs(5);

    async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(T, s.read_exact(&mut buf)).await.expect("read in time").expect("read");
        buf
    }

    /// What the next read shows: `Ok(n)` bytes, `Ok(0)` EOF, or the error kind.
    async fn next_read(s: &mut TcpStream) -> Result<usize, ErrorKind> {
        let mut buf = [0u8; 64];
        tokio::time::timeout(T, s.read(&mut buf)).await.expect("read in time").map_err(|e| e.kind())
    }

    async fn echo_round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
        let t = Instant::now();
        s.write_all(msg).await.unwrap();
        assert_eq!(read_exact(s, msg.len()).await, msg);
        t.elapsed()
    }

    #[tokio::test]
    async fn forwards_both_ways_and_counts() {
        let echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = c.split();
        let ((), back) = tokio::join!(async { w.write_all(&big).await.unwrap() }, async {
            let mut back = vec![0u8; big.len()];
            r.read_exact(&mut back).await.unwrap();
            back
        });
        assert_eq!(back, big);
        let st = proxy.stats();
        assert_eq!((st.accepted, st.open), (1, 1));
        assert_eq!((st.bytes_upstream, st.bytes_downstream), (200_000, 200_000));
        assert_eq!(proxy.upstream(), echo.addr);
    }

    #[tokio::test]
    async fn half_close_is_passed_on() {
        let mut echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"bye").await.unwrap();
        c.shutdown().await.unwrap();
        // The echo server sees EOF after the bytes, answers, and closes: so do we.
        assert_eq!(read_exact(&mut c, 3).await, b"bye");
        assert_eq!(next_read(&mut c).await, Ok(0));
        assert_eq!(tokio::time::timeout(T, echo.ends.recv()).await.unwrap(), Some(Ok(())));
        let deadline = Instant::now() + T;
        while proxy.open_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(proxy.open_connections(), 0);
    }

    #[tokio::test]
    async fn latency_per_direction() {
        let echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let fast = echo_round_trip(&mut c, b"x").await;
        proxy.set_latency(Duration::from_millis(150), Duration::from_millis(100));
        let slow = echo_round_trip(&mut c, b"y").await;
        assert!(slow >= Duration::from_millis(250), "round trip {slow:?} with 150 + 100 ms latency");
        // Pipelined: ten messages sent at once take one latency, not ten.
        let t = Instant::now();
        for i in 0..10u8 {
            c.write_all(&[i]).await.unwrap();
        }
        assert_eq!(read_exact(&mut c, 10).await, (0..10).collect::<Vec<u8>>());
        let ten = t.elapsed();
        assert!(ten < Duration::from_millis(1500), "10 pipelined chunks took {ten:?}");
        // Only one direction.
        proxy.set_latency(Duration::ZERO, Duration::from_millis(200));
        let down = echo_round_trip(&mut c, b"z").await;
        assert!(down >= Duration::from_millis(200), "{down:?}");
        proxy.set_latency(Duration::ZERO, Duration::ZERO);
        let again = echo_round_trip(&mut c, b"w").await;
        assert!(again < Duration::from_millis(200) + fast, "{again:?} after the latency was removed");
    }

    #[tokio::test]
    async fn cut_with_reset() {
        let mut echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        echo_round_trip(&mut a, b"a").await;
        echo_round_trip(&mut b, b"b").await;
        assert_eq!(proxy.cut(Cut::Reset).await, 2);
        assert_eq!(next_read(&mut a).await, Err(ErrorKind::ConnectionReset));
        assert_eq!(next_read(&mut b).await, Err(ErrorKind::ConnectionReset));
        for _ in 0..2 {
            let end = tokio::time::timeout(T, echo.ends.recv()).await.unwrap().unwrap();
            assert_eq!(end, Err(ErrorKind::ConnectionReset));
        }
        assert_eq!(proxy.open_connections(), 0);
        assert_eq!(proxy.stats().cut, 2);
        // New connections still work.
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        echo_round_trip(&mut c, b"c").await;
    }

    #[tokio::test]
    async fn cut_with_fin() {
        let mut echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        echo_round_trip(&mut a, b"a").await;
        assert_eq!(proxy.cut(Cut::Close).await, 1);
        assert_eq!(next_read(&mut a).await, Ok(0));
        assert_eq!(tokio::time::timeout(T, echo.ends.recv()).await.unwrap(), Some(Ok(())));
    }

    #[tokio::test]
    async fn blackhole_keeps_sockets_open_and_resume_delivers() {
        let mut echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        echo_round_trip(&mut a, b"1").await;
        let before = proxy.stats();
        proxy.blackhole();
        a.write_all(b"2").await.unwrap();
        // Nothing comes back, and the connection is not closed either.
        let mut buf = [0u8; 8];
        assert!(tokio::time::timeout(Duration::from_millis(300), a.read(&mut buf)).await.is_err());
        assert_eq!(proxy.stats().bytes_upstream, before.bytes_upstream);
        // A new connection is accepted but held.
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        b.write_all(b"3").await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), b.read(&mut buf)).await.is_err());
        assert!(echo.ends.try_recv().is_err(), "no connection ended during the black hole");
        proxy.resume();
        assert_eq!(read_exact(&mut a, 1).await, b"2");
        assert_eq!(read_exact(&mut b, 1).await, b"3");
        echo_round_trip(&mut a, b"4").await;
    }

    #[tokio::test]
    async fn cut_during_blackhole() {
        let echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        echo_round_trip(&mut a, b"1").await;
        proxy.blackhole();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(proxy.wait_open(2, T).await);
        assert_eq!(proxy.cut(Cut::Reset).await, 2);
        assert_eq!(next_read(&mut a).await, Err(ErrorKind::ConnectionReset));
        assert_eq!(next_read(&mut b).await, Err(ErrorKind::ConnectionReset));
    }

    #[tokio::test]
    async fn refuse_new_then_resume() {
        let echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        echo_round_trip(&mut open, b"o").await;
        proxy.refuse_new();
        let mut r = TcpStream::connect(proxy.addr()).await.unwrap();
        let _ = r.write_all(b"x").await;
        let got = next_read(&mut r).await;
        assert!(matches!(got, Err(ErrorKind::ConnectionReset) | Ok(0)), "refused connection read {got:?}");
        assert_eq!(proxy.stats().refused, 1);
        // Open connections are not affected.
        echo_round_trip(&mut open, b"p").await;
        proxy.resume();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        echo_round_trip(&mut c, b"c").await;
    }

    #[tokio::test]
    async fn upstream_down_resets_the_client() {
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        // The listener is dropped: nothing listens on `port` any more.
        let proxy = Proxy::start(port).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(next_read(&mut c).await, Err(ErrorKind::ConnectionReset));
        assert_eq!(proxy.stats().upstream_failures, 1);
    }

    #[tokio::test]
    async fn peer_reset_is_passed_on() {
        let mut echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        echo_round_trip(&mut a, b"a").await;
        reset(a);
        let end = tokio::time::timeout(T, echo.ends.recv()).await.unwrap().unwrap();
        assert_eq!(end, Err(ErrorKind::ConnectionReset));
    }

    #[tokio::test]
    async fn drop_closes_everything() {
        let echo = echo().await;
        let proxy = Proxy::start(echo.addr).await.unwrap();
        let addr = proxy.addr();
        let mut a = TcpStream::connect(addr).await.unwrap();
        echo_round_trip(&mut a, b"a").await;
        drop(proxy);
        let got = next_read(&mut a).await;
        assert!(matches!(got, Ok(0) | Err(ErrorKind::ConnectionReset)), "{got:?}");
        // The accept task is dropped by the runtime shortly after its abort.
        let deadline = Instant::now() + T;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "the listener is still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
