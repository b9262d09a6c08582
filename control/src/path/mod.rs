//! Direct paths between members: authenticated probe frames ([`frame`]) and the per-peer
//! choice of the best candidate address ([`selector`]).

pub mod frame;
pub mod selector;
