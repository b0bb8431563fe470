//! `istio.security.Authorization` ↔ the model. As upstream: unknown scope or action numbers
//! are errors (NACKed); an unusable IP entry inside a match is dropped silently.

use super::ConvertError;
use super::proto::istio::security as pb;
use super::workload::{ip_from_bytes, ip_to_bytes};
use crate::policy::{
    Action, Authorization, Cidr, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};

fn strings(list: &[pb::StringMatch]) -> Vec<StringMatch> {
    use pb::string_match::MatchType;
    list.iter()
        .filter_map(|m| match &m.match_type {
            Some(MatchType::Exact(s)) => Some(StringMatch::Exact(s.clone())),
            Some(MatchType::Prefix(s)) => Some(StringMatch::Prefix(s.clone())),
            Some(MatchType::Suffix(s)) => Some(StringMatch::Suffix(s.clone())),
            Some(MatchType::Presence(())) => Some(StringMatch::Presence),
            None => None,
        })
        .collect()
}

fn strings_to_proto(list: &[StringMatch]) -> Vec<pb::StringMatch> {
    use pb::string_match::MatchType;
    list.iter()
        .map(|m| pb::StringMatch {
            match_type: Some(match m {
                StringMatch::Exact(s) => MatchType::Exact(s.clone()),
                StringMatch::Prefix(s) => MatchType::Prefix(s.clone()),
                StringMatch::Suffix(s) => MatchType::Suffix(s.clone()),
                StringMatch::Presence => MatchType::Presence(()),
            }),
        })
        .collect()
}

fn cidrs(list: &[pb::Address]) -> Vec<Cidr> {
    list.iter()
        .filter_map(|a| {
            let ip = ip_from_bytes("address", &a.address).ok()?;
            Cidr::new(ip, a.length).ok()
        })
        .collect()
}

fn cidrs_to_proto(list: &[Cidr]) -> Vec<pb::Address> {
    list.iter()
        .map(|c| pb::Address {
            address: ip_to_bytes(c.address),
            length: u32::from(c.length),
        })
        .collect()
}

fn ports(list: &[u32]) -> Vec<u16> {
    list.iter().filter_map(|p| u16::try_from(*p).ok()).collect()
}

fn accounts(list: &[pb::ServiceAccountMatch]) -> Vec<ServiceAccountMatch> {
    list.iter()
        .map(|a| ServiceAccountMatch {
            namespace: a.namespace.clone(),
            service_account: a.service_account.clone(),
        })
        .collect()
}

fn accounts_to_proto(list: &[ServiceAccountMatch]) -> Vec<pb::ServiceAccountMatch> {
    list.iter()
        .map(|a| pb::ServiceAccountMatch {
            namespace: a.namespace.clone(),
            service_account: a.service_account.clone(),
        })
        .collect()
}

fn match_from_proto(m: &pb::Match) -> Match {
    Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: cidrs(&m.source_ips),
        not_source_ips: cidrs(&m.not_source_ips),
        destination_ips: cidrs(&m.destination_ips),
        not_destination_ips: cidrs(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
    }
}

fn match_to_proto(m: &Match) -> pb::Match {
    let ports = |list: &[u16]| list.iter().map(|p| u32::from(*p)).collect();
    pb::Match {
        namespaces: strings_to_proto(&m.namespaces),
        not_namespaces: strings_to_proto(&m.not_namespaces),
        principals: strings_to_proto(&m.principals),
        not_principals: strings_to_proto(&m.not_principals),
        source_ips: cidrs_to_proto(&m.source_ips),
        not_source_ips: cidrs_to_proto(&m.not_source_ips),
        destination_ips: cidrs_to_proto(&m.destination_ips),
        not_destination_ips: cidrs_to_proto(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        service_accounts: accounts_to_proto(&m.service_accounts),
        not_service_accounts: accounts_to_proto(&m.not_service_accounts),
        extensions: Vec::new(),
    }
}

/// Decodes one Authorization resource.
pub fn authorization_from_proto(a: pb::Authorization) -> Result<Authorization, ConvertError> {
    let scope = match pb::Scope::try_from(a.scope) {
        Ok(pb::Scope::Global) => Scope::Global,
        Ok(pb::Scope::Namespace) => Scope::Namespace,
        Ok(pb::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => {
            return Err(ConvertError(format!(
                "scope: unknown enum value {}",
                a.scope
            )));
        }
    };
    let action = match pb::Action::try_from(a.action) {
        Ok(pb::Action::Allow) => Action::Allow,
        Ok(pb::Action::Deny) => Action::Deny,
        Err(_) => {
            return Err(ConvertError(format!(
                "action: unknown enum value {}",
                a.action
            )));
        }
    };
    Ok(Authorization {
        name: a.name,
        namespace: a.namespace,
        scope,
        action,
        dry_run: a.dry_run,
        rules: a
            .rules
            .iter()
            .map(|r| Rule {
                clauses: r
                    .clauses
                    .iter()
                    .map(|c| Clause {
                        matches: c.matches.iter().map(match_from_proto).collect(),
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// Encodes a policy as istiod sends it.
pub fn authorization_to_proto(a: &Authorization) -> pb::Authorization {
    pb::Authorization {
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        scope: match a.scope {
            Scope::Global => pb::Scope::Global,
            Scope::Namespace => pb::Scope::Namespace,
            Scope::WorkloadSelector => pb::Scope::WorkloadSelector,
        } as i32,
        action: match a.action {
            Action::Allow => pb::Action::Allow,
            Action::Deny => pb::Action::Deny,
        } as i32,
        dry_run: a.dry_run,
        rules: a
            .rules
            .iter()
            .map(|r| pb::Rule {
                clauses: r
                    .clauses
                    .iter()
                    .map(|c| pb::Clause {
                        matches: c.matches.iter().map(match_to_proto).collect(),
                    })
                    .collect(),
            })
            .collect(),
        extensions: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localconfig::LocalConfig;
    use prost::Message;

    #[test]
    fn policies_round_trip_through_protobuf() {
        let config = LocalConfig::parse(
            r#"
policies:
- name: strict
  namespace: shop
  scope: WorkloadSelector
  action: Deny
  dryRun: true
  rules:
  - - - notPrincipals: [!Presence []]
        destinationPorts: [8080]
        notDestinationPorts: [9090]
      - namespaces: [!Prefix sh, !Suffix op, !Exact shop]
        sourceIps: ["10.0.0.0/8", "fd00::/8"]
        serviceAccounts: [{namespace: shop, serviceAccount: web}]
    - []
  - []
"#,
        )
        .unwrap();
        let policy = &config.policies[0];
        let bytes = authorization_to_proto(policy).encode_to_vec();
        let back = authorization_from_proto(pb::Authorization::decode(bytes.as_slice()).unwrap());
        assert_eq!(back.as_ref(), Ok(policy));
    }

    #[test]
    fn unknown_action_or_scope_is_an_error_but_bad_addresses_are_dropped() {
        let bad_action = pb::Authorization {
            action: 7,
            ..pb::Authorization::default()
        };
        assert_eq!(
            authorization_from_proto(bad_action),
            Err(ConvertError("action: unknown enum value 7".into()))
        );
        let bad_scope = pb::Authorization {
            scope: 3,
            ..pb::Authorization::default()
        };
        assert!(authorization_from_proto(bad_scope).is_err());

        let m = pb::Match {
            source_ips: vec![
                pb::Address {
                    address: vec![1, 2, 3],
                    length: 8,
                },
                pb::Address {
                    address: vec![10, 0, 0, 0],
                    length: 40,
                },
                pb::Address {
                    address: vec![10, 0, 0, 0],
                    length: 8,
                },
            ],
            ..pb::Match::default()
        };
        let a = pb::Authorization {
            rules: vec![pb::Rule {
                clauses: vec![pb::Clause { matches: vec![m] }],
            }],
            ..pb::Authorization::default()
        };
        let policy = authorization_from_proto(a).unwrap();
        let ips = &policy.rules[0].clauses[0].matches[0].source_ips;
        assert_eq!(ips, &vec!["10.0.0.0/8".parse::<Cidr>().unwrap()]);
    }
}
