//! Conformance with envoyproxy/ratelimit: its own test configs and the
//! expectations of its own tests (`tests/fixtures/envoyproxy-ratelimit/`,
//! see PROVENANCE there), replayed against the RLS service in both
//! counting modes. Where GCRA (the default) answers differently, the case
//! says so; docs/rate-limits.md lists every difference with its reason.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use portcullis::quota::{Counting, QuotaConfig, QuotaSettings};

use crate::quota_server::{rls, rls_request};
use crate::support::{self, PolicyDir, TestServer};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/envoyproxy-ratelimit/"
);

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(files: &[&str]) -> Result<QuotaConfig, Vec<String>> {
    let texts: Vec<(String, String)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                format!("quotas/{i}-{}", f.rsplit('/').next().unwrap()),
                fixture(f),
            )
        })
        .collect();
    QuotaConfig::parse(texts.iter().map(|(f, t)| (f.as_str(), t.as_str()))).map_err(|errors| {
        errors
            .iter()
            .map(|e| format!("{}:{}: {}", e.file, e.line.unwrap_or(0), e.message))
            .collect()
    })
}

#[test]
fn every_valid_ratelimit_config_loads_unchanged() {
    let sets: &[&[&str]] = &[
        &["test/config/basic_config.yaml"],
        &["test/config/metadata.yaml"],
        &["test/config/shadowmode_config.yaml"],
        &["test/config/share_threshold.yaml"],
        &["test/config/wildcard.yaml"],
        // TestDomainMerge: one domain in two files merges.
        &[
            "test/config/merge_domain_key1.yaml",
            "test/config/merge_domain_key2.yaml",
        ],
        // TestDuplicateDomain refuses this pair only without
        // MERGE_DOMAIN_CONFIG; Portcullis always merges (documented).
        &[
            "test/config/basic_config.yaml",
            "test/config/duplicate_domain.yaml",
        ],
        &[
            "examples/ratelimit/config/config.yaml",
            "examples/ratelimit/config/example.yaml",
        ],
        &[
            "test/integration/runtime/current/ratelimit/config/another.yaml",
            "test/integration/runtime/current/ratelimit/config/basic.yaml",
            "test/integration/runtime/current/ratelimit/config/share_threshold.yaml",
            "test/integration/runtime/current/ratelimit/reload.yaml",
        ],
    ];
    for files in sets {
        if let Err(e) = parse(files) {
            panic!("{files:?} refused: {e:?}");
        }
    }
    let merged = parse(sets[5]).unwrap();
    assert_eq!(
        merged
            .limit_for("test-domain", &e(&[("key1", "value1")]))
            .unwrap()
            .requests,
        10
    );
    assert_eq!(
        merged
            .limit_for("test-domain", &e(&[("key2", "value2")]))
            .unwrap()
            .requests,
        20
    );
}

#[test]
fn every_invalid_ratelimit_config_is_refused_with_file_line_and_reason() {
    // (files, the file and line refused, ratelimit's reason)
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["test/config/bad_limit_unit.yaml"],
            "0-bad_limit_unit.yaml:3",
            "invalid rate limit unit 'foo'",
        ),
        (&["test/config/bad_yaml.yaml"], "0-bad_yaml.yaml:", ""),
        (
            &["test/config/duplicate_key.yaml"],
            "0-duplicate_key.yaml:6",
            "duplicate descriptor composite key 'test-domain.key1_value1'",
        ),
        (
            &["test/config/empty_domain.yaml"],
            "0-empty_domain.yaml:1",
            "config file cannot have empty domain",
        ),
        (&["test/config/empty_key.yaml"], "0-empty_key.yaml:3", "key"),
        (
            &["test/config/misspelled_key.yaml"],
            "0-misspelled_key.yaml:5",
            "unknown field `ratelimit`",
        ),
        (
            &["test/config/misspelled_key2.yaml"],
            "0-misspelled_key2.yaml:7",
            "unknown field `requestsperunit`",
        ),
        (
            &["test/config/non_map_list.yaml"],
            "0-non_map_list.yaml:3",
            "",
        ),
        (
            &["test/config/non_string_key.yaml"],
            "0-non_string_key.yaml:1",
            "",
        ),
        (
            &["test/config/replaces_empty.yaml"],
            "0-replaces_empty.yaml:",
            "should not have an empty replaces entry",
        ),
        (
            &["test/config/replaces_self.yaml"],
            "0-replaces_self.yaml:6",
            "replaces should not contain name of same descriptor",
        ),
        (
            &["test/config/unlimited_with_unit.yaml"],
            "0-unlimited_with_unit.yaml:3",
            "should not specify rate limit unit",
        ),
        // TestDuplicateKeyDomainMerge: merged, the repeat is refused.
        (
            &[
                "test/config/merge_domain_key1.yaml",
                "test/config/merge_domain_key1.yaml",
            ],
            "1-merge_domain_key1.yaml:5",
            "duplicate descriptor composite key 'test-domain.key1_value1'",
        ),
    ];
    for (files, at, reason) in cases {
        let errors = parse(files).expect_err(&format!("{files:?} must be refused"));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("quotas/{at}")) && e.contains(reason)),
            "{files:?}: want quotas/{at} ... {reason}, got {errors:?}"
        );
        for e in &errors {
            let line: Option<usize> = e.split(':').nth(1).and_then(|l| l.parse().ok());
            assert!(line.is_some_and(|l| l > 0), "{e}: no line");
        }
    }
}

fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A server serving `files` (as `quotas/*.yaml`) in `counting` mode.
async fn serve(files: &[&str], counting: Counting) -> (TestServer, PolicyDir) {
    let policies = PolicyDir::bundled();
    for f in files {
        policies.write(&format!("quotas/{}", f.replace('/', "_")), &fixture(f));
    }
    let server = TestServer::start(portcullis::config::Config {
        quotas: QuotaSettings {
            counting,
            ..QuotaSettings::default()
        },
        ..support::in_process_config(policies.path())
    })
    .await;
    (server, policies)
}

async fn ask(
    s: &TestServer,
    domain: &str,
    entries: &[(&str, &str)],
    hits: u32,
) -> RateLimitResponse {
    rls(s, rls_request(domain, &[entries], hits)).await
}

/// `(code, requests_per_unit, limit_remaining)` of the first status.
fn status(r: &RateLimitResponse) -> (Code, Option<u32>, u32) {
    let s = &r.statuses[0];
    (
        Code::try_from(s.code).unwrap(),
        s.current_limit.as_ref().map(|l| l.requests_per_unit),
        s.limit_remaining,
    )
}

const MODES: [Counting; 2] = [Counting::FixedWindow, Counting::Gcra];

/// TestBasicConfig and TestWildcardConfig, through RLS: which limit each
/// descriptor gets (first call: the limit minus one is left).
#[tokio::test]
async fn limits_match_as_ratelimits_config_tests_expect() {
    for m in MODES {
        let (s, _p) = serve(&["test/config/basic_config.yaml"], m).await;
        let d = "test-domain";
        for (entries, limit) in [
            (&[("key1", "value1"), ("subkey1", "something")][..], Some(5)),
            (
                &[("key1", "value1"), ("subkey1", "subvalue1")][..],
                Some(10),
            ),
            (&[("key2", "something")][..], Some(20)),
            (&[("key2", "value2")][..], Some(30)),
            (&[("key2", "value3")][..], None),
            (&[("key3", "foo")][..], Some(1)),
            (&[("key4", "foo")][..], Some(1)),
            (&[("key5", "value5")][..], Some(15)),
            (
                &[("key5", "value5"), ("subkey5", "subvalue5")][..],
                Some(25),
            ),
            (&[("key7", "unspecified_value")][..], Some(70)),
            (&[("key1", "value1")][..], None),
            (&[("key8", "x")][..], None),
        ] {
            let r = ask(&s, d, entries, 1).await;
            let want = (Code::Ok, limit, limit.map_or(0, |l| l - 1));
            assert_eq!(status(&r), want, "{m:?} {entries:?}");
        }
        // key6 is unlimited: ratelimit answers the maximum uint32 left.
        let r = ask(&s, d, &[("key6", "foo")], 1).await;
        assert_eq!(status(&r), (Code::Ok, None, u32::MAX), "{m:?}");
        s.shutdown().await.unwrap();

        let (s, _p) = serve(&["test/config/wildcard.yaml"], m).await;
        for (entries, limit) in [
            (&[("wild", "foo1")][..], Some(20)),
            (&[("wild", "bar")][..], None),
            (&[("noWild", "foo1")][..], None),
            (&[("noWild", "foo")][..], Some(20)),
            (&[("noVal", "foo")][..], Some(20)),
            (&[("midWild", "barab")][..], Some(20)),
            (&[("midWild", "barb")][..], Some(20)),
            (&[("midWild", "bara")][..], None),
            (&[("multiWild", "foo1bar2baz")][..], Some(10)),
            (&[("multiWild", "foobarbaz")][..], Some(10)),
            (&[("multiWild", "foobaz")][..], None),
            (&[("nestedWild", "val1"), ("wild", "goo2")][..], Some(20)),
            (&[("nestedWild", "val1"), ("wild", "foo2")][..], None),
        ] {
            let r = ask(&s, "test-domain", entries, 1).await;
            let want = (Code::Ok, limit, limit.map_or(0, |l| l - 1));
            assert_eq!(status(&r), want, "{m:?} {entries:?}");
        }
        s.shutdown().await.unwrap();
    }
}

/// A middle wildcard is enforced, not just matched: the 21st call in a
/// minute for `/v1/<anything>/predict` is refused (issue: it was let through).
#[tokio::test]
async fn a_middle_wildcard_is_enforced() {
    for m in MODES {
        let (s, _p) = serve(&["test/config/wildcard.yaml"], m).await;
        for i in 0..10 {
            let r = ask(
                &s,
                "test-domain",
                &[("multiWild", &format!("foo{i}bar{i}baz"))],
                1,
            )
            .await;
            assert_eq!(r.overall_code, Code::Ok as i32, "{m:?} {i}");
        }
        // Without share_threshold each value has its own counter.
        let r = ask(&s, "test-domain", &[("multiWild", "foo0bar0baz")], 9).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{m:?}");
        let r = ask(&s, "test-domain", &[("multiWild", "foo0bar0baz")], 1).await;
        assert_eq!(status(&r), (Code::OverLimit, Some(10), 0), "{m:?}");
        s.shutdown().await.unwrap();
    }
}

/// TestShareThreshold: every value matching `files/*` shares one counter
/// of 100 a minute; `files_no_share/*` values count apart.
#[tokio::test]
async fn share_threshold_values_share_one_counter() {
    for m in MODES {
        let (s, _p) = serve(
            &["test/integration/runtime/current/ratelimit/config/share_threshold.yaml"],
            m,
        )
        .await;
        let d = "share-threshold-test";
        for i in 0..10 {
            let r = ask(&s, d, &[("files", &format!("files/{i}"))], 1).await;
            assert_eq!(status(&r), (Code::Ok, Some(10), 9 - i), "{m:?} {i}");
        }
        let r = ask(&s, d, &[("files", "files/other")], 1).await;
        assert_eq!(status(&r), (Code::OverLimit, Some(10), 0), "{m:?}");
        for i in 0..2 {
            let r = ask(
                &s,
                d,
                &[("files_no_share", &format!("files_no_share/{i}"))],
                1,
            )
            .await;
            assert_eq!(status(&r), (Code::Ok, Some(10), 9), "{m:?} {i}");
        }
        s.shutdown().await.unwrap();
    }
}

/// The service and limiter tests: an over-limit charge reports 0 left;
/// refused hits count in fixed windows (a check-only call after them is
/// refused) and not in GCRA; reset is the window's end in fixed windows.
#[tokio::test]
async fn counting_follows_ratelimit_in_fixed_windows_and_differs_as_documented_in_gcra() {
    for m in MODES {
        let (s, _p) = serve(&["test/config/basic_config.yaml"], m).await;
        let d = "test-domain";
        let k = &[("key2", "value2")][..]; // 30 a minute
        assert_eq!(status(&ask(&s, d, k, 19).await), (Code::Ok, Some(30), 11));
        // 12 do not fit in 11: over, 0 left (not 11).
        assert_eq!(
            status(&ask(&s, d, k, 12).await),
            (Code::OverLimit, Some(30), 0),
            "{m:?}"
        );
        let check = rls_request(d, &[k], 0);
        let mut check_only = check.clone();
        check_only.descriptors[0].hits_addend =
            Some(envoy_types::pb::google::protobuf::UInt64Value { value: 0 });
        let r = rls(&s, check_only).await;
        match m {
            // 19 + 12 = 31 counted: over 30, even to a check.
            Counting::FixedWindow => assert_eq!(status(&r), (Code::OverLimit, Some(30), 0)),
            // The refused 12 consumed nothing: 11 left.
            Counting::Gcra => assert_eq!(status(&r), (Code::Ok, Some(30), 11)),
        }
        // key3: 1 an hour. Reset: the hour's end (fixed) or the time until
        // the bucket is full (GCRA: the whole hour after one hit).
        let r = ask(&s, d, &[("key3", "x")], 1).await;
        let reset = r.statuses[0].duration_until_reset.as_ref().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        match m {
            Counting::FixedWindow => {
                let end = 3600 - now % 3600;
                assert!((reset.seconds - end).abs() <= 1, "{reset:?} vs {end}");
            }
            Counting::Gcra => assert!(reset.seconds >= 3598, "{reset:?}"),
        }
        // TestConfigLimitOverride: a descriptor's `limit` replaces the
        // configured one (3 a second instead of 20 a minute).
        let mut req = rls_request(d, &[&[("key2", "other")]], 1);
        req.descriptors[0].limit = Some(RateLimitOverride {
            requests_per_unit: 3,
            unit: 1,
        });
        assert_eq!(status(&rls(&s, req).await), (Code::Ok, Some(3), 2), "{m:?}");
        s.shutdown().await.unwrap();
    }
}

/// examples/ratelimit/config/example.yaml through the service tests'
/// rules: quota_mode services refuse only together, metadata of passing
/// descriptors is returned, a limit of 0 refuses, unlimited says u32::MAX.
#[tokio::test]
async fn the_example_config_answers_as_the_service_tests_expect() {
    for m in MODES {
        let (s, _p) = serve(&["examples/ratelimit/config/example.yaml"], m).await;
        let both = || {
            rls_request(
                "rl",
                &[&[("service", "service_1")], &[("service", "service_2")]],
                1,
            )
        };
        let r = rls(&s, both()).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{m:?}");
        let meta = r
            .dynamic_metadata
            .as_ref()
            .expect("metadata of passing descriptors");
        assert!(meta.fields.contains_key("metadata"), "{meta:?}");
        // service_1 (1/min) is over, service_2 (2/min) is not: still OK.
        let r = rls(&s, both()).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{m:?}");
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        // Both over: OVER_LIMIT.
        let r = rls(&s, both()).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32, "{m:?}");
        let r = ask(&s, "rl", &[("foo", "x"), ("bar", "banned")], 1).await;
        assert_eq!(status(&r), (Code::OverLimit, Some(0), 0), "{m:?}");
        let r = ask(&s, "rl", &[("qux", "x")], 1).await;
        assert_eq!(status(&r), (Code::Ok, None, u32::MAX), "{m:?}");
        // The integration test's shadow mode: over, but never refused.
        for _ in 0..4 {
            let r = ask(&s, "rl", &[("foo", "x"), ("baz", "shady")], 1).await;
            assert_eq!(r.overall_code, Code::Ok as i32, "{m:?}");
        }
        s.shutdown().await.unwrap();
    }
}
