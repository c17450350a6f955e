//! HTTP semantics a client relies on, through the decision path: equivalent
//! spellings of one path (RFC 3986 section 6.2.2) reach the same route and
//! the same policies, and HEAD is answered like GET (RFC 9110 section
//! 9.3.2).

use portcullis::authn::{AuthMethod, Identity};
use portcullis::decision::{DenyReason, Outcome};
use portcullis::policy::snapshot::Snapshot;
use portcullis::request::AccessRequest;

use crate::support::{decide_as, PolicyDir};

/// The bundled policies with `unmatched: allow`: a spelling that missed
/// its route would pass undecided.
fn unmatched_allowed() -> (PolicyDir, Snapshot) {
    let dir = PolicyDir::bundled();
    let routes = dir.read("routes.yaml");
    assert!(
        routes.contains("\nunmatched: deny\n"),
        "bundled routes.yaml"
    );
    dir.write(
        "routes.yaml",
        &routes.replace("\nunmatched: deny\n", "\nunmatched: allow\n"),
    );
    let snapshot = Snapshot::load(dir.path()).expect("policies load");
    (dir, snapshot)
}

fn acme_user() -> Identity {
    Identity::new(
        r#"User::"alice""#.parse().unwrap(),
        vec![r#"Org::"acme""#.parse().unwrap()],
        AuthMethod::Jwt,
    )
}

fn anonymous(snapshot: &Snapshot, method: &str, path: &str) -> portcullis::decision::Decision {
    decide_as(snapshot, None, &AccessRequest::for_test(method, path))
}

#[test]
fn percent_encoded_unreserved_path_matches_the_protected_route() {
    let (_dir, s) = unmatched_allowed();
    for path in [
        "/v1/models/fraud-detector",
        "/v1/%6Dodels/fraud-detector",
        "/v1/%6dodels/fraud-detector",
        "/%76%31/models/fraud%2Ddetector",
        "/v1/models/fraud-detector/",
        "/v1/%6Dodels/fraud-detector/?x=1",
    ] {
        let d = anonymous(&s, "GET", path);
        assert_eq!(d.route.as_deref(), Some("get-model"), "{path}: {d:?}");
        assert_eq!(d.reason, Some(DenyReason::Unauthenticated), "{path}");
        assert_eq!(d.status, 401, "{path}");
    }
    // A path no route spells stays unmatched (and allowed, as configured).
    let d = anonymous(&s, "GET", "/v1/%6Dodels");
    assert_eq!((d.decision, d.route), (Outcome::Allow, None));
}

#[test]
fn decoded_dot_segments_are_still_refused() {
    let (_dir, s) = unmatched_allowed();
    for path in [
        "/v1/%2E%2E/v1/models/fraud-detector",
        "/v1/models/%2e",
        "/v1/%2e%2E",
        "/v1/.%2E/status",
        "/v1//models/fraud-detector",
        "/v1%2Fmodels/fraud-detector",
        "/v1/models%5Cfraud-detector",
    ] {
        let d = anonymous(&s, "GET", path);
        assert_eq!(d.reason, Some(DenyReason::BadPath), "{path}: {d:?}");
        assert_eq!(d.status, 400, "{path}");
    }
}

#[test]
fn policies_see_the_normalized_path() {
    let dir = PolicyDir::bundled();
    dir.write(
        "zz-path.cedar",
        "@id(\"no-fraud-detector-by-path\")\n\
         forbid(principal, action == Action::\"getModel\", resource)\n\
         when { context.path == \"/v1/models/fraud-detector\" };\n",
    );
    let s = Snapshot::load(dir.path()).expect("policies load");
    for path in [
        "/v1/models/fraud-detector",
        "/v1/%6Dodels/fraud%2ddetector/",
    ] {
        let d = decide_as(&s, Some(acme_user()), &AccessRequest::for_test("GET", path));
        assert_eq!(d.status, 403, "{path}: {d:?}");
        assert_eq!(
            d.determining_policies,
            ["no-fraud-detector-by-path"],
            "{path}"
        );
    }
}

#[test]
fn head_is_answered_like_get() {
    let s = Snapshot::load(&crate::support::policies_dir()).expect("bundled policies");
    let get = anonymous(&s, "GET", "/v1/status");
    let head = anonymous(&s, "HEAD", "/v1/status");
    assert_eq!(head.decision, Outcome::Allow, "{head:?}");
    assert_eq!((head.route, head.status), (get.route, get.status));
    let user = |method| {
        decide_as(
            &s,
            Some(acme_user()),
            &AccessRequest::for_test(method, "/v1/models/sentiment"),
        )
    };
    let (get, head) = (user("GET"), user("HEAD"));
    assert_eq!(
        (head.decision, head.status),
        (get.decision, get.status),
        "{head:?}"
    );
    assert_eq!(head.route.as_deref(), Some("get-model"));
    // Without credentials HEAD is refused exactly as GET is.
    assert_eq!(anonymous(&s, "HEAD", "/v1/models/sentiment").status, 401);
}

#[test]
fn head_does_not_open_other_methods_and_allow_lists_it() {
    let s = Snapshot::load(&crate::support::policies_dir()).expect("bundled policies");
    let d = anonymous(&s, "DELETE", "/v1/status");
    assert_eq!(d.status, 405);
    assert_eq!(d.allow_methods.as_deref(), Some("GET, HEAD"));
    // A POST-only route does not take HEAD.
    let d = anonymous(&s, "HEAD", "/v1/models/sentiment/versions/v2:predict");
    assert_eq!(d.status, 405, "{d:?}");
    assert_eq!(d.allow_methods.as_deref(), Some("POST"));
}
