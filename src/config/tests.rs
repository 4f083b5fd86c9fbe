use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn config_example_parses_and_matches_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let config = Config::load(Some(&path), [], &Overrides::default()).unwrap();
    let defaults = Config::default();
    assert_eq!(config.listen, defaults.listen);
    assert_eq!(config.database_url, defaults.database_url);
    assert_eq!(config.flush_interval, defaults.flush_interval);
    assert_eq!(config.ack, defaults.ack);
    assert_eq!(config.dedup_window, defaults.dedup_window);
    assert_eq!(config.max_body_bytes, defaults.max_body_bytes);
    assert_eq!(config.batch_max_items, defaults.batch_max_items);
    assert_eq!(config.batch_max_body_bytes, defaults.batch_max_body_bytes);
    assert_eq!(config.required_headers, defaults.required_headers);
    assert_eq!(config.require_virtual_key, defaults.require_virtual_key);
    assert_eq!(config.log_level, defaults.log_level);
    assert_eq!(config.log_format, defaults.log_format);
    assert_eq!(config.header_read_timeout, defaults.header_read_timeout);
    assert_eq!(config.request_timeout, defaults.request_timeout);
    assert_eq!(config.idle_timeout, defaults.idle_timeout);
    assert_eq!(config.max_connections, defaults.max_connections);
    assert_eq!(config.grpc_listen, None);
    assert_eq!(
        config.grpc_max_concurrent_streams,
        defaults.grpc_max_concurrent_streams
    );
    assert_eq!(
        config.grpc_max_message_bytes,
        defaults.grpc_max_message_bytes
    );
    assert!(config.auth.is_open());
    let grpc = Config::load(
        None,
        env(&[("HEIMDALL__GRPC_LISTEN", "127.0.0.1:8081")]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(grpc.grpc_listen, Some("127.0.0.1:8081".parse().unwrap()));
}

#[test]
fn environment_overrides_file_and_flags_override_environment() {
    let config = Config::load(
        None,
        env(&[
            ("HEIMDALL__LISTEN", "0.0.0.0:9000"),
            ("HEIMDALL__DATABASE_URL", "postgres://db/x"),
            ("HEIMDALL__REQUIRE_VIRTUAL_KEY", "true"),
            ("HEIMDALL__AUTH__ADMIN_TOKENS", "a1,a2"),
            ("HEIMDALL__AUTH__GATEWAY_TOKENS", r#"["g1"]"#),
            ("HEIMDALL_CONFIG", "ignored.toml"),
            ("PATH", "/bin"),
        ]),
        &Overrides {
            listen: Some("127.0.0.1:7000".into()),
            database_url: None,
        },
    )
    .unwrap();
    assert_eq!(config.listen.port(), 7000);
    assert_eq!(config.database_url, "postgres://db/x");
    assert!(config.require_virtual_key);
    assert_eq!(
        config.auth.admin_tokens,
        vec![Secret::new("a1"), Secret::new("a2")]
    );
    assert_eq!(config.auth.gateway_tokens, vec![Secret::new("g1")]);
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let err = Config::load(
        None,
        env(&[("HEIMDALL__LISTEN_ADDR", "x")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("listen_addr"), "{err}");
    let err = Config::load(
        None,
        env(&[("HEIMDALL__AUTH__TOKENS", "x")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("auth") && err.contains("tokens"), "{err}");
    let err = Config::load(
        None,
        env(&[("HEIMDALL__FLUSH_INTERVAL", "1q")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("flush_interval") && err.contains("1q"),
        "{err}"
    );
    let err = Config::load(
        None,
        [],
        &Overrides {
            listen: None,
            database_url: Some("mysql://x".into()),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("database_url") && err.contains("mysql"),
        "{err}"
    );
}

#[test]
fn out_of_range_values_are_named() {
    for (key, value) in [
        ("HEIMDALL__BATCH_MAX_ITEMS", "0"),
        ("HEIMDALL__MAX_BODY_BYTES", "10"),
        ("HEIMDALL__ACK", "sometimes"),
        ("HEIMDALL__LISTEN", "not-an-address"),
        ("HEIMDALL__LOG_FORMAT", "xml"),
        ("HEIMDALL__REQUEST_TIMEOUT", "0s"),
        ("HEIMDALL__IDLE_TIMEOUT", "5s"),
        ("HEIMDALL__MAX_CONNECTIONS", "0"),
        ("HEIMDALL__DEDUP_MAX_KEYS", "999"),
        ("HEIMDALL__GRPC_LISTEN", "localhost"),
        ("HEIMDALL__GRPC_MAX_CONCURRENT_STREAMS", "0"),
        ("HEIMDALL__GRPC_MAX_MESSAGE_BYTES", "100"),
    ] {
        let err = Config::load(None, env(&[(key, value)]), &Overrides::default())
            .unwrap_err()
            .to_string();
        let name = key.trim_start_matches("HEIMDALL__").to_lowercase();
        assert!(err.contains(&name), "{key}: {err}");
    }
}

#[test]
fn durations_take_milliseconds_too() {
    let config = Config::load(
        None,
        env(&[
            ("HEIMDALL__FLUSH_INTERVAL", "250ms"),
            ("HEIMDALL__DEDUP_WINDOW", "1h30m"),
        ]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(config.flush_interval, Duration::from_millis(250));
    assert_eq!(config.dedup_window, Duration::from_secs(5400));
    for bad in [
        "0ms",
        "ms",
        "1.5ms",
        "-5ms",
        "99999999999999999999ms",
        "5 ms",
    ] {
        let err = Config::load(
            None,
            env(&[("HEIMDALL__FLUSH_INTERVAL", bad)]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("flush_interval"), "{bad}: {err}");
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    let auth = AuthConfig {
        admin_tokens: vec![Secret::new("super-secret")],
        gateway_tokens: vec![],
    };
    assert!(!format!("{auth:?}").contains("super-secret"));
}

/// Writes `text` to a fresh config file and loads it.
fn load_text(text: &str) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("heimdall-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("heimdall.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = Config::load(Some(&path), [], &Overrides::default());
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

#[test]
fn webhooks_take_their_default_thresholds_and_bad_ones_are_named() {
    let config = load_text(
        "[[alerts.webhooks]]\nurl = \"http://127.0.0.1:9/a\"\nsecret = \"s\"\n\n\
         [[alerts.webhooks]]\nurl = \"https://hooks.example.com/b\"\nsecret = \"t\"\nthresholds = [0.9]\n",
    )
    .unwrap();
    assert_eq!(config.alerts.webhooks.len(), 2);
    assert_eq!(config.alerts.webhooks[0].thresholds, vec![0.5, 0.8, 1.0]);
    assert_eq!(config.alerts.webhooks[1].thresholds, vec![0.9]);
    assert!(!format!("{config:?}").contains("secret = \"s\""));
    for (text, named) in [
        (
            "url = \"ftp://x/\"\nsecret = \"s\"",
            "alerts.webhooks[0].url",
        ),
        (
            "url = \"not a url\"\nsecret = \"s\"",
            "alerts.webhooks[0].url",
        ),
        (
            "url = \"http://x/\"\nsecret = \"\"",
            "alerts.webhooks[0].secret",
        ),
        (
            "url = \"http://x/\"\nsecret = \"s\"\nthresholds = []",
            "thresholds",
        ),
        (
            "url = \"http://x/\"\nsecret = \"s\"\nthresholds = [0.0]",
            "thresholds",
        ),
        (
            "url = \"http://x/\"\nsecret = \"s\"\nthresholds = [11.0]",
            "thresholds",
        ),
        ("url = \"http://x/\"", "secret"),
        (
            "url = \"http://x/\"\nsecret = \"s\"\ncolour = \"red\"",
            "colour",
        ),
    ] {
        let err = load_text(&format!("[[alerts.webhooks]]\n{text}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(named), "{text}: {err}");
    }
    let err = load_text(
        "[[alerts.webhooks]]\nurl = \"http://x/\"\nsecret = \"s\"\n\
         [[alerts.webhooks]]\nurl = \"http://x/\"\nsecret = \"t\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn webhooks_can_come_from_the_environment() {
    let config = Config::load(
        None,
        env(&[(
            "HEIMDALL__ALERTS__WEBHOOKS",
            r#"[{url = "https://hooks.example.com/h", secret = "s", thresholds = [0.9]}]"#,
        )]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(config.alerts.webhooks[0].url, "https://hooks.example.com/h");
    assert_eq!(config.alerts.webhooks[0].thresholds, vec![0.9]);
}
