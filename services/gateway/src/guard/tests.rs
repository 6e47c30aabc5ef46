use super::*;

fn guard(hosts: &[&str], origins: &[&str]) -> Guard {
    let cfg = Config {
        allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
        allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
        ..Config::default()
    };
    Guard::new(&cfg, Some("127.0.0.1:8080".parse().expect("addr"))).expect("guard")
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().expect("value"));
    }
    h
}

fn run(g: &Guard, method: Method, pairs: &[(&'static str, &str)]) -> Result<()> {
    g.check(
        &method,
        &"/api/collections".parse().expect("uri"),
        &headers(pairs),
    )
}

#[test]
fn hosts_default_to_the_listen_address_and_loopback_names() {
    let g = guard(&[], &[]);
    for ok in [
        "127.0.0.1:8080",
        "localhost:8080",
        "LOCALHOST.:8080",
        "[::1]:8080",
    ] {
        run(&g, Method::GET, &[("host", ok)]).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "evil.example:8080",
        "localhost:9999",
        "localhost",
        "127.0.0.1:80",
        "",
    ] {
        let e = run(&g, Method::GET, &[("host", bad)]).expect_err(bad);
        assert!(matches!(e, Error::WrongHost(_)), "{bad}: {e}");
        assert_eq!(e.http_status(), StatusCode::MISDIRECTED_REQUEST);
    }
    // No Host at all: not a browser.
    run(&g, Method::GET, &[]).expect("no host");
    let any = guard(&["*"], &[]);
    run(&any, Method::GET, &[("host", "whatever:1")]).expect("any host");
    let named = guard(&["cbir.example.com", "10.0.0.1:8080", "::1"], &[]);
    run(&named, Method::GET, &[("host", "cbir.example.com")]).expect("name, any port");
    run(&named, Method::GET, &[("host", "cbir.example.com:8443")]).expect("name:port");
    run(&named, Method::GET, &[("host", "[::1]:1")]).expect("v6");
    run(&named, Method::GET, &[("host", "10.0.0.1:8081")]).expect_err("other port");
    run(&named, Method::GET, &[("host", "localhost:8080")]).expect_err("not listed");
}

#[test]
fn cross_site_writes_are_refused_and_same_origin_ones_pass() {
    let g = guard(&[], &["https://app.example.com"]);
    let host = ("host", "127.0.0.1:8080");
    run(&g, Method::POST, &[host]).expect("curl, the CLI");
    run(
        &g,
        Method::POST,
        &[host, ("origin", "http://127.0.0.1:8080")],
    )
    .expect("UI");
    run(
        &g,
        Method::DELETE,
        &[
            host,
            ("origin", "https://app.example.com/"),
            ("sec-fetch-site", "cross-site"),
        ],
    )
    .expect_err("configured origins are exact, without a path");
    run(
        &g,
        Method::DELETE,
        &[
            host,
            ("origin", "https://app.example.com"),
            ("sec-fetch-site", "cross-site"),
        ],
    )
    .expect("configured origin");
    for (origin, site) in [
        ("http://evil.example", "cross-site"),
        ("null", "cross-site"),
        ("http://127.0.0.1:9999", "same-site"),
        ("https://127.0.0.1:8080.evil.example", "cross-site"),
    ] {
        let e = run(
            &g,
            Method::POST,
            &[host, ("origin", origin), ("sec-fetch-site", site)],
        )
        .expect_err(origin);
        assert_eq!(e.http_status(), StatusCode::FORBIDDEN, "{origin}");
        assert!(e.to_string().contains("cross-site request refused"), "{e}");
    }
    run(&g, Method::PUT, &[host, ("sec-fetch-site", "cross-site")]).expect_err("no origin");
    run(&g, Method::POST, &[host, ("sec-fetch-site", "same-origin")]).expect("same origin");
    run(&g, Method::POST, &[host, ("sec-fetch-site", "none")]).expect("typed by the user");
    run(&g, Method::GET, &[host, ("origin", "http://evil.example")]).expect("reads pass");
    // Behind a proxy that ends TLS: Host without a port, https origin.
    let proxied = guard(&["cbir.example.com"], &[]);
    run(
        &proxied,
        Method::POST,
        &[
            ("host", "cbir.example.com"),
            ("origin", "https://cbir.example.com"),
        ],
    )
    .expect("own origin through a proxy");
}

#[test]
fn long_urls_and_bad_settings_are_refused() {
    let g = guard(&[], &[]);
    let uri: http::Uri = format!("/api/collections/{}", "a".repeat(MAX_URL_BYTES))
        .parse()
        .expect("uri");
    let e = g
        .check(&Method::GET, &uri, &HeaderMap::new())
        .expect_err("long");
    assert_eq!(e.http_status(), StatusCode::BAD_REQUEST);
    let cfg = Config {
        allowed_origins: vec!["app.example.com".into()],
        ..Config::default()
    };
    assert!(Guard::new(&cfg, None).is_err());
    let cfg = Config {
        allowed_hosts: vec!["a b".into()],
        ..Config::default()
    };
    assert!(Guard::new(&cfg, None).is_err());
}

#[test]
fn json_types() {
    assert!(is_json_type("application/json"));
    assert!(is_json_type("Application/JSON; charset=utf-8"));
    assert!(is_json_type("application/merge-patch+json"));
    assert!(!is_json_type("text/plain"));
    assert!(!is_json_type("text/plain; a=application/json"));
    assert!(!is_json_type(""));
}
