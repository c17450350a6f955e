//! Data residency: an org may restrict the regions its data is processed in
//! (the `allowed_regions` attribute of its Cedar `Org` entity); a request
//! from a member through a gateway serving another region is refused. It
//! reads the snapshot's entities and the request's gateway region, which
//! only the gateway or Portcullis's configuration sets.

use std::collections::HashMap;

use cedar_policy::{Entities, EntityUid, EvalResult};
use serde::Deserialize;

use crate::authn::Identity;

/// The org attribute listing the regions an org's data may be processed in.
pub const ALLOWED_REGIONS_ATTR: &str = "allowed_regions";

/// Orgs that restrict their regions, with the regions (sorted), found once
/// per snapshot so that a request from an unrestricted org costs a lookup
/// (two a request: the asserted org and the ancestors). foldhash, seeded
/// per map, as for the quota configuration's maps (`quota/config`): the
/// keys come from the snapshot, not the client.
pub type OrgRegions = HashMap<EntityUid, Vec<String>, foldhash::fast::RandomState>;

/// Every `Org` entity with `allowed_regions`.
pub fn org_regions(entities: &Entities) -> OrgRegions {
    let mut out = OrgRegions::default();
    for e in entities.iter() {
        if e.uid().type_name().basename() != "Org" {
            continue;
        }
        if let Some(Ok(EvalResult::Set(set))) = e.attr(ALLOWED_REGIONS_ATTR) {
            let regions = set
                .iter()
                .filter_map(|v| match v {
                    EvalResult::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            out.insert(e.uid(), regions);
        }
    }
    out
}

/// `Ok` when every org of the caller that restricts regions allows
/// `region`; else the client-facing explanation. A restricted org and a
/// gateway that does not know its region: refused (it cannot be shown to
/// comply).
pub fn check(
    restricted: &OrgRegions,
    entities: &Entities,
    identity: &Identity,
    region: Option<&str>,
) -> Result<(), String> {
    if restricted.is_empty() {
        return Ok(());
    }
    // The caller's orgs: those its credentials assert and its ancestors in
    // entities.json.
    let asserted = identity.parents.iter();
    let known = entities
        .ancestors(&identity.principal)
        .into_iter()
        .flatten();
    for org in asserted.chain(known) {
        let Some(allowed) = restricted.get(org) else {
            continue;
        };
        let org_id = org.id().unescaped();
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

/// Where the gateway's region comes from: fixed in this configuration, or
/// a header the gateway itself sets (and overwrites, so a client cannot
/// choose it; see deploy/envoy.yaml). With neither, orgs that restrict
/// their regions are refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResidencyConfig {
    /// The region, e.g. `eu-west-1`.
    pub region: Option<String>,
    /// A lower-case header the gateway sets to its region (overrides
    /// `region` when present).
    pub region_header: Option<String>,
}

impl ResidencyConfig {
    /// The gateway's region for a request with these headers.
    pub fn region_of(&self, headers: &crate::request::Headers) -> Option<String> {
        self.region_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .or_else(|| self.region.clone())
    }
}

impl ResidencyConfig {
    /// Every problem with this section, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(h) = &self.region_header {
            if h.is_empty()
                || h.bytes()
                    .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
            {
                problems.push(
                    "residency.region_header: a lower-case header name, e.g. x-gateway-region"
                        .into(),
                );
            }
            if h.starts_with("x-portcullis-") {
                problems.push("residency.region_header: x-portcullis-* headers are Portcullis's own; use another name".into());
            }
        }
        problems
    }
}
