//! A TCP proxy the test puts between the consumer and PostgreSQL, so it can
//! make the database unreachable mid-run and bring it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; [`Proxy::cut`] drops every connection and refuses new
/// ones until [`Proxy::restore`].
pub struct Proxy {
    /// The port to connect to instead of the upstream's.
    pub port: u16,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: open pipes end when it changes.
    cuts: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let accept = tokio::spawn({
            let (up, cuts) = (up.clone(), cuts.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else { continue };
                    if !up.load(Ordering::SeqCst) {
                        // Unreachable: the connection is closed at once.
                        drop(client);
                        continue;
                    }
                    tokio::spawn(pipe(client, upstream.clone(), cuts.subscribe()));
                }
            }
        });
        Self { port, up, cuts, accept }
    }

    /// The database goes away: open connections break, new ones are closed at once.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// The database is back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn pipe(mut client: TcpStream, upstream: String, mut cuts: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
    cuts.borrow_and_update();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cuts.changed() => {}
    }
}
