//! A fake Kubernetes API server at the HTTP wire, after kube-rs controller-rs's `fixtures.rs`.
//!
//! [`fake_api_server`] returns a real [`kube::Client`] whose transport is a `tower-test` mock, and the
//! [`FakeApiServer`] end of it. A test scripts the calls it expects, in order: each
//! [`FakeApiServer::expect`] asserts the verb and the path of the next request (and hands back its
//! query and JSON body to assert on), then the test answers it as the API server would. A call that
//! does not come within the timeout fails the test at once, naming the call it waited for, instead of
//! hanging.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::Value;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// Waits until `check` holds, polling every 25 ms for up to 10 s (a watch, a controller or a
/// plugin acting in the background); never asserts how long it took.
///
/// # Panics
/// When `check` still fails after 10 s, naming `what` it waited for.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A client talking to a fresh fake API server; the client's default namespace is `default`.
pub fn fake_api_server() -> (kube::Client, FakeApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (
        client,
        FakeApiServer {
            handle,
            timeout: Duration::from_secs(5),
            calls: Vec::new(),
        },
    )
}

/// The server end: receives the client's requests one by one.
#[derive(Debug)]
pub struct FakeApiServer {
    handle: Handle,
    timeout: Duration,
    calls: Vec<String>,
}

/// One request the client made, waiting for its answer.
#[derive(Debug)]
pub struct Call {
    /// `GET`, `POST`, `PATCH`, `PUT`, `DELETE`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string (empty when none).
    pub query: String,
    /// The `Content-Type` header (empty when none).
    pub content_type: String,
    /// The JSON body (`Null` when empty).
    pub body: Value,
    respond: Responder,
}

impl FakeApiServer {
    /// Waits for the next request and asserts its verb and path.
    ///
    /// # Panics
    /// When no request comes within the timeout, or it is another call.
    pub async fn expect(&mut self, method: &str, path: &str) -> Call {
        let call = self.next(&format!("{method} {path}")).await;
        assert_eq!(
            (call.method.as_str(), call.path.as_str()),
            (method, path),
            "unexpected call (query {:?}, body {}); calls so far: {:?}",
            call.query,
            call.body,
            self.calls
        );
        call
    }

    /// Waits for the next request, whatever it is.
    ///
    /// # Panics
    /// When no request comes within the timeout.
    pub async fn next(&mut self, waiting_for: &str) -> Call {
        let next = tokio::time::timeout(self.timeout, self.handle.next_request()).await;
        let Ok(Some((request, respond))) = next else {
            panic!(
                "the client never made the expected call {waiting_for}; calls so far: {:?}",
                self.calls
            );
        };
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        let call = Call {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body,
            respond,
        };
        self.calls.push(format!("{} {}", call.method, call.path));
        call
    }

    /// Asserts that the client makes no further call within `quiet`.
    ///
    /// # Panics
    /// When it does.
    pub async fn expect_no_call(&mut self, quiet: Duration) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(quiet, self.handle.next_request()).await
        {
            panic!(
                "unexpected call {} {}; calls so far: {:?}",
                request.method(),
                request.uri(),
                self.calls
            );
        }
    }

    /// Every call seen so far, as `VERB /path`.
    pub fn calls(&self) -> &[String] {
        &self.calls
    }
}

impl Call {
    /// Answers with this status and JSON body.
    pub fn respond(self, status: u16, body: &Value) {
        let response = Response::builder()
            .status(StatusCode::from_u16(status).expect("status code"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("JSON")))
            .expect("response");
        self.respond.send_response(response);
    }

    /// Answers `200 OK` with the request's own body (what a create or replace returns), with
    /// `metadata.uid` and `metadata.resourceVersion` filled in when missing.
    pub fn respond_created(self) {
        let mut body = self.body.clone();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("uid").or_insert_with(|| "uid-created".into());
            meta.entry("resourceVersion").or_insert_with(|| "1".into());
        }
        self.respond(201, &body);
    }

    /// Answers with a Kubernetes `Status` error (`404` `NotFound`, `409` `AlreadyExists`, ...).
    pub fn respond_status(self, code: u16, reason: &str) {
        let body = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("{reason} (fake API server)"),
            "reason": reason,
            "code": code,
        });
        self.respond(code, &body);
    }

    /// Answers a list call with these items.
    pub fn respond_list(self, kind: &str, api_version: &str, items: Vec<Value>) {
        let body = serde_json::json!({
            "kind": format!("{kind}List"),
            "apiVersion": api_version,
            "metadata": {"resourceVersion": "1"},
            "items": items,
        });
        self.respond(200, &body);
    }
}

/// A stateful fake API server: an in-memory store behind the same wire, for tests and benchmarks
/// that run many reconciles, a whole `Controller`, or the scheduler extender's watches and binds.
///
/// # Paths
/// Namespaced (`/api/v1/namespaces/{ns}/{resource}[/{name}[/{sub}]]`, also under
/// `/apis/{group}/{version}/`), cluster-scoped (`/api/v1/nodes[/{name}]`) and all-namespace
/// collections (`/api/v1/pods`: every namespace).
///
/// # Verbs
/// list (label selectors `k=v`, `k!=v`; field selectors on any field path such as
/// `spec.nodeName` or `status.phase`, with `=`, `==` and `!=`), get, create (`409` when the name
/// exists), merge patch (RFC 7386; the `status` subresource patches the same object), replace
/// (`409` on a stale `resourceVersion`), delete, and `POST .../pods/{name}/binding` (sets
/// `spec.nodeName`; `409` when the pod is already bound or the Binding names another UID). A write that changes nothing keeps the
/// `resourceVersion` and sends no event, as the real API server does.
///
/// # Watches
/// A `watch=true` request is answered at once with a stream of `ADDED` / `MODIFIED` / `DELETED`
/// JSON lines for every change after its `resourceVersion` (changes through the API, or through
/// [`insert`](Self::insert), [`update`](Self::update) and [`remove`](Self::remove)), filtered by
/// its selectors: an object that stops matching is `DELETED` for that watch, one that starts
/// matching is `ADDED`. Watches are streamed, so they never block other requests. A watch from a
/// version older than the last [`remove_unseen`](Self::remove_unseen), or older than the recent
/// history kept (the last 1,024 to 2,048 changes, as etcd compacts), gets a `410 Expired` error
/// event, and the client must re-list.
///
/// # Write delay
/// [`with_write_delay`](Self::with_write_delay) answers every write from its own task after the
/// delay (so concurrent writes overlap) and records each write's start and end on a logical
/// clock ([`writes`](Self::writes)). Reads are answered at once, in order.
#[derive(Debug, Clone, Default)]
pub struct InMemoryApiServer {
    state: std::sync::Arc<std::sync::Mutex<Store>>,
    write_delay: Option<Duration>,
}

/// Changes kept for watches that resume from an older version (between this and twice this).
const HISTORY_LIMIT: usize = 1024;

/// (API prefix such as `/api/v1` or `/apis/apps/v1`, resource such as `pods`).
type Kind = (String, String);
/// (namespace, empty for cluster-scoped objects; name).
type Key = (String, String);

#[derive(Debug, Default)]
struct Store {
    objects: std::collections::BTreeMap<Kind, std::collections::BTreeMap<Key, Value>>,
    version: u64,
    requests: u64,
    /// Every change, for watches resuming from an older version.
    history: Vec<Change>,
    /// A watch from a version older than this gets `410 Expired`.
    compacted: u64,
    watches: Vec<Watch>,
    /// Logical clock of write starts and ends.
    tick: u64,
    in_flight: usize,
    max_in_flight: usize,
    writes: Vec<WriteRecord>,
}

#[derive(Debug, Clone)]
struct Change {
    version: u64,
    kind: Kind,
    before: Option<Value>,
    after: Option<Value>,
}

#[derive(Debug)]
struct Watch {
    kind: Kind,
    namespace: Option<String>,
    selector: Selector,
    tx: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
}

/// One write answered by a server with a write delay; `started` and `finished` are ticks of one
/// logical clock, so two writes overlapped when each started before the other finished.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRecord {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub status: u16,
    pub started: u64,
    pub finished: u64,
}

impl WriteRecord {
    /// Whether the two writes were in flight at the same time.
    pub fn overlaps(&self, other: &WriteRecord) -> bool {
        self.started < other.finished && other.started < self.finished
    }
}

/// A client talking to a fresh in-memory API server served by a task on the current runtime.
pub fn in_memory_api_server() -> (kube::Client, InMemoryApiServer) {
    let server = InMemoryApiServer::default();
    (server.client(), server)
}

fn status_body(code: u16, reason: &str) -> Value {
    status_message(code, reason, &format!("{reason} (in-memory API server)"))
}

fn status_message(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": if code < 300 { "Success" } else { "Failure" },
        "reason": reason, "code": code, "message": message})
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Percent-decoding of a query value (`+` is a space).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query parameter `name`, decoded.
fn param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|q| q.strip_prefix(name)?.strip_prefix('='))
        .map(unescape)
}

/// One selector term: key, wanted value, and whether it must be equal (`=`, `==`) or not (`!=`).
#[derive(Debug, Clone, PartialEq)]
struct Term {
    key: String,
    value: String,
    equal: bool,
}

fn terms(selector: &str) -> Vec<Term> {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|term| {
            let (key, value, equal) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, v, true)
            } else {
                let (k, v) = term.split_once('=').unwrap_or((term, ""));
                (k, v, true)
            };
            Term {
                key: key.trim().to_string(),
                value: value.trim().to_string(),
                equal,
            }
        })
        .collect()
}

/// A list's or watch's label and field selectors.
#[derive(Debug, Clone, Default, PartialEq)]
struct Selector {
    labels: Vec<Term>,
    fields: Vec<Term>,
}

impl Selector {
    fn from_query(query: &str) -> Self {
        Self {
            labels: param(query, "labelSelector")
                .map(|s| terms(&s))
                .unwrap_or_default(),
            fields: param(query, "fieldSelector")
                .map(|s| terms(&s))
                .unwrap_or_default(),
        }
    }

    fn matches(&self, object: &Value) -> bool {
        let label = |key: &str| {
            object["metadata"]["labels"][key]
                .as_str()
                .map(str::to_string)
        };
        let labels = self.labels.iter().all(|t| match label(&t.key) {
            Some(v) => (v == t.value) == t.equal,
            None => !t.equal,
        });
        // A field path (`spec.nodeName`); a missing field reads as the empty string.
        let field = |path: &str| {
            let v = path.split('.').fold(object, |v, seg| &v[seg]);
            match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            }
        };
        labels
            && self
                .fields
                .iter()
                .all(|t| (field(&t.key) == t.value) == t.equal)
    }
}

/// A request path taken apart.
#[derive(Debug)]
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let s: Vec<&str> = path.trim_matches('/').split('/').collect();
    let base = match s.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => return None,
    };
    if s.len() <= base {
        return None;
    }
    let prefix = format!("/{}", s[..base].join("/"));
    let at = |i: usize| s.get(i).map(|x| x.to_string());
    if s[base] == "namespaces" && s.len() > base + 2 {
        Some(Target {
            kind: (prefix, s[base + 2].to_string()),
            namespace: at(base + 1),
            name: at(base + 3),
            sub: at(base + 4),
        })
    } else {
        Some(Target {
            kind: (prefix, s[base].to_string()),
            namespace: None,
            name: at(base + 1),
            sub: at(base + 2),
        })
    }
}

/// The object without its `resourceVersion`, to tell a real change from a no-op write.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

impl Watch {
    /// The event this watch sees for `change`, if any.
    fn event(&self, change: &Change) -> Option<Value> {
        if change.kind != self.kind {
            return None;
        }
        let visible = |o: &Option<Value>| {
            o.as_ref().is_some_and(|o| {
                let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
                self.namespace.as_deref().is_none_or(|n| n == ns) && self.selector.matches(o)
            })
        };
        let kind = match (visible(&change.before), visible(&change.after)) {
            (false, true) => "ADDED",
            (true, true) => "MODIFIED",
            (true, false) => "DELETED",
            (false, false) => return None,
        };
        let object = change.after.as_ref().or(change.before.as_ref())?.clone();
        let mut object = object;
        object["metadata"]["resourceVersion"] = change.version.to_string().into();
        Some(serde_json::json!({"type": kind, "object": object}))
    }
}

fn event_line(event: &Value) -> bytes::Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    bytes::Bytes::from(line)
}

type ResponseBody =
    http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;

fn json_response(status: u16, body: &Value) -> Response<ResponseBody> {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(bytes::Bytes::from(
        serde_json::to_vec(body).unwrap_or_default(),
    ))
    .boxed_unsync();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("response")
}

fn stream_response(
    rx: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
) -> Response<ResponseBody> {
    use http_body_util::BodyExt;
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(line)),
            rx,
        ))
    });
    Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::StreamBody::new(frames).boxed_unsync())
        .expect("response")
}

impl Store {
    /// Records a change at the current version and tells the open watches.
    fn record(&mut self, kind: &Kind, before: Option<Value>, after: Option<Value>) {
        let change = Change {
            version: self.version,
            kind: kind.clone(),
            before,
            after,
        };
        self.watches.retain(|w| match w.event(&change) {
            Some(e) => w.tx.send(event_line(&e)).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.history.push(change);
        // Like etcd's compaction: keep recent history only; older watches must re-list.
        if self.history.len() > 2 * HISTORY_LIMIT {
            let dropped: Vec<Change> = self.history.drain(..HISTORY_LIMIT).collect();
            if let Some(last) = dropped.last() {
                self.compacted = self.compacted.max(last.version);
            }
        }
    }

    /// Stores `object` under `kind`/`key` (create or replace) and records the change; a write
    /// that changes nothing keeps the version and records nothing.
    fn put(&mut self, kind: &Kind, key: Key, mut object: Value) -> Value {
        let before = self.objects.get(kind).and_then(|c| c.get(&key)).cloned();
        if let Some(b) = &before {
            if same_content(b, &object) {
                return b.clone();
            }
        }
        self.version += 1;
        object["metadata"]["resourceVersion"] = self.version.to_string().into();
        self.objects
            .entry(kind.clone())
            .or_default()
            .insert(key, object.clone());
        self.record(kind, before, Some(object.clone()));
        object
    }

    fn delete(&mut self, kind: &Kind, key: &Key) -> Option<Value> {
        let before = self.objects.get_mut(kind)?.remove(key)?;
        self.version += 1;
        self.record(kind, Some(before.clone()), None);
        Some(before)
    }

    fn get(&self, kind: &Kind, key: &Key) -> Option<&Value> {
        self.objects.get(kind)?.get(key)
    }

    fn list<'a>(
        &'a self,
        kind: &Kind,
        namespace: Option<&'a str>,
        selector: &'a Selector,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .get(kind)
            .into_iter()
            .flat_map(|c| c.iter())
            .filter(move |((ns, _), o)| namespace.is_none_or(|n| n == ns) && selector.matches(o))
            .map(|(_, o)| o)
    }

    /// Opens a watch: the changes after `from` (or, without one, every current object as
    /// `ADDED`), then every later change.
    fn watch(&mut self, t: &Target, query: &str) -> Response<ResponseBody> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let watch = Watch {
            kind: t.kind.clone(),
            namespace: t.namespace.clone(),
            selector: Selector::from_query(query),
            tx,
        };
        let from = param(query, "resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0);
        match from {
            Some(v) if v < self.compacted => {
                let status = status_message(
                    410,
                    "Expired",
                    &format!("too old resource version: {v} ({})", self.compacted),
                );
                let _ = watch.tx.send(event_line(
                    &serde_json::json!({"type": "ERROR", "object": status}),
                ));
                return stream_response(rx); // the sender is dropped: the stream ends
            }
            Some(v) => {
                for change in self.history.iter().filter(|c| c.version > v) {
                    if let Some(e) = watch.event(change) {
                        let _ = watch.tx.send(event_line(&e));
                    }
                }
            }
            None => {
                for o in self.list(&t.kind, t.namespace.as_deref(), &watch.selector) {
                    let _ = watch.tx.send(event_line(
                        &serde_json::json!({"type": "ADDED", "object": o}),
                    ));
                }
            }
        }
        self.watches.push(watch);
        stream_response(rx)
    }
}

/// The namespace an object goes to: the path's, else its own.
fn key_of(namespace: Option<&str>, object: &Value) -> Key {
    let ns = namespace
        .map(str::to_string)
        .or_else(|| object["metadata"]["namespace"].as_str().map(str::to_string))
        .unwrap_or_default();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (ns, name)
}

impl InMemoryApiServer {
    /// A server whose writes each take `delay`, answered from their own tasks (so concurrent
    /// writes overlap), recorded in [`writes`](Self::writes).
    pub fn with_write_delay(delay: Duration) -> Self {
        Self {
            write_delay: Some(delay),
            ..Self::default()
        }
    }

    /// Another client of this same server (a second operator replica), served by its own task on
    /// the current runtime.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let serving = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let Ok(bytes) = body.collect_bytes().await else {
                    continue;
                };
                let method = parts.method.to_string();
                let path = parts.uri.path().to_string();
                let query = parts.uri.query().unwrap_or_default().to_string();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                match (serving.write_delay, method.as_str()) {
                    (Some(delay), "POST" | "PUT" | "PATCH" | "DELETE") => {
                        let serving = serving.clone();
                        tokio::spawn(async move {
                            let started = serving.start_write();
                            tokio::time::sleep(delay).await;
                            let (status, reply) =
                                serving.handle(&method, &path, &query, body.clone());
                            serving.finish_write(WriteRecord {
                                method,
                                path,
                                body,
                                status,
                                started,
                                finished: 0,
                            });
                            respond.send_response(json_response(status, &reply));
                        });
                    }
                    _ => respond.send_response(serving.answer(&method, &path, &query, body)),
                }
            }
        });
        kube::Client::new(service, "default")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start_write(&self) -> u64 {
        let mut s = self.lock();
        s.tick += 1;
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        s.tick
    }

    fn finish_write(&self, mut record: WriteRecord) {
        let mut s = self.lock();
        s.tick += 1;
        s.in_flight -= 1;
        record.finished = s.tick;
        s.writes.push(record);
    }

    /// Stores an object under `collection` (e.g. `/apis/kubeflow.org/v1/namespaces/default/tfjobs`,
    /// `/api/v1/nodes`, or `/api/v1/pods` with the object's own namespace), replacing any object
    /// of the same name; watches see `ADDED` or `MODIFIED`.
    ///
    /// # Panics
    /// When `collection` is not an API path.
    pub fn insert(&self, collection: &str, mut object: Value) {
        let t = target(collection).expect("an API collection path");
        if let Some(ns) = &t.namespace {
            object["metadata"]["namespace"] = ns.clone().into();
        }
        let key = key_of(t.namespace.as_deref(), &object);
        self.lock().put(&t.kind, key, object);
    }

    /// Merge-patches (RFC 7386) the object `name` of `collection` (for namespaced objects in an
    /// all-namespace collection, `name` is `namespace/name`); watches see the change. Returns
    /// whether the object exists.
    ///
    /// # Panics
    /// When `collection` is not an API path.
    pub fn update(&self, collection: &str, name: &str, patch: &Value) -> bool {
        let t = target(collection).expect("an API collection path");
        let key = self.key(&t, name);
        let mut store = self.lock();
        let Some(mut object) = store.get(&t.kind, &key).cloned() else {
            return false;
        };
        merge_patch(&mut object, patch);
        store.put(&t.kind, key, object);
        true
    }

    /// Deletes the object `name` of `collection` (`namespace/name` in an all-namespace
    /// collection); watches see `DELETED`. Returns the object.
    ///
    /// # Panics
    /// When `collection` is not an API path.
    pub fn remove(&self, collection: &str, name: &str) -> Option<Value> {
        let t = target(collection).expect("an API collection path");
        let key = self.key(&t, name);
        self.lock().delete(&t.kind, &key)
    }

    /// Deletes the object as if it happened while every watch was broken (an API server restart
    /// with etcd compacted): open watches end without seeing it, and a watch resumed from any
    /// version so far gets `410 Expired`, so clients must re-list to notice.
    ///
    /// # Panics
    /// When `collection` is not an API path.
    pub fn remove_unseen(&self, collection: &str, name: &str) -> Option<Value> {
        let t = target(collection).expect("an API collection path");
        let key = self.key(&t, name);
        let mut store = self.lock();
        store.watches.clear();
        let removed = store.objects.get_mut(&t.kind)?.remove(&key);
        store.version += 1;
        store.history.clear();
        store.compacted = store.version;
        removed
    }

    fn key(&self, t: &Target, name: &str) -> Key {
        match (&t.namespace, name.split_once('/')) {
            (Some(ns), _) => (ns.clone(), name.to_string()),
            (None, Some((ns, n))) => (ns.to_string(), n.to_string()),
            (None, None) => (String::new(), name.to_string()),
        }
    }

    /// The objects of a collection, by namespace and name.
    ///
    /// # Panics
    /// When `collection` is not an API path.
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        let t = target(collection).expect("an API collection path");
        let store = self.lock();
        let all = Selector::default();
        store
            .list(&t.kind, t.namespace.as_deref(), &all)
            .cloned()
            .collect()
    }

    /// How many requests were answered.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// How many watches are open.
    pub fn open_watches(&self) -> usize {
        let mut s = self.lock();
        s.watches.retain(|w| !w.tx.is_closed());
        s.watches.len()
    }

    /// The writes answered so far (with a write delay only), in the order they finished.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.lock().writes.clone()
    }

    /// The most writes in flight at once (with a write delay only).
    pub fn max_writes_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    fn answer(&self, method: &str, path: &str, query: &str, body: Value) -> Response<ResponseBody> {
        if method == "GET" && param(query, "watch").is_some_and(|w| w == "true" || w == "1") {
            let mut store = self.lock();
            store.requests += 1;
            return match target(path) {
                Some(t) => store.watch(&t, query),
                None => json_response(404, &status_body(404, "NotFound")),
            };
        }
        let (status, reply) = self.handle(method, path, query, body);
        json_response(status, &reply)
    }

    fn handle(&self, method: &str, path: &str, query: &str, body: Value) -> (u16, Value) {
        let mut store = self.lock();
        store.requests += 1;
        let Some(t) = target(path) else {
            return (404, status_body(404, "NotFound"));
        };
        let key = |name: &str| (t.namespace.clone().unwrap_or_default(), name.to_string());
        match (method, t.name.as_deref(), t.sub.as_deref()) {
            ("GET", None, _) => {
                let selector = Selector::from_query(query);
                let items: Vec<Value> = store
                    .list(&t.kind, t.namespace.as_deref(), &selector)
                    .cloned()
                    .collect();
                let version = store.version.to_string();
                (
                    200,
                    serde_json::json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}),
                )
            }
            ("GET", Some(name), _) => match store.get(&t.kind, &key(name)) {
                Some(o) => (200, o.clone()),
                None => (404, status_body(404, "NotFound")),
            },
            ("POST", None, _) => {
                let mut object = body;
                if let Some(ns) = &t.namespace {
                    object["metadata"]["namespace"] = ns.clone().into();
                }
                let k = key_of(t.namespace.as_deref(), &object);
                if store.get(&t.kind, &k).is_some() {
                    return (409, status_body(409, "AlreadyExists"));
                }
                object["metadata"]["uid"] = format!("uid-{}", store.version + 1).into();
                object["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z".into();
                (201, store.put(&t.kind, k, object))
            }
            ("POST", Some(name), Some("binding")) => {
                let k = key(name);
                let Some(mut pod) = store.get(&t.kind, &k).cloned() else {
                    return (
                        404,
                        status_message(404, "NotFound", &format!("pods \"{name}\" not found")),
                    );
                };
                let node = body["target"]["name"].as_str().unwrap_or_default();
                if node.is_empty() {
                    return (
                        400,
                        status_message(400, "BadRequest", "binding has no target node"),
                    );
                }
                let uid = body["metadata"]["uid"].as_str().unwrap_or_default();
                if !uid.is_empty() && pod["metadata"]["uid"] != uid {
                    let message = format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        pod["metadata"]["uid"].as_str().unwrap_or_default()
                    );
                    return (409, status_message(409, "Conflict", &message));
                }
                if let Some(current) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                    let message = format!("pod {name} is already assigned to node \"{current}\"");
                    return (409, status_message(409, "Conflict", &message));
                }
                pod["spec"]["nodeName"] = node.into();
                store.put(&t.kind, k, pod);
                (201, status_body(201, "Created"))
            }
            ("PATCH", Some(name), _) => {
                let k = key(name);
                match store.get(&t.kind, &k).cloned() {
                    Some(mut object) => {
                        merge_patch(&mut object, &body);
                        (200, store.put(&t.kind, k, object))
                    }
                    None => (
                        404,
                        status_message(
                            404,
                            "NotFound",
                            &format!("{} \"{name}\" not found", t.kind.1),
                        ),
                    ),
                }
            }
            ("PUT", Some(name), _) => {
                let k = key(name);
                match store.get(&t.kind, &k) {
                    Some(object) => {
                        if body["metadata"]["resourceVersion"]
                            != object["metadata"]["resourceVersion"]
                        {
                            return (409, status_body(409, "Conflict"));
                        }
                        (200, store.put(&t.kind, k, body))
                    }
                    None => (404, status_body(404, "NotFound")),
                }
            }
            ("DELETE", Some(name), _) => match store.delete(&t.kind, &key(name)) {
                Some(_) => (200, status_body(200, "Deleted")),
                None => (404, status_body(404, "NotFound")),
            },
            _ => (405, status_body(405, "MethodNotAllowed")),
        }
    }
}
