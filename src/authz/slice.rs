//! Policy slicing: each policy's scope (principal, action, resource
//! constraints) converted out of Cedar's AST once per snapshot, and the
//! index that picks, per request, only the policies whose scope can match,
//! so evaluation cost follows the applicable policies, not all of them.

use std::collections::{HashMap, HashSet};

use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};

/// What a policy's scope can be matched against: the request's principal,
/// action and resource, each with its ancestors in the entity store.
pub(super) struct Scope<'a> {
    principal: &'a EntityUid,
    principal_ancestors: HashSet<&'a EntityUid>,
    action: &'a EntityUid,
    action_ancestors: HashSet<&'a EntityUid>,
    resource: &'a EntityUid,
    resource_ancestors: HashSet<&'a EntityUid>,
}

impl<'a> Scope<'a> {
    pub(super) fn of(
        entities: &'a Entities,
        principal: &'a EntityUid,
        action: &'a EntityUid,
        resource: &'a EntityUid,
    ) -> Self {
        let ancestors = |uid: &EntityUid| -> HashSet<&'a EntityUid> {
            entities
                .ancestors(uid)
                .map(|a| a.collect())
                .unwrap_or_default()
        };
        Scope {
            principal,
            principal_ancestors: ancestors(principal),
            action,
            action_ancestors: ancestors(action),
            resource,
            resource_ancestors: ancestors(resource),
        }
    }

    /// Whether the policy's scope can hold for this request. A policy whose
    /// scope does not hold is neither satisfied nor evaluated further by
    /// Cedar (the scope is the first conjunct), so leaving it out changes
    /// neither the decision, nor the determining policies, nor the errors.
    fn admits(&self, scope: &PolicyScope) -> bool {
        // Cedar's `in` for the scope: equal, or an ancestor.
        let within = |uid: &EntityUid, ancestors: &HashSet<&EntityUid>, group: &EntityUid| {
            group == uid || ancestors.contains(group)
        };
        let (p, pa) = (self.principal, &self.principal_ancestors);
        let (r, ra) = (self.resource, &self.resource_ancestors);
        let principal = match &scope.principal {
            PrincipalConstraint::Any => true,
            PrincipalConstraint::Eq(uid) => uid == p,
            PrincipalConstraint::In(uid) => within(p, pa, uid),
            PrincipalConstraint::Is(ty) => ty == p.type_name(),
            PrincipalConstraint::IsIn(ty, uid) => ty == p.type_name() && within(p, pa, uid),
        };
        principal
            && match &scope.action {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => uid == self.action,
                ActionConstraint::In(groups) => groups
                    .iter()
                    .any(|g| within(self.action, &self.action_ancestors, g)),
            }
            && match &scope.resource {
                ResourceConstraint::Any => true,
                ResourceConstraint::Eq(uid) => uid == r,
                ResourceConstraint::In(uid) => within(r, ra, uid),
                ResourceConstraint::Is(ty) => ty == r.type_name(),
                ResourceConstraint::IsIn(ty, uid) => ty == r.type_name() && within(r, ra, uid),
            }
    }
}

/// A policy's scope, converted out of Cedar's AST once per snapshot (each
/// `*_constraint()` call clones its entity ids).
struct PolicyScope {
    principal: PrincipalConstraint,
    action: ActionConstraint,
    resource: ResourceConstraint,
}

/// A policy set indexed by principal scope, so that a request is evaluated
/// against only the policies whose scope can hold for it.
pub struct PolicyIndex {
    all: Arc<PolicySet>,
    /// Every policy, in a fixed order; the maps below hold positions.
    pub(super) policies: Vec<Policy>,
    /// Each policy's scope, by position.
    scopes: Vec<PolicyScope>,
    by_principal: HashMap<EntityUid, Vec<usize>>,
    by_principal_type: HashMap<EntityTypeName, Vec<usize>>,
    any_principal: Vec<usize>,
    /// Slices already built, keyed by the positions they hold.
    slices: moka::sync::Cache<Vec<usize>, Arc<PolicySet>>,
    /// Template-linked policies cannot be re-added alone: no slicing then.
    sliceable: bool,
}

impl PolicyIndex {
    /// Indexes `set`.
    pub fn new(set: &PolicySet) -> Self {
        let policies: Vec<Policy> = set.policies().cloned().collect();
        let mut by_principal: HashMap<EntityUid, Vec<usize>> = HashMap::new();
        let mut by_principal_type: HashMap<EntityTypeName, Vec<usize>> = HashMap::new();
        let mut any_principal = Vec::new();
        let scopes: Vec<PolicyScope> = policies
            .iter()
            .map(|p| PolicyScope {
                principal: p.principal_constraint(),
                action: p.action_constraint(),
                resource: p.resource_constraint(),
            })
            .collect();
        for (i, scope) in scopes.iter().enumerate() {
            match &scope.principal {
                PrincipalConstraint::Any => any_principal.push(i),
                PrincipalConstraint::Eq(uid) | PrincipalConstraint::In(uid) => {
                    by_principal.entry(uid.clone()).or_default().push(i)
                }
                PrincipalConstraint::Is(ty) | PrincipalConstraint::IsIn(ty, _) => {
                    by_principal_type.entry(ty.clone()).or_default().push(i)
                }
            }
        }
        let sliceable =
            set.templates().next().is_none() && policies.iter().all(|p| p.template_id().is_none());
        PolicyIndex {
            all: Arc::new(set.clone()),
            policies,
            scopes,
            by_principal,
            by_principal_type,
            any_principal,
            slices: moka::sync::Cache::new(4_096),
            sliceable,
        }
    }

    /// The policies whose scope can hold for the request.
    pub(super) fn slice(&self, scope: &Scope<'_>) -> Arc<PolicySet> {
        if !self.sliceable {
            return Arc::clone(&self.all);
        }
        let mut picked: Vec<usize> = Vec::new();
        let mut consider = |positions: Option<&Vec<usize>>| {
            for &i in positions.into_iter().flatten() {
                if scope.admits(&self.scopes[i]) {
                    picked.push(i);
                }
            }
        };
        consider(Some(&self.any_principal));
        consider(self.by_principal.get(scope.principal));
        for ancestor in &scope.principal_ancestors {
            consider(self.by_principal.get(*ancestor));
        }
        consider(self.by_principal_type.get(scope.principal.type_name()));
        picked.sort_unstable();
        picked.dedup();
        if picked.len() == self.policies.len() {
            return Arc::clone(&self.all);
        }
        if let Some(slice) = self.slices.get(&picked) {
            return slice;
        }
        let slice = PolicySet::from_policies(picked.iter().map(|&i| self.policies[i].clone()))
            .map(Arc::new)
            .unwrap_or_else(|_| Arc::clone(&self.all));
        self.slices.insert(picked, Arc::clone(&slice));
        slice
    }
}
