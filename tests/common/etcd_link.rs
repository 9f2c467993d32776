//! A cuttable TCP link to etcd for the cutover tests: instances (and the coordinator) reach
//! etcd through it, and the test cuts it to make etcd unreachable for them alone, while
//! Patroni keeps its own sessions (an etcd outage would make it demote main's leader).

/// A TCP forwarder to etcd that the test can cut: while cut, its connections are closed and
/// new ones are dropped as soon as they are accepted, as if etcd were down for its users only.
pub struct Link {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    _thread: std::thread::JoinHandle<()>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Link {
    /// Forwards a fresh loopback port to `upstream` ("http://127.0.0.1:PORT").
    pub fn to(upstream: &str) -> Link {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind link");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("link address").port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("link runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("link listener");
                tokio::select! {
                    _ = accept_loop(listener, upstream, cut_rx) => {}
                    _ = stop_rx => {}
                }
            });
        });
        Link {
            port,
            cut,
            _thread: thread,
            _stop: stop,
        }
    }

    /// The URL instances use instead of etcd's.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    upstream: String,
    cut: tokio::sync::watch::Receiver<bool>,
) {
    while let Ok((mut client, _)) = listener.accept().await {
        if *cut.borrow() {
            continue; // dropped: closed at once
        }
        let (upstream, mut cut) = (upstream.clone(), cut.clone());
        tokio::spawn(async move {
            let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.wait_for(|c| *c) => {}
            }
        });
    }
}
