//! Webhook signatures, against the Standard Webhooks test vector and across a rotation; delivery
//! leases.

use super::*;

#[test]
fn signatures_match_the_standard_webhooks_test_vector() {
    let keys = parse_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let sig = signature(
        &keys,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        r#"{"test": 2432232314}"#,
    );
    assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[test]
fn rotation_signs_with_every_secret() {
    let keys = parse_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_c2Vjb25k").unwrap();
    let sig = signature(&keys, "id", 1, "{}");
    assert_eq!(sig.split(' ').count(), 2);
    assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    assert!(parse_secrets("whsec_!!!").is_err());
}

#[test]
fn claimed_deliveries_stay_leased_past_the_slowest_answer() {
    // With instances sharing the store, a lease that ran out while an answer was still awaited
    // would let another instance send the same delivery again.
    for timeout in [
        Span::from_secs(10),
        Span::from_secs(300),
        Span::from_secs(3600),
    ] {
        let sending = Sending {
            timeout,
            ..Sending::default()
        };
        let webhooks = Webhooks::new(Vec::new(), &sending);
        assert!(
            webhooks.lease.millis() >= timeout.millis() + 30_000,
            "{timeout}"
        );
    }
}
