//! The real `sluice` binary as a child process, for the tests that kill it, stop it or fill
//! its disk: start on a random port, collect stderr, wait for `/readyz`, SIGKILL, SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn listening_addr(line: &str) -> Option<String> {
    if !line.contains("listening") {
        return None;
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    Some(rest.split_whitespace().next()?.to_owned())
}

impl Server {
    /// `sluice server --addr 127.0.0.1:0 --data-dir DATA_DIR ARGS...`; returns once the
    /// server has logged the address it listens on.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("server")
            .args(["--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the sluice binary");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                // Keeps draining to EOF so the server never blocks on a full pipe.
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    if let Some(addr) = listening_addr(&line) {
                        let _ = tx.send(addr);
                    }
                    let mut log = log.lock().expect("log lock");
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let mut server = Server {
            child,
            base: String::new(),
            log,
            reader: Some(reader),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => server.base = format!("http://{addr}"),
            Err(_) => {
                let log = server.kill();
                panic!("the server did not log its address within 30 s; stderr:\n{log}");
            }
        }
        server
    }

    /// What the server has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// SIGKILL (on unix), reap, and return everything it wrote to stderr.
    pub fn kill(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finish_log()
    }

    /// After the process has exited: everything it wrote to stderr.
    pub fn finish_log(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.log()
    }

    /// Polls `/readyz` until 200; fails at the deadline or if the process exits.
    pub async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reply) = http.get(format!("{}/readyz", self.base)).send().await {
                if reply.status().as_u16() == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.finish_log();
                panic!("the server exited ({status}) before it was ready; stderr:\n{log}");
            }
            if Instant::now() > deadline {
                let log = self.kill();
                panic!("the server was not ready within 30 s; stderr:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the exit: `(status, time taken)`, or `None` past `deadline`
    /// (the process is then killed).
    pub async fn terminate(&mut self, deadline: Duration) -> Option<(ExitStatus, Duration)> {
        let sent_at = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
        loop {
            if let Some(exit) = self.child.try_wait().expect("try_wait") {
                return Some((exit, sent_at.elapsed()));
            }
            if sent_at.elapsed() > deadline {
                self.kill();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
