//! A real server in-process on a random loopback port with its own data directory, ready
//! (its log replayed) before the examples run against it.

use std::time::{Duration, Instant};

use sluice_client::Client;
use sluice_server::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), sluice_server::ServerError>>>,
}

impl TestServer {
    /// Starts the server and waits until it answers as ready (not 503 `not_ready`).
    pub async fn start(dir: &std::path::Path) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_server::run(
            listener,
            ServerConfig::new(dir),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = Client::new(&url).expect("client");
        let started = Instant::now();
        // A job that does not exist: 404 once the server is ready, 503 while it replays.
        while !client
            .job("0000000000000")
            .await
            .is_err_and(|e| e.code() == Some("not_found"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the server did not get ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TestServer {
            url,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran and stopped cleanly");
        }
    }
}
