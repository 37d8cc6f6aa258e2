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
