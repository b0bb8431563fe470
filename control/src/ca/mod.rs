//! istiod's certificate authority: the CA API ztunnels call, the caller tokens it accepts, and
//! the root it signs with (rotated with an overlap).

mod authority;
#[cfg(test)]
mod fuzz;
mod service;
mod token;

pub use authority::{CertificateAuthority, DEFAULT_TTL, MAX_TTL, PlannedRoot, SignError};
pub use service::{CaService, CaShared, authenticate, authorize};
pub use token::{Claims, TokenError, TokenSigner, bearer};
