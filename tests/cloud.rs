//! `meshd cloud offers` against local fakes of the Vast.ai and Clore.ai APIs
//! (tests/fake_cloud, after ../shared/reference/cloud-apis.md).

mod common;
mod fake_cloud;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use common::BIN;
use fake_cloud::{clore_server, vast_offer};

const VAST_KEY: &str = "vast-secret-key-123";
const CLORE_KEY: &str = "clore-secret-key-456";

/// `meshd cloud ARGS` with only the given provider settings (no user config file).
fn cloud(config_home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("cloud")
        .args(args)
        .env_remove("MESHD_VAST_API_KEY")
        .env_remove("MESHD_CLORE_API_KEY")
        .env_remove("MESHD_VAST_URL")
        .env_remove("MESHD_CLORE_URL")
        .env("XDG_CONFIG_HOME", config_home)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run meshd")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ids(v: &Value) -> Vec<u64> {
    v["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect()
}

fn vast_market() -> Vec<Value> {
    let mut rented = vast_offer(6, "RTX 4090", 1, 24564, 0.10, "US");
    rented["rented"] = true.into();
    vec![
        vast_offer(1, "RTX 3090", 1, 24576, 0.25, "US"), // 0.0463 $/h per 1k
        vast_offer(2, "RTX 4090", 1, 24564, 0.40, "US"), // 0.0361
        vast_offer(3, "RTX 9999", 1, 24564, 0.01, "US"), // speed unknown: last
        vast_offer(4, "RTX 4090", 2, 24564, 0.70, "DE"), // 0.0316
        vast_offer(5, "RTX A6000", 1, 49140, 0.55, "US"), // 0.1089
        rented,
    ]
}

#[test]
fn vast_offers_come_best_value_first_with_a_job_estimate() {
    let home = tempfile::tempdir().unwrap();
    let fake = fake_cloud::vast(VAST_KEY, vast_market());
    let env = [
        ("MESHD_VAST_URL", fake.url.as_str()),
        ("MESHD_VAST_API_KEY", VAST_KEY),
    ];
    let out = cloud(
        home.path(),
        &env,
        &["offers", "--provider", "vast", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ids(&v),
        vec![4, 2, 1, 5, 3],
        "by $/h per unit of speed; the rented one left out"
    );
    let best = &v["offers"][0];
    assert_eq!(best["score"], 22_156.0, "two RTX 4090: two render slots");
    assert!((best["usd_per_hour_per_kscore"].as_f64().unwrap() - 0.70 / 22.156).abs() < 1e-9);
    assert!(
        !text(&out).contains(VAST_KEY),
        "the key never prints, even at debug level"
    );

    // Filters reach Vast in its own terms, and hold whatever it sends back.
    let out = cloud(
        home.path(),
        &env,
        &[
            "offers",
            "--provider",
            "vast",
            "--region",
            "us",
            "--min-vram",
            "24",
            "--max-price",
            "0.5",
            "--frames",
            "250",
            "--secs-per-frame",
            "60",
            "--ref-gpu",
            "RTX 3090",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&v), vec![2, 1, 3]);
    let q = fake.state.lock().unwrap().queries.last().cloned().unwrap();
    assert_eq!(q["geolocation"], serde_json::json!({"in": ["US"]}));
    assert_eq!(q["dph_total"], serde_json::json!({"lte": 0.5}));
    assert_eq!(q["rentable"], serde_json::json!({"eq": true}));
    assert_eq!(q["type"], "on-demand");
    // 250 frames x 60 s on a 3090 (5,398) take 250 x 60 x 5398 / 11078 s on a 4090.
    let e = &v["offers"][0]["estimate"];
    let hours = 250.0 * 60.0 * 5_398.0 / 11_078.0 / 3600.0 + 5.0 / 60.0;
    assert!((e["hours"].as_f64().unwrap() - hours).abs() < 1e-6, "{e}");
    assert!(
        (e["usd"].as_f64().unwrap() - hours * 0.40).abs() < 1e-6,
        "{e}"
    );
    assert!(
        v["offers"][2]["estimate"].is_null(),
        "no estimate without a known speed"
    );

    // The table, for people.
    let out = cloud(
        home.path(),
        &env,
        &[
            "offers",
            "--provider",
            "vast",
            "--frames",
            "250",
            "--secs-per-frame",
            "60",
        ],
    );
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    // Shown with --nocapture: what a user sees.
    println!("$ meshd cloud offers --provider vast --frames 250 --secs-per-frame 60\n{t}");
    assert!(out.status.success(), "{t}");
    assert!(t.lines().next().unwrap().contains("$/h/1k"), "{t}");
    assert!(t.contains("RTX 4090") && t.contains("COST"), "{t}");
}

#[test]
fn vast_rate_limits_are_waited_out_and_a_wrong_key_is_one_clear_line() {
    let home = tempfile::tempdir().unwrap();
    let fake = fake_cloud::vast(VAST_KEY, vast_market());
    fake.state.lock().unwrap().rate_limit_next = 2;
    let mut env = vec![
        ("MESHD_VAST_URL", fake.url.as_str()),
        ("MESHD_VAST_API_KEY", VAST_KEY),
    ];
    let out = cloud(
        home.path(),
        &env,
        &["offers", "--provider", "vast", "--json"],
    );
    assert!(
        out.status.success(),
        "two 429s, then an answer: {}",
        text(&out)
    );
    assert_eq!(fake.state.lock().unwrap().rate_limit_next, 0);

    env[1] = ("MESHD_VAST_API_KEY", "wrong-key-789");
    let out = cloud(home.path(), &env, &["offers", "--provider", "vast"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains("MESHD_VAST_API_KEY"),
        "{stderr}"
    );
    assert!(!text(&out).contains("wrong-key-789"), "{stderr}");
    assert_eq!(fake.state.lock().unwrap().rejected, 1);

    // Rate limited for good: a clear error, not a hang.
    fake.state.lock().unwrap().rate_limit_next = 100;
    env[1] = ("MESHD_VAST_API_KEY", VAST_KEY);
    let out = cloud(home.path(), &env, &["offers", "--provider", "vast"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too frequent"),
        "{}",
        text(&out)
    );
}

#[test]
fn clore_offers_are_priced_per_hour_and_ranked() {
    let home = tempfile::tempdir().unwrap();
    let mut taken = clore_server(9, "RTX 4090", 1, 24, 1.0, "CZ");
    taken["rented"] = true.into();
    let fake = fake_cloud::clore(
        CLORE_KEY,
        vec![
            clore_server(1, "RTX 3090", 1, 24, 4.8, "CZ"), // 0.20 $/h: 0.0371 $/h per 1k
            clore_server(2, "RTX 4090", 1, 24, 9.6, "DE"), // 0.40 $/h: 0.0361
            clore_server(3, "RTX 4090", 4, 24, 36.0, "CZ"), // 1.50 $/h, four slots: 0.0339
            taken,
        ],
    );
    fake.state.lock().unwrap().rate_limit_next = 1;
    let env = [
        ("MESHD_CLORE_URL", fake.url.as_str()),
        ("MESHD_CLORE_API_KEY", CLORE_KEY),
    ];
    let out = cloud(
        home.path(),
        &env,
        &["offers", "--provider", "clore", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&v), vec![3, 2, 1]);
    assert!(
        (v["offers"][2]["usd_per_hour"].as_f64().unwrap() - 0.2).abs() < 1e-9,
        "4.80 $/day"
    );
    assert!(!text(&out).contains(CLORE_KEY));

    let out = cloud(
        home.path(),
        &env,
        &[
            "offers",
            "--provider",
            "clore",
            "--region",
            "DE",
            "--spot",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&v), vec![2]);
    assert!((v["offers"][0]["usd_per_hour"].as_f64().unwrap() - 9.6 * 0.4 / 24.0).abs() < 1e-9);

    let bad = [
        ("MESHD_CLORE_URL", fake.url.as_str()),
        ("MESHD_CLORE_API_KEY", "nope"),
    ];
    let out = cloud(home.path(), &bad, &["offers", "--provider", "clore"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MESHD_CLORE_API_KEY"),
        "{}",
        text(&out)
    );
}

#[test]
fn keys_come_from_a_private_config_file_only() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let fake = fake_cloud::vast(VAST_KEY, vast_market());
    let dir = home.path().join("meshd");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cloud.env");
    std::fs::write(
        &file,
        format!(
            "MESHD_VAST_API_KEY={VAST_KEY}\nMESHD_VAST_URL={}\n",
            fake.url
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cloud(home.path(), &[], &["offers", "--provider", "vast"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(VAST_KEY), "{err}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = cloud(
        home.path(),
        &[],
        &["offers", "--provider", "vast", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fake.state.lock().unwrap().queries.len(),
        1,
        "the file's URL was used"
    );
}

#[test]
fn bad_flags_are_refused_before_any_request() {
    let home = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["--min-reliability", "2"], "between 0 and 1"),
        (vec!["--region", "USA"], "two-letter"),
        (vec!["--max-price", "-1"], "positive"),
        (
            vec![
                "--frames",
                "10",
                "--secs-per-frame",
                "5",
                "--ref-gpu",
                "Potato 9000",
            ],
            "--ref-gpu",
        ),
    ] {
        let mut a = vec!["offers", "--provider", "vast"];
        a.extend(args);
        let out = cloud(home.path(), &[("MESHD_VAST_URL", "http://127.0.0.1:9")], &a);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains(want), "{a:?}: {err}");
    }
}

/// The Vast client against the fake: rent, wait until it runs, find it by label, destroy;
/// a taken offer, a bid too low (the instance exists anyway and must be destroyed).
#[test]
fn vast_instances_are_created_found_and_destroyed() {
    use meshd::cloud::instance::{InstanceState, RentSpec};
    use meshd::cloud::{CloudConfig, CloudError, vast::Vast};

    let fake = fake_cloud::vast(VAST_KEY, vast_market());
    fake.state.lock().unwrap().host_ports.insert(22, 2222);
    let cfg = CloudConfig::from_pairs(&[
        ("MESHD_VAST_URL", fake.url.as_str()),
        ("MESHD_VAST_API_KEY", VAST_KEY),
    ]);
    let spec = fake_cloud::rent_spec(
        "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
        "meshd-0123456789abcdef",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let vast = Vast::new(&cfg).unwrap();
        let id = vast.create(2, &spec).await.unwrap();
        vast.attach_ssh(id, &spec.ssh_public_key).await.unwrap();
        assert_eq!(
            fake.state.lock().unwrap().instances[&id].ssh_key.as_deref(),
            Some(spec.ssh_public_key.as_str())
        );
        let first = vast.show(id, 4747).await.unwrap().unwrap();
        assert_eq!(first.state, InstanceState::Starting);
        assert_eq!(first.ssh, None, "no SSH before it runs");
        let mut inst = first;
        for _ in 0..5 {
            inst = vast.show(id, 4747).await.unwrap().unwrap();
            if inst.state == InstanceState::Running {
                break;
            }
        }
        assert_eq!(inst.state, InstanceState::Running);
        assert_eq!(inst.ssh, Some(("127.0.0.1".to_string(), 2222)));
        assert_eq!(inst.node, Some(("127.0.0.1".to_string(), 44747)));
        assert_eq!(inst.label.as_deref(), Some("meshd-0123456789abcdef"));
        let listed = vast.list(4747).await.unwrap();
        assert_eq!(listed.iter().map(|i| i.id).collect::<Vec<_>>(), vec![id]);

        // The offer is taken now.
        match vast.create(2, &spec).await {
            Err(CloudError::OfferGone { id: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        // A bid under the minimum: Vast makes a stopped instance and says no.
        let low = RentSpec {
            bid_usd_per_hour: Some(0.01),
            ..spec.clone()
        };
        let stray = match vast.create(1, &low).await {
            Err(CloudError::CreatedButFailed { id, .. }) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            vast.show(stray, 4747).await.unwrap().unwrap().state,
            InstanceState::Stopped
        );
        vast.destroy(stray).await.unwrap();
        vast.destroy(id).await.unwrap();
        vast.destroy(id).await.unwrap(); // already gone: fine
        assert!(vast.show(id, 4747).await.unwrap().is_none());
        assert!(vast.list(4747).await.unwrap().is_empty());

        let keyless = Vast::new(&CloudConfig::from_pairs(&[(
            "MESHD_VAST_URL",
            fake.url.as_str(),
        )]))
        .unwrap();
        assert!(matches!(
            keyless.list(4747).await,
            Err(CloudError::MissingKey(_))
        ));
    });
    drop(rt);
    let s = fake.state.lock().unwrap();
    assert!(
        s.instances.is_empty(),
        "nothing left rented: {:?}",
        s.live_ids()
    );
}

/// The Clore client against the fake: order (the answer has no id: found in my_orders),
/// wait until online, cancel; a taken server; cancelling twice.
#[test]
fn clore_orders_are_placed_found_and_cancelled() {
    use meshd::cloud::instance::InstanceState;
    use meshd::cloud::{CloudConfig, CloudError, clore::Clore};

    let fake = fake_cloud::clore(
        CLORE_KEY,
        vec![
            clore_server(1, "RTX 3090", 1, 24, 4.8, "CZ"),
            clore_server(2, "RTX 4090", 1, 24, 9.6, "DE"),
        ],
    );
    let cfg = CloudConfig::from_pairs(&[
        ("MESHD_CLORE_URL", fake.url.as_str()),
        ("MESHD_CLORE_API_KEY", CLORE_KEY),
    ]);
    let spec = fake_cloud::rent_spec("cloreai/ubuntu22.04-cuda12", "meshd-0123456789abcdef");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let clore = Clore::new(&cfg).unwrap();
        let id = clore
            .create(2, &spec, None, &clore.order_ids().await.unwrap())
            .await
            .unwrap();
        let mut inst = None;
        for _ in 0..5 {
            let all = clore.orders(4747).await.unwrap();
            inst = all.into_iter().find(|i| i.id == id);
            if inst
                .as_ref()
                .is_some_and(|i| i.state == InstanceState::Running)
            {
                break;
            }
        }
        let inst = inst.expect("the order is listed");
        assert_eq!(inst.state, InstanceState::Running);
        assert_eq!(inst.ssh, Some(("127.0.0.1".to_string(), 41_022)));
        assert_eq!(inst.node, Some(("127.0.0.1".to_string(), 45_747)));
        assert!(
            (inst.usd_per_hour.unwrap() - 0.4).abs() < 1e-9,
            "9.60 $/day"
        );

        match clore
            .create(2, &spec, None, &clore.order_ids().await.unwrap())
            .await
        {
            Err(CloudError::Api { msg, .. }) => {
                assert!(msg.contains("server-already-rented"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
        let spot = clore
            .create(1, &spec, Some(2.0), &clore.order_ids().await.unwrap())
            .await
            .unwrap();
        clore.cancel(spot).await.unwrap();
        clore.cancel(id).await.unwrap();
        clore.cancel(id).await.unwrap(); // no longer active: fine
        assert!(clore.orders(4747).await.unwrap().is_empty());
    });
    drop(rt);
    let s = fake.state.lock().unwrap();
    assert!(
        s.active_ids().is_empty(),
        "nothing left rented: {:?}",
        s.active_ids()
    );
    let order = s.orders.values().find(|o| o["spot"] == true).unwrap();
    assert_eq!(order["price"], 2.0, "the spot bid is per day");
}
