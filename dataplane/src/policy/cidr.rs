//! IP prefixes for source and destination IP matches.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address with a prefix length. Length 0 matches every address of the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub length: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR")]
    Address(String),
    #[error("prefix length {length} is too long for {address}")]
    Length { address: IpAddr, length: u32 },
}

impl Cidr {
    pub fn new(address: IpAddr, length: u32) -> Result<Self, CidrError> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if length > max {
            return Err(CidrError::Length { address, length });
        }
        Ok(Cidr {
            address,
            length: length as u8,
        })
    }

    /// A single host (/32 or /128).
    pub fn host(address: IpAddr) -> Self {
        let length = if address.is_ipv4() { 32 } else { 128 };
        Cidr { address, length }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.length))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.length))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError::Address(s.to_string());
        match s.split_once('/') {
            Some((ip, len)) => {
                let address: IpAddr = ip.parse().map_err(|_| bad())?;
                let length: u32 = len.parse().map_err(|_| bad())?;
                Cidr::new(address, length)
            }
            None => Ok(Cidr::host(s.parse().map_err(|_| bad())?)),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let host: Cidr = "10.0.0.5".parse().unwrap();
        assert_eq!(host.length, 32);
        assert!(host.contains("10.0.0.5".parse().unwrap()));
        assert!(!host.contains("10.0.0.6".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }
}
