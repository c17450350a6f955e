//! Data residency: an org may restrict the regions its data is processed in
//! (the `allowed_regions` attribute of its Cedar `Org` entity); a request
//! from a member through a gateway serving another region is refused. It
//! reads the snapshot's entities and the request's gateway region, which
//! only the gateway or Portcullis's configuration sets.

use cedar_policy::{EntityUid, EvalResult};

use crate::authn::Identity;
use crate::snapshot::Snapshot;

/// The org attribute listing the regions an org's data may be processed in.
pub const ALLOWED_REGIONS_ATTR: &str = "allowed_regions";

/// `Ok` when every org of the caller that restricts regions allows
/// `region`; else the client-facing explanation. A restricted org and a
/// gateway that does not know its region: refused (it cannot be shown to
/// comply).
pub fn check(snapshot: &Snapshot, identity: &Identity, region: Option<&str>) -> Result<(), String> {
    for org in orgs(snapshot, identity) {
        let Some(allowed) = allowed_regions(snapshot, &org) else {
            continue;
        };
        let org_id = org.id().unescaped().to_string();
        match region {
            Some(region) if allowed.iter().any(|r| r == region) => {}
            Some(region) => {
                return Err(format!(
                    "org '{org_id}' allows its data to be processed only in {}; this gateway serves {region}: send the request through a gateway in an allowed region",
                    allowed.join(", ")
                ))
            }
            None => {
                return Err(format!(
                    "org '{org_id}' allows its data to be processed only in {}; this gateway does not declare its region, so the request is refused",
                    allowed.join(", ")
                ))
            }
        }
    }
    Ok(())
}

/// The caller's orgs: those its credentials assert and those entities.json
/// gives it.
fn orgs(snapshot: &Snapshot, identity: &Identity) -> Vec<EntityUid> {
    let is_org = |p: &EntityUid| p.type_name().basename() == "Org";
    let mut out: Vec<EntityUid> = identity
        .parents
        .iter()
        .filter(|p| is_org(p))
        .cloned()
        .collect();
    if let Some(principal) = snapshot.entities.get(&identity.principal) {
        let (_, _, parents) = principal.clone().into_inner();
        out.extend(parents.into_iter().filter(is_org));
    }
    out.sort();
    out.dedup();
    out
}

fn allowed_regions(snapshot: &Snapshot, org: &EntityUid) -> Option<Vec<String>> {
    let entity = snapshot.entities.get(org)?;
    match entity.attr(ALLOWED_REGIONS_ATTR)? {
        Ok(EvalResult::Set(set)) => Some(
            set.iter()
                .filter_map(|v| match v {
                    EvalResult::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}
