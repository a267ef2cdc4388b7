//! The reference handlers sessiond is measured against (bench/run.py): the floor of cost for
//! any session authority on this stack. `redis` mode parses a small JSON body, makes one
//! EVALSHA of a trivial get-or-create script through one multiplexed connection, and answers
//! JSON; `none` mode parses and answers without any store.
//!
//! cargo run --release --example reference -- --mode redis --listen 127.0.0.1:9000 --redis-url redis+unix:///tmp/r.sock

use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use clap::Parser;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// `redis` (one EVALSHA per call) or `none` (no store).
    #[arg(long, default_value = "redis")]
    mode: String,
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    #[arg(long)]
    redis_url: Option<String>,
}

#[derive(Deserialize)]
struct Call {
    client: String,
}

/// Returns the client's id, creating it with an expiry when there is none: the least a
/// session decision can be.
const GET_OR_CREATE: &str = "#!lua
local id = redis.call('GET', KEYS[1])
if not id then
  id = ARGV[1]
  redis.call('SET', KEYS[1], id, 'PX', 1800000)
end
return id";

struct State {
    redis: Option<ConnectionManager>,
    script: Script,
}

async fn call(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let Ok(call) = serde_json::from_slice::<Call>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let Some(redis) = &state.redis else {
        return HttpResponse::Ok()
            .json(json!({"client": call.client, "session_id": "00000000000000000000"}));
    };
    let mut con = redis.clone();
    let id: redis::RedisResult<String> = state
        .script
        .key(format!("ref:{{{}}}", call.client))
        .arg("0123456789abcdef0123")
        .invoke_async(&mut con)
        .await;
    match id {
        Ok(id) => HttpResponse::Ok().json(json!({"client": call.client, "session_id": id})),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let redis = match (args.mode.as_str(), &args.redis_url) {
        ("redis", Some(url)) => {
            let client = redis::Client::open(url.as_str()).expect("a Redis URL");
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(Duration::from_millis(500)));
            Some(
                ConnectionManager::new_with_config(client, config)
                    .await
                    .expect("Redis answers"),
            )
        }
        ("none", _) => None,
        _ => panic!("--mode redis needs --redis-url; --mode none needs nothing"),
    };
    let state = web::Data::new(State {
        redis,
        script: Script::new(GET_OR_CREATE),
    });
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/v1/sessions/{op}", web::post().to(call))
    })
    .bind(&args.listen)?
    .run()
    .await
}
