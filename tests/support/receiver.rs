//! A webhook receiver for the tests: an HTTP server on 127.0.0.1 that records every request (a
//! JSON body each) and answers it, as crashwatch's webhooks and Alertmanager's notifications
//! reach it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

/// One request the receiver took, and how it answered.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    pub status: u16,
}

/// An HTTP receiver on 127.0.0.1 that records every request and answers the first `failures`
/// with 500, the rest with 200.
pub struct HookReceiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HookReceiver {
    pub fn start(failures: usize) -> HookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let status = if received.lock().unwrap().len() < failures {
                                500
                            } else {
                                200
                            };
                            if let Some(r) = answer(stream, status) {
                                received.lock().unwrap().push(r);
                            }
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        HookReceiver {
            port,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The bodies of `path` answered with 200 whose `event` is `event`.
    pub fn accepted(&self, path: &str, event: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path && r.status == 200 && r.body["event"] == event)
            .map(|r| r.body)
            .collect()
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request (headers, then a body of Content-Length bytes) and answers it.
fn answer(mut stream: TcpStream, status: u16) -> Option<Received> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&chunk[..n]);
        let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if raw.len() >= split + 4 + length {
            break (head, raw[split + 4..split + 4 + length].to_vec());
        }
    };
    let reason = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut lines = head.lines();
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("a webhook body that is not JSON ({e}): {body:?}"));
    Some(Received {
        path,
        headers,
        body,
        status,
    })
}
