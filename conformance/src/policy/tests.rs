use super::*;
use crate::targets::Answer;
use crate::targets::Response;

fn denial(component: Decider) -> Denial {
    Denial {
        component,
        host: "h".into(),
        decision: "denied: x".into(),
    }
}

#[test]
fn the_decider_comes_from_the_answer_then_the_denials_logged() {
    let forbidden = Answer::Response(Response {
        status: 403,
        headers: Vec::new(),
        body: RBAC_DENIED.into(),
    });
    assert_eq!(observed_decider(&forbidden, &[]), Some(Decider::Waypoint));
    let unavailable = Answer::Response(Response {
        status: 503,
        headers: Vec::new(),
        body: "upstream connect error or disconnect/reset before headers\n".into(),
    });
    assert_eq!(
        observed_decider(&unavailable, &[denial(Decider::Ztunnel)]),
        Some(Decider::Ztunnel)
    );
    assert_eq!(
        observed_decider(
            &Answer::Refused,
            &[denial(Decider::Ztunnel), denial(Decider::Waypoint)]
        ),
        Some(Decider::Waypoint)
    );
    assert_eq!(observed_decider(&Answer::Refused, &[]), None);
    assert_eq!(
        observed_outcome(&unavailable, Protocol::Http),
        Ok(Outcome::Unavailable)
    );
    assert_eq!(
        observed_outcome(&Answer::Echoed, Protocol::Tcp),
        Ok(Outcome::Allowed)
    );
    let not_echo = Answer::Response(Response {
        status: 200,
        headers: Vec::new(),
        body: "hello".into(),
    });
    assert!(observed_outcome(&not_echo, Protocol::Http).is_err());
}

#[test]
fn outcomes_read_as_numbers_or_words() {
    let o: Vec<Outcome> = serde_yaml::from_str("[allowed, reset, 403, \"401\", 503]").unwrap();
    assert_eq!(o, Outcome::ALL.to_vec());
    assert!(serde_yaml::from_str::<Outcome>("404").is_err());
}
