//! A running extender on a real TCP port, a blocking HTTP/1.1 client, and a fake API that
//! delays its writes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_extender::{router, serve, Binder, Clock, Readiness, ServerConfig};
use gantry_scheduler::schema::NODE_GPUS_ANNOTATION;
use gantry_scheduler::{BindPlan, Config, Extender, NodeGpus};
use serde_json::{json, Value};

/// The fake API server's record of writes: annotations and bindings, and how many writes were
/// in flight at once (overall and to distinct nodes).
#[derive(Debug, Default)]
pub struct FakeApi {
    pub delay: Duration,
    pub fail_pods: Mutex<Vec<String>>,
    pub annotations: Mutex<BTreeMap<String, String>>,
    pub bindings: Mutex<BTreeMap<String, String>>,
    in_flight: Mutex<Vec<String>>,
    pub max_in_flight: AtomicUsize,
    pub max_distinct_nodes_in_flight: AtomicUsize,
}

impl FakeApi {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

impl Binder for FakeApi {
    async fn bind(&self, plan: &BindPlan) -> gantry_extender::Result<()> {
        let pod = format!("{}/{}", plan.namespace, plan.name);
        {
            let mut f = self.in_flight.lock().unwrap();
            f.push(plan.node.clone());
            self.max_in_flight.fetch_max(f.len(), Ordering::SeqCst);
            let distinct: std::collections::BTreeSet<_> = f.iter().collect();
            self.max_distinct_nodes_in_flight
                .fetch_max(distinct.len(), Ordering::SeqCst);
        }
        // The annotation write, then the Binding, each taking `delay`.
        tokio::time::sleep(self.delay / 2).await;
        let fail = self.fail_pods.lock().unwrap().contains(&pod);
        if !fail {
            self.annotations
                .lock()
                .unwrap()
                .insert(pod.clone(), plan.assignment.to_annotation());
        }
        tokio::time::sleep(self.delay / 2).await;
        {
            let mut f = self.in_flight.lock().unwrap();
            if let Some(i) = f.iter().position(|n| *n == plan.node) {
                f.remove(i);
            }
        }
        if fail {
            return Err(gantry_extender::Error::Bind {
                pod,
                node: plan.node.clone(),
                reason: "the API server said 500".into(),
            });
        }
        let previous = self
            .bindings
            .lock()
            .unwrap()
            .insert(pod.clone(), plan.node.clone());
        assert!(previous.is_none(), "pod {pod} bound twice");
        Ok(())
    }
}

/// A clock the test moves.
#[derive(Debug, Clone)]
pub struct TestClock(pub Arc<Mutex<Instant>>);

impl Clock for TestClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}

/// A server running on its own 4-thread runtime until dropped.
pub struct Running<B = FakeApi> {
    pub addr: SocketAddr,
    pub extender: Arc<Extender>,
    pub api: Arc<B>,
    pub clock: TestClock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<B> Drop for Running<B> {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A server over `extender` with the Binder-level fake API; always ready.
pub fn start(extender: Extender, api: FakeApi, config: ServerConfig) -> Running {
    start_with(extender, config, move |_| (api, Readiness::ready()))
}

/// A server over `extender`; `setup` runs on the server's runtime (so it may spawn tasks there:
/// an in-memory API server's client, a cache) and returns the binder and the readiness.
pub fn start_with<B: Binder>(
    extender: Extender,
    config: ServerConfig,
    setup: impl FnOnce(Arc<Extender>) -> (B, Readiness) + Send + 'static,
) -> Running<B> {
    let extender = Arc::new(extender);
    let clock = TestClock(Arc::new(Mutex::new(Instant::now())));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel();
    let (e, c) = (extender.clone(), clock.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (binder, readiness) = setup(e.clone());
            let binder = Arc::new(binder);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((listener.local_addr().unwrap(), binder.clone()))
                .unwrap();
            let app = router(e, binder, c, readiness, config);
            serve(listener, app, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });
    let (addr, api) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    Running {
        addr,
        extender,
        api,
        clock,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// GETs `path`; returns the status and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, b"")
}

/// Waits until `check` holds, polling; panics naming `what` after a generous limit (this waits
/// for a result, it does not assert how fast it comes).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// POSTs `body` to `path`; returns the status and the body.
pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    request(addr, "POST", path, body)
}

fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: extender\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // An oversize body may be refused before it is all read; that is the server's right.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn post_json(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = post(addr, path, body.to_string().as_bytes());
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

pub fn node_json(name: &str, cpu: u32, fixture: Option<&str>) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(f) = fixture {
        let inv = gantry_testkit::load_inventory(f);
        annotations.insert(
            NODE_GPUS_ANNOTATION.into(),
            NodeGpus::from_inventory(&inv).to_annotation().into(),
        );
    }
    json!({
        "metadata": {"name": name, "annotations": annotations},
        "status": {"allocatable": {"cpu": cpu.to_string(), "memory": "512Gi"}}
    })
}

pub fn pod_json(name: &str, gpu: u32, milli: u32) -> Value {
    let mut limits = serde_json::Map::new();
    if gpu > 0 {
        limits.insert("nvidia.com/gpu".into(), gpu.to_string().into());
    }
    if milli > 0 {
        limits.insert("gantry.dev/gpu-milli".into(), milli.to_string().into());
    }
    json!({
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}")},
        "spec": {"schedulerName": "gantry-scheduler", "containers": [{
            "name": "main", "image": "tf",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": limits}}]},
        "status": {"phase": "Pending"}
    })
}

/// An extender knowing `nodes` (name, fixture).
pub fn extender_with(nodes: &[(&str, Option<&str>)]) -> Extender {
    let ext = Extender::new(Config::default()).unwrap();
    for (name, fixture) in nodes {
        let n = serde_json::from_value(node_json(name, 128, *fixture)).unwrap();
        ext.state().upsert_node(&n).unwrap();
    }
    ext
}
