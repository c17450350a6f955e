//! Token budgets (issue 16): a `check:` rule with `tokens:` reserves its
//! estimate at `Check`, atomically with the request's other limits, and
//! ext_proc settles it from the response (replicas in process, as Envoy
//! would drive them: `Check`, then the ext_proc stream of the same request
//! id, possibly on another replica).

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::HttpBody;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use portcullis::quota::QuotaSettings;
use tonic::transport::Channel;

use crate::support::{
    self, chat_body, json_completion, portcullis_metadata, respond, sse_completion, token_quotas,
    Check, ExtProcStream, PolicyDir, RedisCluster, RedisServer, TestServer, BUFFERED,
    FULL_DUPLEX_STREAMED, STREAMED,
};

/// The same budget charged after the fact only: `Check` checks with cost
/// 0, and the usage is charged post hoc when the response ends (as Envoy's
/// ratelimit filter does with `apply_on_stream_done`).
const POST_HOC_QUOTAS: &str = "domain: llm
descriptors:
  - key: tokens
    rate_limit: {name: tokens, window: 30d, requests_per_unit: 20000, post_hoc: true}
check:
  - name: tokens per caller
    routes: [chat]
    descriptor: [{key: tokens, value: \"{principal}\"}]
    cost: {default: 0}
";

/// The estimate of [`chat_body`]: its max_tokens plus its messages' JSON
/// text (`[{"role":"user","content":"hi"}]`, 32 bytes) / 4.
const PROMPT_ESTIMATE: u64 = 8;

pub(crate) struct Replicas {
    pub servers: Vec<TestServer>,
    pub channels: Vec<Channel>,
    _policies: PolicyDir,
}

/// `n` replicas on the bundled policies with [`CHAT_ROUTE`] and `quotas`
/// as the only quota file, sharing `settings`' store.
pub(crate) async fn replicas(n: usize, settings: QuotaSettings, quotas: &str) -> Replicas {
    let policies = policy_dir(quotas);
    let (servers, channels) = support::replicas(n, &settings, policies.path()).await;
    Replicas {
        servers,
        channels,
        _policies: policies,
    }
}

/// The answer to `Check` of one chat completion.
async fn check_response(channel: &Channel, request_id: &str, max_tokens: u64) -> CheckResponse {
    // As Envoy sends it: its stream id in `http.id`, the request id in
    // the `x-request-id` header (what ext_proc sees too).
    let request = Check::post("/v1/chat/completions")
        .id("4242")
        .header("x-request-id", request_id)
        .json(&chat_body(max_tokens, true))
        .build();
    AuthorizationClient::new(channel.clone())
        .check(request)
        .await
        .expect("Check answers")
        .into_inner()
}

/// `Check` of one chat completion: its decision id when allowed.
pub(crate) async fn check(channel: &Channel, request_id: &str, max_tokens: u64) -> Option<String> {
    let response = check_response(channel, request_id, max_tokens).await;
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-portcullis-decision-id")
            .map(|h| h.value.clone()),
        _ => None,
    }
}

/// Tokens left of the anonymous caller's budget.
pub(crate) async fn remaining(channel: &Channel) -> u64 {
    support::tokens_left(channel).await
}

/// `calls` concurrent Checks spread over the replicas, each asking for
/// `max_tokens`: the admitted ones' (request id, decision id, replica).
pub(crate) async fn burst(
    channels: &[Channel],
    prefix: &str,
    calls: usize,
    max_tokens: u64,
) -> Vec<(String, String, usize)> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let replica = i % channels.len();
        let channel = channels[replica].clone();
        let id = format!("{prefix}-{i}");
        tasks.spawn(async move {
            let decision = check(&channel, &id, max_tokens).await;
            decision.map(|d| (id, d, replica))
        });
    }
    let mut admitted = Vec::new();
    while let Some(r) = tasks.join_next().await {
        admitted.extend(r.unwrap());
    }
    admitted
}

/// Streams each admitted request's completion (usage `used`) through
/// ext_proc on the replica after the one that decided.
async fn settle_all(channels: &[Channel], admitted: &[(String, String, usize)], used: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for (id, decision, replica) in admitted {
        let channel = channels[(replica + 1) % channels.len()].clone();
        let (id, decision) = (id.clone(), decision.clone());
        tasks.spawn(async move {
            let mut s = ExtProcStream::on(channel, STREAMED).await;
            s.request_headers(&id, &decision).await;
            s.response_headers(200, "text/event-stream").await;
            let chunks = sse_completion(&["Hel", "lo"], used);
            let mut last = None;
            for (i, c) in chunks.iter().enumerate() {
                last = Some(s.body(c, i + 1 == chunks.len()).await);
            }
            s.close();
            let md = portcullis_metadata(&last.unwrap()).expect("usage metadata at the end");
            assert_eq!(md["usage_tokens"], used, "{md}");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// The no-overrun property on `replicas`: 100 concurrent streamed
/// completions of max_tokens 1,000 against 20,000 tokens admit at most 20
/// while their reservations are open (19 with the prompt estimate); settled
/// at 300 each, the budget shows exactly the tokens used, and new requests
/// are admitted again (those are answered, still open).
async fn no_overrun(r: &Replicas) -> Vec<(String, String, usize)> {
    let per = 1000 + PROMPT_ESTIMATE;
    let admitted = burst(&r.channels, "a", 100, 1000).await;
    assert!(admitted.len() <= 20, "{} admitted", admitted.len());
    assert_eq!(admitted.len() as u64, 20_000 / per, "exactly what fits");
    assert_eq!(
        remaining(&r.channels[0]).await,
        20_000 - per * admitted.len() as u64
    );
    // While they are open, nothing more fits.
    assert!(burst(&r.channels, "b", 10, 1000).await.is_empty());

    settle_all(&r.channels, &admitted, 300).await;
    let used = 300 * admitted.len() as u64;
    for channel in &r.channels {
        assert_eq!(
            remaining(channel).await,
            20_000 - used,
            "the budget shows exactly the tokens used"
        );
    }
    // Admitted again: what is left, in reservations of 1,008.
    let again = burst(&r.channels, "c", 20, 1000).await;
    assert_eq!(again.len() as u64, (20_000 - used) / per);
    again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_overrun_in_process_100_streamed_completions_against_20000_tokens() {
    let r = replicas(1, QuotaSettings::default(), &token_quotas("{}")).await;
    no_overrun(&r).await;
}

/// `settings` with a 1-s stall threshold. These tests pin the reservation
/// arithmetic across replicas, not stall handling. One full-suite run (2
/// cores, every test at once) admitted 25 of 100 on the Cluster with the
/// default 10 ms; most likely a Redis starved of CPU went silent for 10 ms
/// and the calls waiting on it were decided in the degraded `local` mode
/// (each replica 1/3 of the budget, not knowing what Redis holds): inferred
/// from that mode's arithmetic, not traced. The degraded mode has its own
/// tests (`quota_burst`: a paused Redis, a paused Cluster primary).
fn exact(settings: QuotaSettings) -> QuotaSettings {
    QuotaSettings {
        stall_ms: 1000,
        ..settings
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_overrun_with_3_replicas_on_redis() {
    let redis = RedisServer::start();
    let settings = exact(crate::quota_burst::single(&redis));
    let r = replicas(3, settings, &token_quotas("{}")).await;
    let open = no_overrun(&r).await;
    settle_all(&r.channels, &open, 300).await;
    // Nothing left open: the per-limit entries, the records and the
    // expiry set are gone with the settling; every key left has a TTL.
    let keys = redis.ttls();
    assert!(
        keys.iter().all(|(k, ttl)| !k.ends_with(":reserved")
            && !k.starts_with("portcullis:r:")
            && *ttl > 0),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_overrun_with_3_replicas_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let settings = exact(crate::quota_burst::cluster(&cluster));
    let r = replicas(3, settings, &token_quotas("{}")).await;
    no_overrun(&r).await;
}

/// A second request under the request id of one still open, on another
/// replica: refused with 409 `request_id_in_use`, writing nothing; the
/// first keeps its reservation and settles from its own response at its
/// own usage; the refused one's estimate stays charged; then the id is
/// free again.
async fn a_request_id_in_use_is_refused_and_the_open_reservation_kept(r: &Replicas) {
    let quotas = &r.servers[0].state.quotas;
    let first = check(&r.channels[0], "reused", 1000)
        .await
        .expect("the first is allowed");
    let second = check_response(r.channels.last().unwrap(), "reused", 10).await;
    assert_eq!(support::http_status(&second), 409);
    let Some(HttpResponse::DeniedResponse(denied)) = &second.http_response else {
        panic!("a denial")
    };
    assert!(
        denied
            .body
            .contains("\"type\":\"urn:portcullis:problem:request_id_in_use\""),
        "{}",
        denied.body
    );
    let held = quotas.reservation("reused").await.unwrap().expect("kept");
    assert_eq!(
        (held.decision_id.as_str(), held.total()),
        (first.as_str(), 1000 + PROMPT_ESTIMATE)
    );
    settle_all(&r.channels, &[("reused".to_string(), first, 0)], 300).await;
    assert_eq!(
        remaining(&r.channels[0]).await,
        20_000 - 300 - (10 + PROMPT_ESTIMATE),
        "the first counts its usage; the refused one its estimate"
    );
    assert!(
        check(&r.channels[0], "reused", 10).await.is_some(),
        "free again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_in_use_is_refused_in_process() {
    let r = replicas(1, QuotaSettings::default(), &token_quotas("{}")).await;
    a_request_id_in_use_is_refused_and_the_open_reservation_kept(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_in_use_is_refused_across_replicas_on_redis() {
    let redis = RedisServer::start();
    let settings = exact(crate::quota_burst::single(&redis));
    let r = replicas(2, settings, &token_quotas("{}")).await;
    a_request_id_in_use_is_refused_and_the_open_reservation_kept(&r).await;
}

/// The comparison of the note: charging after the fact only (check with
/// cost 0, charge the usage post hoc) admits every one of the 100, and
/// the budget ends far past its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charging_after_the_fact_only_admits_all_100_and_overruns_the_budget() {
    let r = replicas(1, QuotaSettings::default(), POST_HOC_QUOTAS).await;
    let admitted = burst(&r.channels, "p", 100, 1000).await;
    assert_eq!(admitted.len(), 100, "every check passes before any charge");
    // Each charges its usage when it ends (ShouldRateLimit with the usage
    // as hits_addend, as Envoy's apply_on_stream_done does).
    for _ in &admitted {
        let request = RateLimitRequest {
            domain: "llm".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "tokens".into(),
                    value: "anonymous".into(),
                }],
                ..Default::default()
            }],
            hits_addend: 300,
        };
        RateLimitServiceClient::new(r.channels[0].clone())
            .should_rate_limit(request)
            .await
            .unwrap();
    }
    let charged = 300 * admitted.len() as u64;
    let overrun = charged - 20_000;
    eprintln!(
        "post hoc only: {} admitted, {charged} tokens charged against 20000: overrun {overrun} ({}%)",
        admitted.len(),
        overrun * 100 / 20_000
    );
    assert_eq!(overrun, 10_000);
    assert_eq!(remaining(&r.channels[0]).await, 0);
    assert!(check(&r.channels[0], "after", 1000).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffered_streamed_and_full_duplex_responses_settle_alike_and_are_recorded() {
    let r = replicas(1, QuotaSettings::default(), &token_quotas("{}")).await;
    let addr = r.servers[0].decision_addr;
    let mut decisions = Vec::new();
    for (i, (mode, content_type, chunks)) in [
        (
            BUFFERED,
            "application/json",
            vec![json_completion("hello", 300)],
        ),
        (
            STREAMED,
            "text/event-stream",
            sse_completion(&["a", "b", "c"], 300),
        ),
        (
            FULL_DUPLEX_STREAMED,
            "text/event-stream",
            sse_completion(&["a"], 300),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("m-{i}");
        let decision = check(&r.channels[0], &id, 1000).await.unwrap();
        let answers = respond(addr, mode, &id, &decision, 200, content_type, &chunks).await;
        let md = portcullis_metadata(answers.last().unwrap()).unwrap();
        assert_eq!(md["usage_tokens"], 300, "{mode}: {md}");
        assert_eq!(
            md["reserved_tokens"],
            1000 + PROMPT_ESTIMATE,
            "{mode}: {md}"
        );
        assert_eq!(md["decision_id"], decision.as_str());
        if mode == FULL_DUPLEX_STREAMED {
            // Every body answer is a streamed response carrying the chunk.
            use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
            use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
            let Some(Response::ResponseBody(b)) = &answers[2].response else {
                panic!("a body answer")
            };
            let Some(Mutation::StreamedResponse(s)) = b
                .response
                .as_ref()
                .and_then(|c| c.body_mutation.as_ref())
                .and_then(|m| m.mutation.as_ref())
            else {
                panic!("a streamed response")
            };
            assert_eq!(s.body, chunks[0]);
        }
        decisions.push(decision);
    }
    assert_eq!(remaining(&r.channels[0]).await, 20_000 - 3 * 300);
    // Each response has a record linked to its decision.
    let servers = r.servers;
    let audit = servers
        .into_iter()
        .next()
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let records = audit_records(audit.path());
    for decision in &decisions {
        let response = records
            .iter()
            .find(|r| r["kind"] == "response" && r["decision_id"] == decision.as_str())
            .unwrap_or_else(|| panic!("a response record for {decision}"));
        assert_eq!(response["adapter"], "ext_proc");
        assert_eq!(
            response["settlement"],
            "used 300 of 1008 reserved (708 returned)"
        );
        let made = records
            .iter()
            .find(|r| r["kind"] == "decision" && r["id"] == decision.as_str())
            .unwrap();
        assert_eq!(
            made["reservation"],
            format!(
                "1008 tokens (tokens 1008), ttl 600s, request {}",
                response["request_id"].as_str().unwrap()
            )
        );
        assert_eq!(
            response["reservation"],
            "1008 tokens (tokens 1008), ttl 600s"
        );
        // The response record carries the x-request-id both sides saw;
        // the decision's, Envoy's stream id in Check (`http.id`).
        assert!(
            response["request_id"].as_str().unwrap().starts_with("m-"),
            "{response}"
        );
        assert_eq!(made["request_id"], "4242");
    }
}

/// Every record of an audit directory.
pub(crate) fn audit_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_broken_mid_response_leaves_no_reservation_open() {
    let r = replicas(
        1,
        QuotaSettings::default(),
        &token_quotas("{on_missing_usage: release, reservation_ttl: 2s}"),
    )
    .await;
    let quotas = &r.servers[0].state.quotas;
    let decision = check(&r.channels[0], "cut", 1000).await.unwrap();
    assert!(quotas.reservation("cut").await.unwrap().is_some());
    let mut s = ExtProcStream::open(r.servers[0].decision_addr, STREAMED).await;
    s.request_headers("cut", &decision).await;
    s.response_headers(200, "text/event-stream").await;
    s.body(&sse_completion(&["Hel"], 300)[0], false).await;
    // Envoy (or the client) goes away mid-response.
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while quotas.reservation("cut").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "still open after its expiry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled by its rule (release): the whole budget is back.
    assert_eq!(remaining(&r.channels[0]).await, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_processor_ends_the_stream_cleanly_once_the_response_has_ended() {
    // It waited for Envoy to close its side, and Envoy, done with the
    // response, reset the stream instead (RST_STREAM INTERNAL_ERROR): every
    // request through Envoy logged "a message from the gateway could not
    // be read" and counted an unreadable message.
    let r = replicas(1, QuotaSettings::default(), &token_quotas("{}")).await;
    let quotas = &r.servers[0].state.quotas;
    for (mode, content_type, chunks) in [
        (
            STREAMED,
            "text/event-stream",
            sse_completion(&["Hel", "lo"], 300),
        ),
        (
            BUFFERED,
            "application/json",
            vec![json_completion("Hello", 300)],
        ),
    ] {
        let decision = check(&r.channels[0], "done", 1000).await.unwrap();
        let mut s = ExtProcStream::open(r.servers[0].decision_addr, mode).await;
        s.request_headers("done", &decision).await;
        s.response_headers(200, content_type).await;
        for (i, c) in chunks.iter().enumerate() {
            s.body(c, i + 1 == chunks.len()).await;
        }
        // Envoy's side stays open: the processor ends the stream itself,
        // with status OK, the reservation already settled.
        assert_eq!(s.ended_by_processor().await.map_err(|e| e.code()), Ok(()));
        assert!(quotas.reservation("done").await.unwrap().is_none());
    }
    assert_eq!(remaining(&r.channels[0]).await, 20_000 - 2 * 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_over_the_size_limit_ends_the_stream_with_an_error_not_a_clean_end() {
    // It ended as a success with no answer to the body: Envoy would pass
    // the rest of the response unchecked, and nothing said why.
    let r = replicas(
        1,
        QuotaSettings::default(),
        &token_quotas("{on_missing_usage: release, reservation_ttl: 30s}"),
    )
    .await;
    let quotas = &r.servers[0].state.quotas;
    let decision = check(&r.channels[0], "big", 1000).await.unwrap();
    let mut s = ExtProcStream::open(r.servers[0].decision_addr, STREAMED).await;
    s.request_headers("big", &decision).await;
    s.response_headers(200, "application/json").await;
    let over = portcullis::config::Config::default()
        .server
        .max_message_bytes
        + 100;
    let status = s
        .send_refused(Msg::ResponseBody(HttpBody {
            body: vec![b' '; over],
            end_of_stream: true,
            ..Default::default()
        }))
        .await;
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    // Settled as a broken stream's (release), not left open to its expiry.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while quotas.reservation("big").await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(remaining(&r.channels[0]).await, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_nobody_settles_expires_and_settles_by_its_rule() {
    let r = replicas(
        1,
        QuotaSettings::default(),
        &token_quotas("{on_missing_usage: {charge: 500}, reservation_ttl: 1s}"),
    )
    .await;
    let quotas = &r.servers[0].state.quotas;
    check(&r.channels[0], "lost", 1000).await.unwrap();
    assert_eq!(remaining(&r.channels[0]).await, 20_000 - 1008);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(quotas.reservation("lost").await.unwrap().is_none());
    assert_eq!(remaining(&r.channels[0]).await, 20_000 - 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_response_without_a_reservation_passes_untouched() {
    let r = replicas(1, QuotaSettings::default(), &token_quotas("{}")).await;
    let addr = r.servers[0].decision_addr;
    // An id no Check reserved under, and no id at all.
    for id in ["never-checked", ""] {
        let answers = respond(
            addr,
            STREAMED,
            id,
            "",
            200,
            "text/event-stream",
            &sse_completion(&["x"], 300),
        )
        .await;
        for a in &answers[..answers.len() - 1] {
            assert!(a.dynamic_metadata.is_none(), "{a:?}");
        }
        for a in &answers[2..] {
            use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
            let Some(Response::ResponseBody(b)) = &a.response else {
                panic!("a body answer")
            };
            assert!(
                b.response.as_ref().unwrap().body_mutation.is_none(),
                "untouched"
            );
        }
        // The usage is still told to Envoy (for its own ratelimit filter).
        let md = portcullis_metadata(answers.last().unwrap()).unwrap();
        assert_eq!(md["usage_tokens"], 300);
        assert!(md.get("reserved_tokens").is_none());
    }
    assert_eq!(remaining(&r.channels[0]).await, 20_000);
}

fn policy_dir(quotas: &str) -> PolicyDir {
    support::token_policy_dir(quotas)
}

fn load_errors(policies: &PolicyDir) -> Vec<String> {
    match portcullis::policy::reload::PolicyStore::load(policies.path()) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .errors
            .iter()
            .map(|e| format!("{}:{}: {}", e.file, e.line.unwrap_or(0), e.message))
            .collect(),
    }
}

#[test]
fn token_rules_are_checked_against_the_routes_at_load() {
    // A route without a body section: its max_tokens cannot be read.
    let policies = policy_dir(&token_quotas("{}").replace("routes: [chat]", "routes: [status]"));
    assert_eq!(
        load_errors(&policies),
        ["quotas.yaml:8: check rule 'tokens per caller': tokens on route 'status', which has no body: section in routes.yaml, so its max_tokens and prompt cannot be read; give it one (e.g. body: {content_types: [application/json]}) or leave it out of the rule's routes"]
    );
    let policies = policy_dir(&token_quotas("{}").replace("routes: [chat]", "routes: [chta]"));
    let errors = load_errors(&policies);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("quotas.yaml:8: check rule 'tokens per caller': tokens on route 'chta', which routes.yaml does not have (routes: status, "),
        "{errors:?}"
    );
    // A pointer that is not RFC 6901, with the file and line.
    let policies = policy_dir(&token_quotas("{usage: [usage.output_tokens]}"));
    assert_eq!(
        load_errors(&policies),
        ["quotas.yaml:8: check rule 'tokens per caller': tokens.usage: 'usage.output_tokens' is not a JSON pointer (RFC 6901: empty, or '/' then segments, '~' only as '~0' or '~1'); did you mean '/usage/output_tokens'?"]
    );
    assert!(load_errors(&policy_dir(&token_quotas("{}"))).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_settings_are_hot_reloaded() {
    let r = replicas(1, QuotaSettings::default(), &token_quotas("{}")).await;
    let store = &r.servers[0].state.policies;
    let quotas = &r.servers[0].state.quotas;
    check(&r.channels[0], "before", 1000).await.unwrap();
    let before = quotas.reservation("before").await.unwrap().unwrap();
    assert_eq!(before.ttl_ms, 600_000);
    // The policy directory changes: a shorter TTL, a release rule, and
    // the output tokens only (no prompt estimate).
    std::fs::write(
        store.directory().join("quotas.yaml"),
        token_quotas(
            "{reservation_ttl: 30s, on_missing_usage: release, bytes_per_token: 0, usage: [/usage/completion_tokens]}",
        ),
    )
    .unwrap();
    store.reload().expect("the new quotas load");
    check(&r.channels[0], "after", 1000).await.unwrap();
    let after = quotas.reservation("after").await.unwrap().unwrap();
    assert_eq!(after.ttl_ms, 30_000);
    assert_eq!(after.limits[0].reserved, 1000, "no prompt estimate");
    assert_eq!(after.limits[0].usage, ["/usage/completion_tokens"]);
    // Each settles by the rule it was reserved under.
    let answers = respond(
        r.servers[0].decision_addr,
        BUFFERED,
        "after",
        "",
        200,
        "application/json",
        &[json_completion("hi", 300)],
    )
    .await;
    let md = portcullis_metadata(answers.last().unwrap()).unwrap();
    assert_eq!(md["usage_tokens"], 292, "completion tokens only: {md}");
    assert_eq!(remaining(&r.channels[0]).await, 20_000 - 1008 - 292);
}

/// Response checks on the chat route (`responses.yaml`): a canary per
/// action, and personal data tagged.
const CHAT_CHECKS: &str = "checks:
  - name: canary-block
    canaries: [PCX-CANARY-5f1e9c]
    action: block
  - name: canary-redact
    canaries: [PCX-CANARY-a7d204]
    action: redact
  - name: personal-data
    pii: [email]
    action: tag
routes:
  chat: [canary-block, canary-redact, personal-data]
";

/// The body an answer sends on (`None`: unchanged), and the ext_proc
/// answers' other parts the tests read.
fn body_of(
    answer: &envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse,
) -> Option<Vec<u8>> {
    use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
    let Some(Response::ResponseBody(b)) = &answer.response else {
        panic!("a body answer: {answer:?}")
    };
    match b
        .response
        .as_ref()?
        .body_mutation
        .as_ref()?
        .mutation
        .as_ref()?
    {
        Mutation::Body(bytes) => Some(bytes.clone()),
        other => panic!("{other:?}"),
    }
}

fn sse_text(pieces: &[&str]) -> Vec<Vec<u8>> {
    sse_completion(pieces, 300)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn response_checks_block_redact_and_tag_through_ext_proc_with_linked_records() {
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
    let policies = policy_dir(&token_quotas("{}"));
    policies.write("responses.yaml", CHAT_CHECKS);
    let server = TestServer::start(support::in_process_config(policies.path())).await;
    let addr = server.decision_addr;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Block, buffered: the client gets a 502 problem instead of the body.
    let blocked = check(&channel, "block", 100).await.unwrap();
    let answers = respond(
        addr,
        BUFFERED,
        "block",
        &blocked,
        200,
        "application/json",
        &[json_completion("the secret is PCX-CANARY-5f1e9c", 300)],
    )
    .await;
    let Some(Response::ImmediateResponse(immediate)) = &answers[2].response else {
        panic!("an immediate response: {:?}", answers[2])
    };
    assert_eq!(immediate.status.as_ref().unwrap().code, 502);
    let text = String::from_utf8_lossy(&immediate.body);
    assert!(!text.contains("PCX-CANARY-5f1e9c"), "{text}");
    assert!(text.contains("response_withheld"), "{text}");
    // The usage was still read and settled.
    assert_eq!(
        portcullis_metadata(&answers[2]).unwrap()["usage_tokens"],
        300
    );

    // Redact, streamed, the canary split across two events.
    let redacted = check(&channel, "redact", 100).await.unwrap();
    let chunks = sse_text(&["the code is PCX-CANA", "RY-a7d204, done"]);
    let answers = respond(
        addr,
        STREAMED,
        "redact",
        &redacted,
        200,
        "text/event-stream",
        &chunks,
    )
    .await;
    let sent: Vec<u8> = chunks
        .iter()
        .zip(&answers[2..])
        .flat_map(|(chunk, a)| body_of(a).unwrap_or_else(|| chunk.clone()))
        .collect();
    let sent = String::from_utf8(sent).unwrap();
    assert!(!sent.contains("a7d204"), "{sent}");
    assert!(sent.contains("[REDACTED:canary-redact]"), "{sent}");
    assert!(
        sent.contains("\"total_tokens\":300"),
        "the usage event passes: {sent}"
    );

    // Block, streamed: what was released, then an error event; nothing after.
    let cut = check(&channel, "cut-stream", 100).await.unwrap();
    let chunks = sse_text(&["hello ", "PCX-CANARY-5f1e9c", " and more"]);
    let answers = respond(
        addr,
        STREAMED,
        "cut-stream",
        &cut,
        200,
        "text/event-stream",
        &chunks,
    )
    .await;
    let sent: Vec<u8> = chunks
        .iter()
        .zip(&answers[2..])
        .flat_map(|(chunk, a)| body_of(a).unwrap_or_else(|| chunk.clone()))
        .collect();
    let sent = String::from_utf8(sent).unwrap();
    assert!(!sent.contains("PCX-CANARY-5f1e9c"), "{sent}");
    assert!(sent.contains("event: error"), "{sent}");
    assert!(
        !sent.contains("and more"),
        "nothing after the error event: {sent}"
    );

    // Tag, buffered: the body as sent, the findings in a header.
    let tagged = check(&channel, "tag", 100).await.unwrap();
    let answers = respond(
        addr,
        BUFFERED,
        "tag",
        &tagged,
        200,
        "application/json",
        &[json_completion("write to ann@example.com", 300)],
    )
    .await;
    let Some(Response::ResponseBody(b)) = &answers[2].response else {
        panic!("a body answer")
    };
    let common = b.response.as_ref().unwrap();
    let header = &common.header_mutation.as_ref().unwrap().set_headers[0];
    let header = header.header.as_ref().unwrap();
    assert_eq!(header.key, "x-portcullis-response-checks");
    assert_eq!(
        String::from_utf8_lossy(&header.raw_value),
        "personal-data;kind=email;action=tag;count=1"
    );
    assert!(common.body_mutation.is_none(), "passed on unchanged");
    // The response headers answer took the upstream's content-length off
    // (checks may change the length).
    let Some(Response::ResponseHeaders(h)) = &answers[1].response else {
        panic!("a headers answer")
    };
    let removed = &h
        .response
        .as_ref()
        .unwrap()
        .header_mutation
        .as_ref()
        .unwrap()
        .remove_headers;
    assert_eq!(removed, &["content-length"]);

    // Each case has a response record linked to its decision.
    let audit = server.shutdown().await.unwrap();
    let records = audit_records(audit.path());
    for (decision, finding) in [
        (&blocked, "canary-block;kind=canary;action=block;count=1"),
        (&redacted, "canary-redact;kind=canary;action=redact;count=1"),
        (&cut, "canary-block;kind=canary;action=block;count=1"),
        (&tagged, "personal-data;kind=email;action=tag;count=1"),
    ] {
        let r = records
            .iter()
            .find(|r| r["kind"] == "response" && r["decision_id"] == decision.as_str())
            .unwrap_or_else(|| panic!("a response record for {decision}"));
        assert_eq!(r["findings"][0], finding, "{r}");
        let text = r.to_string();
        assert!(
            !text.contains("PCX-CANARY") && !text.contains("ann@"),
            "{text}"
        );
    }
}
