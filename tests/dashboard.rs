//! The web dashboard in a real browser: headless Chromium driven through chromedriver
//! (WebDriver over HTTP) loads the dashboard of a daemon rendering a real job, waits for the
//! frame grid to show finished frames with thumbnails, presses cancel on a second job and
//! sees it cancelled; the page fits a phone-width window. And the access rules, over raw
//! HTTP: a session cookie from a one-time login, the Host header, same-origin changes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// One HTTP/1.1 request on a fresh connection: (status, head, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let (status, head, body) = http_bytes(addr, method, path, headers, body);
    let body = String::from_utf8_lossy(&body).into_owned();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(&body) } else { body };
    (status, head, body)
}

/// [`http`] with the body as bytes, not de-chunked.
fn http_bytes(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    // Read the head, then exactly the body it announces (a server may keep the connection).
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut body = raw[head_end + 4..].to_vec();
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = lower.contains("transfer-encoding: chunked");
    loop {
        let complete = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    (status, head, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    addr: String,
    session: String,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            // Its own process group, so that drop takes the browser down with it.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is needed: run scripts/install-deps.sh (chromium-driver)");
        let addr = format!("127.0.0.1:{port}");
        let mut d = Driver {
            child,
            addr,
            session: String::new(),
        };
        wait_until(Duration::from_secs(20), "chromedriver to listen", || {
            TcpStream::connect(&d.addr).is_ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-crash-reporter", "--disable-breakpad",
                     "--window-size=390,844"]
        }}}});
        let v = d.call("POST", "/session", caps);
        d.session = v["value"]["sessionId"]
            .as_str()
            .expect("a browser session")
            .to_string();
        d
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, _, body) = http(
            &self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            &body.to_string(),
        );
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(status == 200, "WebDriver {method} {path}: {status} {v}");
        v
    }

    fn go(&self, url: &str) {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            json!({ "url": url }),
        );
    }

    /// Runs `script` in the page and returns its value.
    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            json!({ "script": script, "args": [] }),
        )["value"]
            .clone()
    }

    /// Clicks the element `css` selects, as a user would (WebDriver element click).
    fn click(&self, css: &str) {
        let v = self.call(
            "POST",
            &format!("/session/{}/element", self.session),
            json!({ "using": "css selector", "value": css }),
        );
        let id = v["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string();
        self.call(
            "POST",
            &format!("/session/{}/element/{id}/click", self.session),
            json!({}),
        );
    }
}

impl Drop for Driver {
    /// Kills chromedriver's process group: the driver, the browser and its helpers, pass
    /// or fail (no request that could hang or panic while unwinding).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn login_url(d: &Daemon) -> String {
    let out = d.cli(&["dashboard", "--print-url"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn the_dashboard_shows_frames_and_cancels_a_job_in_a_real_browser() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let scene = make_scene(r, "shot.blend", 3, 64, 48, 1);
    let d = Daemon::start(r, "d", None, &[]);
    let shot = submit(&d, &scene, "1-3", &r.join("out"), &["--name", "shot"]);
    // Nothing here can render this one (it wants a GPU): it waits until cancelled.
    let waiting = submit(
        &d,
        &scene,
        "1-3",
        &r.join("out2"),
        &["--name", "waiting", "--gpu-only"],
    );

    let browser = Driver::start();
    browser.go(&login_url(&d));
    wait_until(Duration::from_secs(30), "the jobs table", || {
        browser.js("return document.querySelectorAll('#jobs tbody tr').length") == 2
    });
    browser.click(&format!("tr[data-job='{shot}'] td.name"));
    wait_until(
        Duration::from_secs(120),
        "the grid to show 3 finished frames with thumbnails",
        || {
            browser.js(
                "return [...document.querySelectorAll('#grid .cell.done img')]\
                 .filter(i => i.complete && i.naturalWidth > 0).length",
            ) == 3
        },
    );
    // The renderer's speed on the open job.
    let speed = browser.js(&format!(
        "return document.querySelector(\"#peers tr[data-peer='{}'] .speed\").textContent",
        d.peer_id()
    ));
    assert!(
        speed.as_str().is_some_and(|s| s.ends_with(" s/frame")),
        "{speed}"
    );
    // A frame's details: its renderer and render time.
    browser.click("#grid .cell.done");
    let peer = browser.js("return document.querySelector('#fd-peer').textContent");
    // ...and its Blender log, asked from the renderer.
    wait_until(Duration::from_secs(20), "the frame's Blender log", || {
        browser
            .js("return document.querySelector('#fd-log').textContent")
            .as_str()
            .is_some_and(|t| t.contains("Fra:"))
    });
    assert_eq!(peer, d.peer_id().as_str());
    assert!(
        browser
            .js("return document.querySelector('#fd-time').textContent")
            .as_str()
            .is_some_and(|t| t.ends_with(" s"))
    );

    browser.click(&format!("tr[data-job='{waiting}'] button.cancel"));
    wait_until(
        Duration::from_secs(20),
        "the page to show it cancelled",
        || {
            browser
                .js(&format!(
                    "return document.querySelector(\"tr[data-job='{waiting}'] .state\").textContent"
                ))
                .as_str()
                .is_some_and(|t| t.starts_with("cancelled"))
        },
    );
    assert_eq!(d.job(&waiting)["state"], "cancelled");
    assert_eq!(d.job(&shot)["state"], "done");

    // It fits a phone's width: nothing wider than the window but the scrolling tables.
    let overflow = browser.js("return document.documentElement.scrollWidth - window.innerWidth");
    let wide = browser.js("return [...document.querySelectorAll('body *')]\
         .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > window.innerWidth)\
         .map(e => e.tagName + '#' + e.id + '.' + e.className).join(' ')");
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "{overflow} px wider than the window: {wide}"
    );
}

/// Logs in to `d`'s dashboard over raw HTTP: (`host:port`, session cookie).
fn session(d: &Daemon) -> (String, String) {
    let url = login_url(d);
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, login_path) = rest.split_once('/').unwrap();
    let (status, head, _) = http(addr, "GET", &format!("/{login_path}"), &[], "");
    assert_eq!(status, 303);
    let cookie = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.split(';').next().unwrap().trim().to_string())
        })
        .expect("a session cookie");
    (addr.to_string(), cookie)
}

/// Thumbnails are made by the renderer and travel with the frame: a dashboard on a peer
/// that neither rendered nor wrote the job, nor keeps copies, shows the renderer's own
/// thumbnail (fetched from the peers that hold it, byte for byte the blob the signed
/// result names), and the submitter holds it with the frame.
#[test]
fn thumbnails_come_from_the_renderer_to_any_dashboard() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let scene = make_scene(r, "shot.blend", 3, 64, 48, 1);
    let submitter = Daemon::start(r, "submitter", None, &["--no-render"]);
    let ticket = submitter.ticket();
    let renderer = Daemon::start(r, "renderer", Some(&ticket), &[]);
    let watcher = Daemon::start(
        r,
        "watcher",
        Some(&ticket),
        &["--no-render", "--replicas", "0"],
    );
    wait_until(Duration::from_secs(60), "the renderer to be seen", || {
        submitter.renderers() == 1 && watcher.connected_peers().len() == 2
    });
    let id = submit(&submitter, &scene, "1-3", &r.join("out"), &[]);
    wait_until(Duration::from_secs(120), "all frames written", || {
        submitter.job(&id)["frames_written"] == 3
    });
    wait_until(
        Duration::from_secs(30),
        "the watcher to hear of them",
        || watcher.job(&id)["frames_done"] == 3,
    );

    // The submitter fetched each thumbnail with its frame; the watcher holds none yet.
    for f in submitter.job(&id)["frames"].as_array().unwrap() {
        let thumb = f["thumb"].as_str().expect("the result names a thumbnail");
        assert!(submitter.dir.join("blobs").join(thumb).is_file());
        assert!(!watcher.dir.join("blobs").join(thumb).exists());
    }
    for d in [&watcher, &submitter] {
        let frames = d.job(&id)["frames"].clone();
        let (addr, cookie) = session(d);
        let with = [("Cookie", cookie.as_str())];
        for f in frames.as_array().unwrap() {
            let n = f["frame"].as_u64().unwrap();
            let thumb = f["thumb"].as_str().expect("the result names a thumbnail");
            let path = format!("/ui/frame/{id}/{n}?thumb=1");
            let (status, head, body) = http_bytes(&addr, "GET", &path, &with, "");
            assert_eq!(status, 200, "{head}");
            assert!(head.to_ascii_lowercase().contains("image/jpeg"), "{head}");
            let blob = meshd::transfer::Manifest::build(&body[..]).unwrap().id();
            assert_eq!(blob.to_hex(), thumb, "the blob the renderer signed");
            let img = image::load_from_memory(&body).unwrap();
            assert_eq!((img.width(), img.height()), (64, 48));
        }
    }
    // What each received for the job: the submitter every frame, the watcher thumbnails.
    let frame_bytes: u64 = (1..=3)
        .map(|n| {
            std::fs::metadata(r.join(format!("out/frame_{n:04}.png")))
                .unwrap()
                .len()
        })
        .sum();
    let moved = |d: &Daemon| d.job(&id)["bytes_moved"].as_u64().unwrap();
    assert!(
        moved(&submitter) > frame_bytes,
        "{} <= {frame_bytes}",
        moved(&submitter)
    );
    assert!(moved(&watcher) > 0);
    // The watcher has no copy of the full frames: what it showed were thumbnails only.
    let (addr, cookie) = session(&watcher);
    let with = [("Cookie", cookie.as_str())];
    assert_eq!(
        http(&addr, "GET", &format!("/ui/frame/{id}/1"), &with, "").0,
        404
    );
    drop(renderer);
}

#[test]
fn the_dashboard_needs_a_one_time_login_its_own_host_and_origin() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(root.path(), "d", None, &["--no-render"]);
    let url = login_url(&d);
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, login_path) = rest.split_once('/').unwrap();
    let login_path = format!("/{login_path}");

    // No session: no page, no events, no actions.
    assert_eq!(http(addr, "GET", "/", &[], "").0, 401);
    assert_eq!(http(addr, "GET", "/ui/events", &[], "").0, 401);

    // Another host name (DNS rebinding) is refused even with a valid code.
    let evil = [("Host", "evil.example:80")];
    assert_eq!(http(addr, "GET", &login_path, &evil, "").0, 421);

    let (status, head, _) = http(addr, "GET", &login_path, &[], "");
    assert_eq!(status, 303);
    let cookie_line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a session cookie");
    assert!(cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"));
    let cookie = cookie_line
        .split_once(':')
        .unwrap()
        .1
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_string();
    // The code works once.
    assert_eq!(http(addr, "GET", &login_path, &[], "").0, 401);

    let with = [("Cookie", cookie.as_str())];
    let (status, _, page) = http(addr, "GET", "/", &with, "");
    assert_eq!(status, 200);
    assert!(page.contains("<title>meshd</title>"));
    let rebound = [("Cookie", cookie.as_str()), ("Host", "evil.example")];
    assert_eq!(http(addr, "GET", "/", &rebound, "").0, 421);

    // Changes only from the dashboard's own origin.
    let body = r#"{"job":"nothing","action":"cancel"}"#;
    let cross = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/json"),
        ("Origin", "http://evil.example"),
    ];
    assert_eq!(http(addr, "POST", "/ui/control", &cross, body).0, 403);
    let same = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/json"),
        ("Origin", &format!("http://{addr}")),
    ];
    let (status, _, answer) = http(addr, "POST", "/ui/control", &same, body);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("no job"), "{answer}");

    // The CLI's bearer token still works, and does not open the dashboard.
    assert!(d.cli(&["status", "--json"]).status.success());
    let token: Value =
        serde_json::from_slice(&std::fs::read(d.dir.join("api.json")).unwrap()).unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    assert_eq!(
        http(addr, "GET", "/", &[("Authorization", &bearer)], "").0,
        401
    );
}
