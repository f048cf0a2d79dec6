//! Webhook signatures, against the Standard Webhooks test vector and across a rotation.

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
