//! The node agent's tests. Those marked so need root, `ip` and `nft`: without them they print
//! `SKIP …` and pass, unless `E2E_REQUIRED=1`, which makes that a failure.

mod agent;
mod cni;
mod flow;
mod rules;
mod support;
