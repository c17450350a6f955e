//! Offline adapters: deciding requests from files instead of a gateway
//! (`check`: one request; `test`: the policy directory's test cases;
//! `diff`: the impact of a policy change). They call the same
//! `pipeline::decide` as the live adapters, in a mode that takes the
//! identity as given and charges, logs and records nothing.

pub mod check;
pub mod diff;
pub mod response_case;
pub mod test;
