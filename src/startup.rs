//! Building the application: the store chosen by the configuration, the HTTP server bound to
//! its listener, and the port it got (port 0 in tests).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{RedisSettings, Settings};
use crate::domain::{ClientHasher, Clock, IdSource, OsRandom, SystemClock};
use crate::http::connections::ConnectionCounts;
use crate::http::ops::OpsAddress;
use crate::http::{self, AppState};
use crate::limits::{Limiter, Scope};
use crate::store::metered::Metered;
use crate::store::redis::Target;
use crate::store::{MemoryStore, Policies, RedisOptions, RedisStore, SessionStore};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("cannot use the Redis URL: {0}")]
    Redis(String),
}

/// A built application: bound, not yet serving.
pub struct Application {
    port: u16,
    ops_port: Option<u16>,
    server: Server,
    store: Arc<dyn SessionStore>,
}

/// The parts tests may replace; production uses the OS's randomness and clock.
pub struct Sources {
    pub ids: Arc<dyn IdSource>,
    pub clock: Arc<dyn Clock>,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            ids: Arc::new(OsRandom),
            clock: Arc::new(SystemClock),
        }
    }
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        Self::build_with(settings, Sources::default()).await
    }

    pub async fn build_with(settings: Settings, sources: Sources) -> Result<Self, StartError> {
        let Sources { ids, clock } = sources;
        let store: Arc<dyn SessionStore> = match &settings.redis {
            Some(redis) => {
                let nodes: Vec<String>;
                let (target, kind) = match redis {
                    RedisSettings::Single(url) => (Target::Single(url.expose_secret()), "Redis"),
                    RedisSettings::Cluster(urls) => {
                        nodes = urls.iter().map(|u| u.expose_secret().to_owned()).collect();
                        (Target::Cluster(&nodes), "Redis Cluster")
                    }
                };
                let options = RedisOptions {
                    prefix: settings.key_prefix.clone(),
                    timeout: settings.store_timeout,
                    retention: settings.retention,
                    // The workers, and the thread that runs the sweeper.
                    threads: settings.workers.unwrap_or_else(default_workers) + 1,
                    durability: settings.durability,
                    clock: None,
                };
                let store = RedisStore::connect(target, &options, ids.clone())
                    .map_err(|e| StartError::Redis(e.to_string()))?;
                tracing::info!(prefix = %settings.key_prefix, "sessions are kept in {kind}");
                Arc::new(store)
            }
            None => {
                tracing::warn!(
                    "no Redis given (--redis-url or --redis-cluster): sessions are kept in memory and live only as long as this process"
                );
                let memory = Arc::new(MemoryStore::new(
                    clock.clone(),
                    ids.clone(),
                    settings.retention,
                ));
                spawn_janitor(Arc::downgrade(&memory));
                memory
            }
        };
        // The in-memory store may key client hashes with a secret drawn per process, since
        // its sessions do not outlive the process either.
        let secret = settings.secret.clone().unwrap_or_else(|| {
            let key = ids.client_key();
            SecretString::from(key.as_str().to_owned())
        });
        // In memory the process is every instance there is: its limits are its own.
        let mut limits = settings.limits.clone();
        if settings.redis.is_none() {
            limits.scope = Scope::Instance;
        }
        let metrics = Arc::new(Metrics::new(store.as_ref()));
        // Every caller reaches the store through this, so every call is measured.
        let store: Arc<dyn SessionStore> = Arc::new(Metered::new(store, metrics.clone()));
        let state = web::Data::new(AppState {
            store: store.clone(),
            hasher: ClientHasher::new(&secret),
            ids,
            clock: clock.clone(),
            metrics,
            limiter: Arc::new(Limiter::new(&limits)),
            settings: Arc::new(settings.clone()),
        });
        spawn_sweeper(Arc::downgrade(&state.clone().into_inner()));
        spawn_limit_tidier(Arc::downgrade(&state.limiter), clock.clone());
        if limits.scope == Scope::Store {
            spawn_limit_sharing(Arc::downgrade(&state.clone().into_inner()));
        }
        // A first ping, so store_up says how the store fares before any call.
        let probe = state.clone();
        tokio::spawn(async move {
            let _ = probe.store.ping().await;
        });
        let listener = TcpListener::bind(&settings.listen).map_err(|source| StartError::Bind {
            address: settings.listen.clone(),
            source,
        })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let (ops_listener, ops_address) = match &settings.ops_listen {
            Some(address) => {
                let failed = |source| StartError::Bind {
                    address: address.clone(),
                    source,
                };
                let listener = TcpListener::bind(address).map_err(failed)?;
                let bound = listener.local_addr().map_err(failed)?;
                (Some(listener), Some(OpsAddress(bound)))
            }
            None => (None, None),
        };
        let counts = ConnectionCounts::new(
            settings.max_connections_per_address,
            settings.limits.trusted_proxies.clone(),
        );
        let mut server = HttpServer::new(move || {
            // Each worker has its own handle on the state: a shared one's reference count was
            // written by every worker on every request.
            let mut app = App::new();
            if let Some(ops) = ops_address {
                app = app.app_data(ops);
            }
            app.app_data(state.metrics.request_series())
                .app_data(web::Data::new(AppState::clone(&state)))
                .wrap(from_fn(http::connections::admit))
                .wrap(from_fn(http::observe))
                .configure(http::routes)
        })
        .on_connect(move |connection, data| counts.on_connect(connection, data));
        let workers = settings.workers.unwrap_or_else(default_workers);
        // actix caps connections per worker; the setting is for the whole instance.
        server = server
            .workers(workers)
            .max_connections(settings.max_connections.div_ceil(workers));
        server = server.listen(listener).map_err(|source| StartError::Bind {
            address: settings.listen.clone(),
            source,
        })?;
        if let Some(ops) = ops_listener {
            server = server.listen(ops).map_err(|source| StartError::Bind {
                address: settings.ops_listen.clone().unwrap_or_default(),
                source,
            })?;
        }
        let server = server.run();
        if settings.admin_token.is_none() {
            tracing::info!(
                "no admin token is configured: the admin calls (lookup by id, /v1/events, /v1/stats) are off"
            );
        }
        if let Some(OpsAddress(ops)) = ops_address {
            tracing::info!(
                %ops,
                "/metrics and the admin calls are served on the ops address only"
            );
        }
        tracing::info!(port, store = store.kind(), "sessiond is listening");
        Ok(Self {
            port,
            ops_port: ops_address.map(|OpsAddress(a)| a.port()),
            server,
            store,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The ops listener's port, when there is one.
    pub fn ops_port(&self) -> Option<u16> {
        self.ops_port
    }

    /// Stops the server gracefully (in-flight calls finish) when asked.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.store.clone()
    }

    /// Serves until stopped by a signal (SIGTERM or SIGINT drain in-flight calls) or the handle.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Removes expired records from the in-memory store every second, so memory follows
/// retention even for clients that never return; ends with the store.
fn spawn_janitor(store: std::sync::Weak<MemoryStore>) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            interval.tick().await;
            let Some(store) = store.upgrade() else { break };
            store.purge_expired(100_000);
        }
    });
}

/// Drops the rate-limit state of callers gone quiet, every ten seconds.
fn spawn_limit_tidier(limiter: std::sync::Weak<Limiter>, clock: Arc<dyn Clock>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            ticks.tick().await;
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            limiter.tidy(clock.now_ms());
        }
    });
}

/// How often an instance shares its limit counts with the others (`limits.scope = "store"`):
/// what instances admit at once beyond what the store has counted is bounded by their
/// shares, and shares are renewed this often.
const LIMIT_SHARING: std::time::Duration = std::time::Duration::from_millis(100);

/// Shares the limit counts with the store's other instances, every LIMIT_SHARING; ends with
/// the application.
fn spawn_limit_sharing(state: std::sync::Weak<AppState>) {
    let instance = OsRandom.client_key().as_str().to_owned();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(LIMIT_SHARING);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            let now = state.clock.now_ms();
            state
                .limiter
                .share(state.store.as_ref(), &instance, now)
                .await;
        }
    });
}

/// Finalizes sessions that idled out while their clients stayed away: every
/// `sweep_interval`, and at once again while a sweep leaves a backlog. Every instance
/// sweeps; the store makes each finalization happen once. Ends with the application.
fn spawn_sweeper(state: std::sync::Weak<AppState>) {
    tokio::spawn(async move {
        let Some(interval) = state.upgrade().map(|s| s.settings.sweep_interval) else {
            return;
        };
        let policies: Policies = state.upgrade().map_or_else(Policies::new, |s| {
            s.settings
                .namespaces
                .iter()
                .map(|(name, ns)| (name.to_string(), ns.policy))
                .collect()
        });
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            loop {
                let Some(state) = state.upgrade() else { return };
                let swept = state.store.sweep(&policies).await;
                match swept {
                    Ok(swept) => {
                        state.metrics.swept_sessions.inc_by(swept.finalized.total());
                        for (status, n) in swept.finalized.by_status() {
                            state.metrics.count_finalized(status, n);
                        }
                        if !swept.more {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sweeping for idled-out sessions failed; trying again");
                        break;
                    }
                }
            }
        }
    });
}

/// How many workers actix starts when none are configured.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
