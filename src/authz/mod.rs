//! Authorization with Cedar: builds the Cedar request (principal, action,
//! resource, context) for a matched route and evaluates the snapshot's
//! policies. Forbid overrides permit, default deny, and any evaluation error
//! denies. It does not authenticate or match routes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Decision as CedarDecision, Entities, Entity, EntityUid, PolicySet, Request,
};
use serde_json::Value;

use crate::authn::Identity;

mod context;
mod slice;

pub use context::{context_from_json, ContextError, ContextInput, RequestContext};
use slice::{PolicyIndex, Scope};

/// The result of evaluating the policies for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzOutcome {
    /// True only when some policy permits, none forbids, and nothing erred.
    pub allowed: bool,
    /// Ids of the policies that determined the outcome.
    pub determining: Vec<String>,
    /// Evaluation errors (for operators only).
    pub errors: Vec<String>,
}

/// The principal entity (with the parents its credentials assert) could
/// not be built or merged into the entity store.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PrincipalEntityError(String);

/// One authorizer for the process: it holds no request state.
static AUTHORIZER: std::sync::LazyLock<Authorizer> = std::sync::LazyLock::new(Authorizer::new);

/// What authorization reads of a policy snapshot: the schema, the shared
/// entities, the prepared (sliced, cached) policy sets, and whether shadow
/// policies exist.
#[derive(Debug, Clone, Copy)]
pub struct Policies<'s> {
    /// The Cedar schema requests are validated against.
    pub schema: &'s cedar_policy::Schema,
    /// `entities.json` plus the model registry's entities.
    pub entities: &'s Entities,
    /// The prepared policy sets and caches.
    pub prepared: &'s Prepared,
    /// True when the snapshot has shadow policies.
    pub shadow: bool,
}

/// The Cedar `Action` entity named `name`.
pub fn action_uid(name: &str) -> EntityUid {
    // Parsed once: Cedar's name parser is a real parser, and this runs on
    // every decision.
    static ACTION: std::sync::LazyLock<cedar_policy::EntityTypeName> =
        std::sync::LazyLock::new(|| {
            "Action"
                .parse::<cedar_policy::EntityTypeName>()
                .expect("'Action' is a valid type name")
        });
    EntityUid::from_type_name_and_id(ACTION.clone(), cedar_policy::EntityId::new(name))
}

/// Evaluates the snapshot's enforced policies for one request and, when the
/// snapshot has shadow policies, the candidate set too (second element).
pub fn authorize(
    snapshot: Policies<'_>,
    identity: &Identity,
    action: &str,
    resource: EntityUid,
    context: ContextInput<'_>,
) -> Decided {
    let action = action_uid(action);
    // Every input the policies can read is in the key (the entity store is
    // the snapshot's, which owns the cache, plus the identity's parents),
    // so a hit is the decision Cedar would make again.
    if !snapshot.prepared.cache_decisions.load(Ordering::Relaxed) {
        return decide_uncached(snapshot, identity, action, resource, context.into_json());
    }
    // Looked up by the key's text: only a miss boxes it (shrinking the
    // buffer costs a reallocation) to keep it in the cache.
    let key = DecisionKey::text(identity, &action, &resource, &context);
    if let Some(hit) = snapshot.prepared.decisions.get(key.as_str()) {
        snapshot.prepared.hits.fetch_add(1, Ordering::Relaxed);
        crate::metrics::global().cache(crate::metrics::Cache::Decision, true);
        return (*hit).clone();
    }
    snapshot.prepared.misses.fetch_add(1, Ordering::Relaxed);
    crate::metrics::global().cache(crate::metrics::Cache::Decision, false);
    let decided = decide_uncached(snapshot, identity, action, resource, context.into_json());
    snapshot
        .prepared
        .decisions
        .insert(DecisionKey(key.into_boxed_str()), Arc::new(decided.clone()));
    decided
}

/// The decision cache's key: principal, the parents its credentials assert,
/// action, resource and every input of the context, as one string; built
/// without the context's JSON form ([`ContextInput::write_key`]).
#[derive(Clone, PartialEq, Eq, Hash)]
struct DecisionKey(Box<str>);

/// A key is found by its text (`str`'s hash and equality, as derived).
impl std::borrow::Borrow<str> for DecisionKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl DecisionKey {
    /// The key's text.
    fn text(
        identity: &Identity,
        action: &EntityUid,
        resource: &EntityUid,
        context: &ContextInput<'_>,
    ) -> String {
        let mut key = String::with_capacity(256);
        write_uid(&mut key, &identity.principal);
        key.push('\u{1f}');
        // The parents as a set: in a fixed order, whatever the credential's.
        let mut parents: Vec<&EntityUid> = identity.parents.iter().collect();
        parents.sort_unstable();
        for p in parents {
            write_uid(&mut key, p);
        }
        key.push('\u{1f}');
        write_uid(&mut key, action);
        write_uid(&mut key, resource);
        context.write_key(&mut key);
        key
    }
}

/// `Type` then the raw id with its length in front (`Ns::Type 5:alice`):
/// unambiguous without Cedar's escaped display form, which costs a
/// character-by-character escape per entity on every decision.
fn write_uid(key: &mut String, uid: &EntityUid) {
    use std::fmt::Write as _;
    let id = uid.id().unescaped();
    let type_name = uid.type_name();
    if type_name.namespace_components().next().is_none() {
        // An unqualified type displays as its basename: no formatter.
        key.push_str(type_name.basename());
    } else {
        let _ = write!(key, "{type_name}");
    }
    key.push(' ');
    key.push_str(itoa::Buffer::new().format(id.len()));
    key.push(':');
    key.push_str(id);
}

type Decided = (AuthzOutcome, Option<AuthzOutcome>);

fn decide_uncached(
    snapshot: Policies<'_>,
    identity: &Identity,
    action: EntityUid,
    resource: EntityUid,
    context: Value,
) -> Decided {
    let denied = |error: String| {
        let outcome = AuthzOutcome {
            allowed: false,
            determining: Vec::new(),
            errors: vec![error],
        };
        let shadow = snapshot.shadow.then(|| outcome.clone());
        (outcome, shadow)
    };
    // Built directly from the JSON value: `Context::from_json_value` tries
    // each escape form of every value through serde and builds (then drops)
    // an error for each miss, which cost more than evaluating the policies.
    // The schema still checks the result in `Request::new`.
    let context = match context_from_json(context) {
        Ok(c) => c,
        Err(e) => return denied(format!("request context does not match the schema: {e}")),
    };
    let request = match Request::new(
        identity.principal.clone(),
        action.clone(),
        resource.clone(),
        context,
        Some(snapshot.schema),
    ) {
        Ok(r) => r,
        Err(e) => return denied(format!("request does not match the schema: {e}")),
    };

    // Credentials may assert parents (the token's org) that entities.json
    // does not know; merge them into the principal (cached per identity,
    // for the life of the snapshot).
    let entities = match snapshot.prepared.entities_for(snapshot.entities, identity) {
        Ok(e) => e,
        Err(e) => return denied(format!("cannot build the principal entity: {e}")),
    };
    let scope = Scope::of(&entities, &identity.principal, &action, &resource);

    let authorizer = &*AUTHORIZER;
    let enforced = evaluate(
        authorizer,
        &request,
        &snapshot.prepared.enforced.slice(&scope),
        &entities,
    );
    let shadow = snapshot
        .prepared
        .shadow
        .as_ref()
        .map(|candidate| evaluate(authorizer, &request, &candidate.slice(&scope), &entities));
    (enforced, shadow)
}

/// What a snapshot prepares once for evaluating requests fast: its policy
/// sets indexed by scope, and the entity stores of identities whose
/// credentials assert parents.
pub struct Prepared {
    decisions: quick_cache::sync::Cache<DecisionKey, Arc<Decided>>,
    cache_decisions: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    enforced: PolicyIndex,
    shadow: Option<PolicyIndex>,
    merged: moka::sync::Cache<(EntityUid, Vec<EntityUid>), Arc<Entities>>,
    plain: Arc<Entities>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("policies", &self.enforced.policies.len())
            .field("merged_entity_stores", &self.merged.entry_count())
            .finish()
    }
}

/// Cedar decisions kept per snapshot (keys are a few hundred bytes).
const DECISION_CACHE_CAPACITY: usize = 16_384;

/// Most entities held, summed over the cached per-identity stores (each a
/// copy of the snapshot's map of shared entities: tens of bytes per entity).
const MERGED_ENTITY_BUDGET: u64 = 500_000;

impl Prepared {
    /// Prepares the enforced set, the shadow set and the entity store.
    pub fn new(enforced: &PolicySet, shadow: Option<&PolicySet>, entities: &Entities) -> Self {
        Prepared {
            decisions: quick_cache::sync::Cache::new(DECISION_CACHE_CAPACITY),
            cache_decisions: AtomicBool::new(true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            enforced: PolicyIndex::new(enforced),
            shadow: shadow.map(PolicyIndex::new),
            merged: moka::sync::Cache::builder()
                .max_capacity(MERGED_ENTITY_BUDGET)
                .weigher(|_, e: &Arc<Entities>| u32::try_from(e.len() + 1).unwrap_or(u32::MAX))
                .build(),
            plain: Arc::new(entities.clone()),
        }
    }

    /// Turns the decision cache on (the default) or off, e.g. to measure
    /// the cost of evaluating every request.
    pub fn set_decision_cache(&self, on: bool) {
        self.cache_decisions.store(on, Ordering::Relaxed);
        if !on {
            self.decisions.clear();
        }
    }

    /// Decision cache hits and misses since the snapshot was loaded.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// The entity store to evaluate `identity`'s requests against.
    fn entities_for(
        &self,
        entities: &Entities,
        identity: &Identity,
    ) -> Result<Arc<Entities>, PrincipalEntityError> {
        if identity.parents.is_empty() {
            return Ok(Arc::clone(&self.plain));
        }
        let mut parents = identity.parents.clone();
        parents.sort_unstable_by_key(ToString::to_string);
        let key = (identity.principal.clone(), parents);
        if let Some(e) = self.merged.get(&key) {
            return Ok(e);
        }
        let principal = with_parents(entities, identity)?;
        let merged = entities
            .clone()
            .upsert_entities([principal], None)
            .map_err(|e| PrincipalEntityError(e.to_string()))?;
        let merged = Arc::new(merged);
        self.merged.insert(key, Arc::clone(&merged));
        Ok(merged)
    }
}

fn evaluate(
    authorizer: &Authorizer,
    request: &Request,
    policies: &cedar_policy::PolicySet,
    entities: &cedar_policy::Entities,
) -> AuthzOutcome {
    let response = authorizer.is_authorized(request, policies, entities);
    let errors: Vec<String> = response
        .diagnostics()
        .errors()
        .map(ToString::to_string)
        .collect();
    let determining = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    // Cedar skips a policy that errors; an erroring forbid would then let a
    // permit through. Any error therefore denies.
    let allowed = response.decision() == CedarDecision::Allow && errors.is_empty();
    AuthzOutcome {
        allowed,
        determining,
        errors,
    }
}

/// The principal entity with the identity's parents added to any it has in
/// `entities.json` (attributes come from `entities.json` only).
fn with_parents(entities: &Entities, identity: &Identity) -> Result<Entity, PrincipalEntityError> {
    let mut parents: HashSet<EntityUid> = identity.parents.iter().cloned().collect();
    match entities.get(&identity.principal) {
        Some(existing) => {
            let (uid, attrs, static_parents) = existing.clone().into_inner();
            parents.extend(static_parents);
            Entity::new(uid, attrs, parents).map_err(|e| PrincipalEntityError(e.to_string()))
        }
        None => Ok(Entity::new_no_attrs(identity.principal.clone(), parents)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::Context;

    #[test]
    fn a_uid_in_a_decision_key_is_its_type_as_displayed_then_the_raw_id_with_its_length() {
        for (uid, written) in [
            (r#"User::"alice""#, "User 5:alice"),
            (
                r#"Inference::ModelVersion::"a \"b\"/v2""#,
                r#"Inference::ModelVersion 8:a "b"/v2"#,
            ),
        ] {
            let mut key = String::new();
            write_uid(&mut key, &uid.parse().unwrap());
            assert_eq!(key, written);
        }
    }

    #[test]
    fn decision_keys_tell_apart_ids_that_concatenate_alike_and_ignore_parent_order() {
        use crate::authn::{entity_uid, AuthMethod};
        let uid = |t: &str, id: &str| entity_uid(t, id).unwrap();
        let who = |principal: EntityUid, parents: Vec<EntityUid>| {
            Identity::new(principal, parents, AuthMethod::Jwt)
        };
        let context = serde_json::json!({});
        let key = |identity: &Identity| {
            DecisionKey::text(
                identity,
                &action_uid("invoke"),
                &uid("Model", "m"),
                &ContextInput::Json(context.clone()),
            )
        };
        // Two parents, or one whose id reads like both.
        let a = who(uid("User", "a"), vec![uid("Org", "b"), uid("Team", "c")]);
        let b = who(uid("User", "a"), vec![uid("Org", "bTeam c")]);
        assert!(key(&a) != key(&b));
        // An id holding a space and digits is still one id.
        let c = who(uid("User", "1:a"), vec![]);
        let d = who(uid("User", "1:a "), vec![]);
        assert!(key(&c) != key(&d));
        let one = who(uid("User", "a"), vec![uid("Org", "x"), uid("Team", "y")]);
        let other = who(uid("User", "a"), vec![uid("Team", "y"), uid("Org", "x")]);
        assert!(key(&one) == key(&other));
    }

    const POLICIES: &str = r#"
        @id("any") permit (principal, action, resource) when { context.flag };
        @id("eq-alice") permit (principal == User::"alice", action == Action::"invoke", resource);
        @id("in-acme") permit (principal in Org::"acme", action in [Action::"use"], resource in Folder::"f");
        @id("in-team") forbid (principal in Team::"t1", action, resource == Model::"m2");
        @id("is-user") permit (principal is User, action == Action::"read", resource is Model);
        @id("is-in") permit (principal is User in Org::"acme", action, resource is Model in Folder::"f");
        @id("svc") permit (principal is ServiceAccount, action, resource) when { resource.missing == 1 };
        @id("errs") forbid (principal == User::"bob", action, resource) when { resource.nope };
        @id("res-eq") permit (principal, action == Action::"invoke", resource == Model::"zzz");
        @id("carol") permit (principal == User::"carol", action in [Action::"read", Action::"invoke"], resource);
    "#;

    fn entities() -> Entities {
        Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [{"type": "Team", "id": "t1"}]},
                {"uid": {"type": "Team", "id": "t1"}, "attrs": {}, "parents": [{"type": "Org", "id": "acme"}]},
                {"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Model", "id": "m1"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f"}]},
                {"uid": {"type": "Model", "id": "m2"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f"}]},
                {"uid": {"type": "Action", "id": "invoke"}, "attrs": {}, "parents": [{"type": "Action", "id": "use"}]},
                {"uid": {"type": "Action", "id": "read"}, "attrs": {}, "parents": [{"type": "Action", "id": "use"}]},
                {"uid": {"type": "Action", "id": "use"}, "attrs": {}, "parents": []}
            ]),
            None,
        )
        .unwrap()
    }

    fn uid(s: &str) -> EntityUid {
        s.parse().unwrap()
    }

    /// Evaluating the slice gives exactly what evaluating every policy
    /// gives: decision, determining policies and errors, for principals in
    /// and out of the store, action groups, and resources in and out of it.
    #[test]
    fn a_slice_decides_exactly_as_the_whole_set() {
        let set: PolicySet = POLICIES.parse().unwrap();
        let index = PolicyIndex::new(&set);
        let entities = entities();
        let principals = [
            r#"User::"alice""#,
            r#"User::"bob""#,
            r#"User::"carol""#,
            r#"ServiceAccount::"s""#,
            r#"Team::"t1""#,
        ];
        let actions = [
            r#"Action::"invoke""#,
            r#"Action::"read""#,
            r#"Action::"use""#,
        ];
        let resources = [
            r#"Model::"m1""#,
            r#"Model::"m2""#,
            r#"Model::"zzz""#,
            r#"Folder::"f""#,
        ];
        let mut smaller = 0;
        for p in principals {
            for a in actions {
                for r in resources {
                    for flag in [false, true] {
                        let (p, a, r) = (uid(p), uid(a), uid(r));
                        let ctx = context_from_json(serde_json::json!({ "flag": flag })).unwrap();
                        let request =
                            Request::new(p.clone(), a.clone(), r.clone(), ctx, None).unwrap();
                        let scope = Scope::of(&entities, &p, &a, &r);
                        let slice = index.slice(&scope);
                        if slice.policies().count() < set.policies().count() {
                            smaller += 1;
                        }
                        let whole = evaluate(&AUTHORIZER, &request, &set, &entities);
                        let sliced = evaluate(&AUTHORIZER, &request, &slice, &entities);
                        let sorted = |o: &AuthzOutcome| {
                            let mut d = o.determining.clone();
                            d.sort();
                            let mut e = o.errors.clone();
                            e.sort();
                            (o.allowed, d, e)
                        };
                        assert_eq!(sorted(&whole), sorted(&sliced), "{p} {a} {r} flag={flag}");
                    }
                }
            }
        }
        // The index does cut work: most requests see fewer policies.
        assert!(smaller > 60, "only {smaller} of 120 requests were sliced");
    }

    #[test]
    fn contexts_convert_like_cedar_json_parsing() {
        let value = serde_json::json!({
            "s": "x", "n": -3, "b": true, "set": ["a", "b"],
            "rec": {"inner": {"deep": 1}},
            "ip": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}},
        });
        let fast = context_from_json(value.clone()).unwrap();
        let slow = Context::from_json_value(value, None).unwrap();
        let p = uid(r#"User::"u""#);
        let a = uid(r#"Action::"a""#);
        let r = uid(r#"Model::"m""#);
        let policy: PolicySet = r#"permit (principal, action, resource) when {
            context.s == "x" && context.n == -3 && context.b && context.set.contains("b")
            && context.rec.inner.deep == 1 && context.ip.isInRange(ip("10.0.0.0/8")) };"#
            .parse()
            .unwrap();
        for ctx in [fast, slow] {
            let req = Request::new(p.clone(), a.clone(), r.clone(), ctx, None).unwrap();
            let out = evaluate(&AUTHORIZER, &req, &policy, &Entities::empty());
            assert!(out.allowed, "{out:?}");
        }
        for bad in [
            serde_json::json!({"f": 1.5}),
            serde_json::json!({"n": null}),
            serde_json::json!({"x": {"__extn": {"fn": "nope", "arg": "1"}}}),
            serde_json::json!([1]),
        ] {
            assert!(context_from_json(bad.clone()).is_err(), "{bad}");
        }
    }
}
