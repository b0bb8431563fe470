//! Conformance suites (Gateway API HTTPRoute, mTLS and authorization policy), written as data
//! and run against the simulator, the namespace cluster and kind.
//!
//! Empty until the conformance issue.
