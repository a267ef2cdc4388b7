//! Test support: `spawn_app` builds the real server on a real socket (port 0), on the
//! in-memory store, a harness-owned redis-server or a harness-owned Redis Cluster, and checks
//! every answer against openapi.yaml.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sessiond::config::{RedisChoice, Secrets, Settings};
use sessiond::domain::{ClientKey, IdSource, OsRandom, SessionId};
use sessiond::limits::LimitSettings;
use sessiond::startup::{Application, Sources};

use crate::redis_cluster::{self, RedisCluster};
use crate::redis_server::{self, RedisServer};
use crate::spec::spec;

/// Which store an app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Memory,
    Redis,
    Cluster,
}

/// The Redis an app runs on, owned by the harness.
#[derive(Clone)]
pub enum Backend {
    Redis(Arc<RedisServer>),
    Cluster(Arc<RedisCluster>),
}

pub const SECRET: &str = "test-secret-0123456789";

/// The admin token of every app whose configuration names none (the admin calls are off
/// without one); `TestApp` sends it on admin calls that carry no Authorization of their own.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The paths under /v1/sessions/ of the calls that take a session body.
pub const SESSION_CALLS: [&str; 7] = [
    "current",
    "tick",
    "foreground",
    "background",
    "end",
    "report",
    "batch",
];

#[derive(Clone)]
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub backend: Option<Backend>,
    /// The token sent on admin calls, when the harness gave the app one.
    admin_token: Option<&'static str>,
}

pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and returns the body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self.json()
    }

    /// Asserts a problem+json answer with this status and returns it.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["status"], status);
        body
    }
}

/// Settings from a TOML text, on the given Redis (or in memory without one).
pub fn settings(toml: &str, backend: Option<&Backend>) -> Settings {
    let file = Settings::parse_file(toml).expect("test configuration parses");
    let redis = backend.map(|b| match b {
        Backend::Redis(server) => RedisChoice::Url(server.url()),
        Backend::Cluster(cluster) => RedisChoice::Cluster(cluster.urls()),
    });
    let mut settings = Settings::from_file(
        file,
        "127.0.0.1:0".into(),
        redis,
        Secrets {
            secret: Some(SECRET.into()),
            admin_token: None,
        },
    )
    .expect("test configuration is valid");
    settings.workers = Some(2);
    // The suites call from one address with short keys and many calls per client; the abuse
    // limits (and their defaults) are tested where the configuration names them.
    if !toml.contains("[limits]") {
        settings.limits = LimitSettings::off();
    }
    if !toml.contains("min_client_length") {
        settings.min_client_length = 1;
    }
    settings
}

pub async fn spawn_app(store: Store, toml: &str) -> TestApp {
    spawn_app_with(store, toml, Sources::default()).await
}

pub async fn spawn_app_with(store: Store, toml: &str, sources: Sources) -> TestApp {
    spawn(toml, sources, backend(store).await).await
}

/// The harness's Redis for a store, none in memory.
async fn backend(store: Store) -> Option<Backend> {
    match store {
        Store::Memory => None,
        Store::Redis => Some(Backend::Redis(redis_server::shared())),
        Store::Cluster => Some(Backend::Cluster(
            tokio::task::spawn_blocking(redis_cluster::shared)
                .await
                .expect("the shared cluster starts"),
        )),
    }
}

/// An app on a given redis-server (several instances may share one).
pub async fn spawn_on_redis(toml: &str, redis: Arc<RedisServer>) -> TestApp {
    spawn(toml, Sources::default(), Some(Backend::Redis(redis))).await
}

/// An app on a given Redis Cluster (several instances may share one).
pub async fn spawn_on_cluster(toml: &str, cluster: Arc<RedisCluster>) -> TestApp {
    spawn(toml, Sources::default(), Some(Backend::Cluster(cluster))).await
}

/// `n` instances sharing one store: on Redis and the cluster, apps on the harness's server;
/// in memory, where the store is the process's own, the one app `n` times.
pub async fn spawn_instances(store: Store, toml: &str, n: usize) -> Vec<TestApp> {
    if store == Store::Memory {
        return vec![spawn_app(store, toml).await; n];
    }
    let backend = backend(store).await;
    let mut apps = Vec::with_capacity(n);
    for _ in 0..n {
        apps.push(spawn(toml, Sources::default(), backend.clone()).await);
    }
    apps
}

/// An app without an admin token, so with the admin calls off.
pub async fn spawn_app_without_admin_token(store: Store, toml: &str) -> TestApp {
    spawn_with_admin(toml, Sources::default(), backend(store).await, false).await
}

async fn spawn(toml: &str, sources: Sources, backend: Option<Backend>) -> TestApp {
    spawn_with_admin(toml, sources, backend, true).await
}

/// `admin`: give the app the harness's admin token when its configuration names none.
async fn spawn_with_admin(
    toml: &str,
    sources: Sources,
    backend: Option<Backend>,
    admin: bool,
) -> TestApp {
    spawn_listening(toml, sources, backend, admin, false)
        .await
        .0
}

/// An app in memory with an ops address (`--ops-listen`): its public address, and its ops
/// address (the same app, reached there).
pub async fn spawn_with_ops_address(toml: &str) -> (TestApp, TestApp) {
    let (public, ops) = spawn_listening(toml, Sources::default(), None, true, true).await;
    (public, ops.expect("an ops address was asked for"))
}

async fn spawn_listening(
    toml: &str,
    sources: Sources,
    backend: Option<Backend>,
    admin: bool,
    ops: bool,
) -> (TestApp, Option<TestApp>) {
    // The service's own logs, when asked for (SESSIOND_LOG=warn cargo test ... -- --nocapture).
    if std::env::var_os("SESSIOND_LOG").is_some() {
        sessiond::telemetry::init_logging(sessiond::telemetry::LogFormat::Text);
    }
    let mut settings = settings(toml, backend.as_ref());
    let admin_token = (admin && !toml.contains("admin_token")).then_some(ADMIN_TOKEN);
    if let Some(token) = admin_token {
        settings.admin_token = Some(token.into());
    }
    if ops {
        settings.ops_listen = Some("127.0.0.1:0".into());
    }
    let app = Application::build_with(settings, sources)
        .await
        .expect("the app builds");
    let (port, ops_port) = (app.port(), app.ops_port());
    tokio::spawn(app.run_until_stopped());
    let reach = |port: u16| TestApp {
        address: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // Below the server's keep-alive (5 s), so a pooled connection is never reused just
            // as the server closes it (a request lost to that race fails as incomplete).
            .pool_idle_timeout(Duration::from_secs(3))
            .build()
            .unwrap(),
        backend: backend.clone(),
        admin_token,
    };
    (reach(port), ops_port.map(reach))
}

/// Held by the tests that load the whole machine (cluster operations and primary kills under
/// load, the model tests on Redis), so that none of them runs beside another: on two cores, one's load would skew the
/// other's timing.
pub static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh client key, so tests sharing a redis-server never meet.
pub fn new_client() -> String {
    OsRandom.client_key().as_str().to_owned()
}

impl TestApp {
    /// The keys matching a pattern in the app's Redis (every primary of a cluster), sorted;
    /// None on the in-memory store.
    pub async fn redis_keys(&self, pattern: &str) -> Option<Vec<String>> {
        let mut keys = match self.backend.clone()? {
            Backend::Redis(server) => {
                let mut con = server.connection().await;
                redis::AsyncCommands::keys(&mut con, pattern).await.unwrap()
            }
            Backend::Cluster(cluster) => {
                let pattern = pattern.to_owned();
                tokio::task::spawn_blocking(move || cluster.keys(&pattern))
                    .await
                    .unwrap()
            }
        };
        keys.sort();
        Some(keys)
    }

    async fn finish(&self, method: &str, path: &str, response: reqwest::Response) -> TestResponse {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a readable body");
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        spec().check(method, path, status, content_type, &text);
        TestResponse {
            status,
            headers,
            text,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> TestResponse {
        self.request(reqwest::Method::POST, path, &[], Some(body))
            .await
    }

    /// Sends raw bytes with a given content type (or none).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> TestResponse {
        let mut request = self.http.post(format!("{}{path}", self.address)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.expect("the server answers");
        self.finish("POST", path, response).await
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> TestResponse {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let admin_call = method == reqwest::Method::GET
            && (path.starts_with("/v1/events")
                || path.starts_with("/v1/stats")
                || path.starts_with("/v1/sessions/"));
        if let Some(token) = self.admin_token.filter(|_| admin_call)
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the server answers");
        let answer = self.finish(method.as_str(), path, response).await;
        if let (Some(body), 200) = (&body, answer.status) {
            spec().check_accepted_request(method.as_str(), path, body, &answer.json());
        }
        answer
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.request(reqwest::Method::GET, path, &[], None).await
    }

    pub async fn current(&self, body: Value) -> TestResponse {
        self.post("/v1/sessions/current", body).await
    }

    pub async fn tick(&self, body: Value) -> TestResponse {
        self.post("/v1/sessions/tick", body).await
    }

    pub async fn foreground(&self, body: Value) -> TestResponse {
        self.post("/v1/sessions/foreground", body).await
    }

    pub async fn background(&self, body: Value) -> TestResponse {
        self.post("/v1/sessions/background", body).await
    }

    pub async fn end(&self, body: Value) -> TestResponse {
        self.post("/v1/sessions/end", body).await
    }

    pub async fn batch(&self, operations: Value) -> TestResponse {
        self.post("/v1/sessions/batch", json!({ "operations": operations }))
            .await
    }

    pub async fn lookup(&self, id: &str) -> TestResponse {
        self.get(&format!("/v1/sessions/{id}")).await
    }
}

/// Milliseconds since the epoch of an RFC 3339 time from a response.
pub fn millis(time: &Value) -> i64 {
    let text = time
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {time}"));
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {text}"));
    (parsed.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Waits until the store's clock has passed a time the service announced (an `expires_at`).
/// The service, Redis and this test share the machine's clock, so this is exact, not a guess.
pub async fn wait_past(time: &Value) {
    wait_until(millis(time)).await;
}

/// Waits until just past a time in milliseconds since the epoch.
pub async fn wait_until(ms: i64) {
    let target = ms + 30;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    if target > now {
        tokio::time::sleep(Duration::from_millis((target - now) as u64)).await;
    }
}

/// How long after its expiry the sweeper finalizes a session, as documented in the README:
/// one `sweep_interval` (the tests configure 100 ms or 250 ms) plus a second of slack.
pub const SWEEP_BOUND: Duration = Duration::from_millis(1_250);

/// Checks a condition until it holds or `bound` has passed; returns whether it held. For
/// effects of the background sweeper, which the test can observe but not trigger.
pub async fn eventually<F, Fut>(bound: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ids handed out in a scripted order first, then from the OS; for forcing collisions.
pub struct ScriptedIds {
    queue: Mutex<VecDeque<SessionId>>,
}

impl ScriptedIds {
    pub fn new(ids: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(ids.iter().map(|id| SessionId::parse(id).unwrap()).collect()),
        })
    }
}

impl IdSource for ScriptedIds {
    fn session_id(&self) -> SessionId {
        self.queue
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| OsRandom.session_id())
    }

    fn client_key(&self) -> ClientKey {
        OsRandom.client_key()
    }
}

/// Runs one async behaviour test against each store: in memory, on Redis, on Redis Cluster.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn memory() {
                    super::$name($crate::helpers::Store::Memory).await
                }

                #[tokio::test]
                async fn redis() {
                    super::$name($crate::helpers::Store::Redis).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$name($crate::helpers::Store::Cluster).await
                }
            }
        )*
    };
}
