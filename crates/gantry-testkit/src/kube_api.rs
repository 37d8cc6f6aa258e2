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
/// that run many reconciles or a whole `Controller` rather than a script.
///
/// It serves namespaced paths (`/api/v1/namespaces/{ns}/{resource}[/{name}[/status]]` and
/// `/apis/{group}/{version}/namespaces/...`): list (with equality label selectors), get, create
/// (`409` when the name exists), merge patch (RFC 7386), replace (`409` on a stale
/// `resourceVersion`), delete. Watches are accepted and held open without events, so a controller
/// reconciles what its initial list returned. Requests are answered one at a time, in order.
#[derive(Debug, Clone, Default)]
pub struct InMemoryApiServer {
    state: std::sync::Arc<std::sync::Mutex<Store>>,
}

#[derive(Debug, Default)]
struct Store {
    /// Collection path (`/api/v1/namespaces/default/pods`) to name to object.
    objects: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>>,
    version: u64,
    requests: u64,
}

/// A client talking to a fresh in-memory API server served by a task on the current runtime.
pub fn in_memory_api_server() -> (kube::Client, InMemoryApiServer) {
    let server = InMemoryApiServer::default();
    (server.client(), server)
}

fn status_body(code: u16, reason: &str) -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": if code < 300 { "Success" } else { "Failure" },
        "reason": reason, "code": code, "message": format!("{reason} (in-memory API server)")})
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

/// The equality label selector of a list query, as `(key, value)` pairs.
fn selector(query: &str) -> Vec<(String, String)> {
    let Some(selector) = query
        .split('&')
        .find_map(|q| q.strip_prefix("labelSelector="))
    else {
        return Vec::new();
    };
    let selector = selector
        .replace("%2F", "/")
        .replace("%3D", "=")
        .replace("%2C", ",");
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn selected(object: &Value, selector: &[(String, String)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k.as_str()] == v.as_str())
}

impl InMemoryApiServer {
    /// Another client of this same server (a second operator replica), served by its own task on
    /// the current runtime.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let serving = self.clone();
        tokio::spawn(async move {
            let mut watches = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let Ok(bytes) = body.collect_bytes().await else {
                    continue;
                };
                let query = parts.uri.query().unwrap_or_default().to_string();
                if query.split('&').any(|q| q == "watch=true") {
                    watches.push(respond); // held open: no events
                    continue;
                }
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (status, reply) =
                    serving.handle(parts.method.as_str(), parts.uri.path(), &query, body);
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
                    .expect("response");
                respond.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// Stores an object under `collection` (e.g. `/apis/kubeflow.org/v1/namespaces/default/tfjobs`).
    pub fn insert(&self, collection: &str, mut object: Value) {
        let mut store = self.state.lock().expect("store");
        store.version += 1;
        object["metadata"]["resourceVersion"] = store.version.to_string().into();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        store
            .objects
            .entry(collection.to_string())
            .or_default()
            .insert(name, object);
    }

    /// The objects of a collection, by name.
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        let store = self.state.lock().expect("store");
        store
            .objects
            .get(collection)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many requests were answered.
    pub fn requests(&self) -> u64 {
        self.state.lock().expect("store").requests
    }

    fn handle(&self, method: &str, path: &str, query: &str, body: Value) -> (u16, Value) {
        let mut store = self.state.lock().expect("store");
        store.requests += 1;
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        // [api, v1 | apis, group, version] namespaces ns resource [name [sub]]
        let base = if segments.first() == Some(&"api") {
            2
        } else {
            3
        };
        // Namespaced: .../namespaces/{ns}/{resource}; cluster-scoped: .../{resource}.
        let end = if segments.get(base) == Some(&"namespaces") {
            base + 3
        } else {
            base + 1
        };
        if segments.len() < end {
            return (404, status_body(404, "NotFound"));
        }
        let collection = format!("/{}", segments[..end].join("/"));
        let name = segments.get(end).copied();
        store.version += 1;
        let version = store.version.to_string();
        let objects = store.objects.entry(collection).or_default();
        match (method, name) {
            ("GET", None) => {
                let selector = selector(query);
                let items: Vec<Value> = objects
                    .values()
                    .filter(|o| selected(o, &selector))
                    .cloned()
                    .collect();
                (
                    200,
                    serde_json::json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}),
                )
            }
            ("GET", Some(name)) => match objects.get(name) {
                Some(o) => (200, o.clone()),
                None => (404, status_body(404, "NotFound")),
            },
            ("POST", None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if objects.contains_key(&name) {
                    return (409, status_body(409, "AlreadyExists"));
                }
                let mut object = body;
                object["metadata"]["resourceVersion"] = version.clone().into();
                object["metadata"]["uid"] = format!("uid-{version}").into();
                object["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z".into();
                objects.insert(name, object.clone());
                (201, object)
            }
            ("PATCH", Some(name)) => match objects.get_mut(name) {
                Some(object) => {
                    merge_patch(object, &body);
                    object["metadata"]["resourceVersion"] = version.into();
                    (200, object.clone())
                }
                None => (404, status_body(404, "NotFound")),
            },
            ("PUT", Some(name)) => match objects.get_mut(name) {
                Some(object) => {
                    if body["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"]
                    {
                        return (409, status_body(409, "Conflict"));
                    }
                    *object = body;
                    object["metadata"]["resourceVersion"] = version.into();
                    (200, object.clone())
                }
                None => (404, status_body(404, "NotFound")),
            },
            ("DELETE", Some(name)) => match objects.remove(name) {
                Some(_) => (200, status_body(200, "Deleted")),
                None => (404, status_body(404, "NotFound")),
            },
            _ => (405, status_body(405, "MethodNotAllowed")),
        }
    }
}
