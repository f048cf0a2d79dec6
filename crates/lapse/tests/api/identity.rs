//! Identity (SPEC §5): API keys, X-Actor, user JWTs, host-only and self-only rules.

use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use crate::helpers::*;

pub fn jwt(sub: &str, exp_from_now: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + exp_from_now;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({ "sub": sub, "exp": exp }),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn a_user_token_acts_only_as_its_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = As::Bearer(jwt("alice", 3600));
    let s = app
        .post(
            alice.clone(),
            "/v1/sessions",
            json!({ "id": "j1", "kind": "study" }),
        )
        .await
        .expect(201);
    assert_eq!(s["host"], "alice");
    app.post(
        alice.clone(),
        "/v1/sessions",
        json!({ "kind": "study", "host": "mallory" }),
    )
    .await
    .problem(403, "not_self");
    app.post(
        alice.clone(),
        "/v1/sessions/j1/participants",
        json!({ "user": "bob" }),
    )
    .await
    .problem(403, "not_self");

    let bob = As::Bearer(jwt("bob", 3600));
    app.get(bob.clone(), "/v1/sessions/j1")
        .await
        .problem(403, "forbidden");
    app.post(
        bob.clone(),
        "/v1/sessions/j1/participants",
        json!({ "user": "bob" }),
    )
    .await
    .expect(201);
    app.get(bob.clone(), "/v1/sessions/j1").await.expect(200);
    app.post_empty(bob.clone(), "/v1/sessions/j1/start")
        .await
        .problem(403, "not_host");
    app.get(bob.clone(), "/v1/events")
        .await
        .problem(403, "forbidden");
    app.delete(alice.clone(), "/v1/sessions/j1")
        .await
        .problem(403, "forbidden");
    let mine = app.get(bob, "/v1/sessions").await.expect(200);
    assert_eq!(mine["sessions"].as_array().unwrap().len(), 1);

    app.get(As::Bearer(jwt("alice", -600)), "/v1/sessions/j1")
        .await
        .problem(401, "unauthorized");
    app.delete(As::Admin, "/v1/sessions/j1").await.expect(204);
}

async fn a_service_key_acts_for_the_user_it_names(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("study", "svc", "alice", json!({})).await;
    app.post_empty(As::User("bob"), "/v1/sessions/svc/start")
        .await
        .problem(403, "not_host");
    app.post_empty(As::Service, "/v1/sessions/svc/start")
        .await
        .expect(200);
    app.delete(As::Service, "/v1/sessions/svc")
        .await
        .problem(403, "forbidden");
    app.get(As::Nobody, "/v1/sessions/svc")
        .await
        .problem(401, "unauthorized");
    app.get(As::Bearer("not-a-key".into()), "/v1/sessions/svc")
        .await
        .problem(401, "unauthorized");
    app.get(As::Cron, "/v1/sessions/svc")
        .await
        .problem(403, "forbidden");
}

async fn an_rs256_token_from_the_configured_public_key_is_accepted(backend: Backend) {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/fixtures");
    let config =
        format!("[auth]\njwt_rs256_public_key_file = \"{fixtures}/rs256-test-public.pem\"\n");
    let app = spawn_app_with(backend, Some(&config)).await;
    let private = std::fs::read(format!("{fixtures}/rs256-test-private.pem")).unwrap();
    let exp = chrono::Utc::now().timestamp() + 600;
    let token = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({ "sub": "rosa", "exp": exp }),
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    let s = app
        .post(
            As::Bearer(token.clone()),
            "/v1/sessions",
            json!({ "kind": "study" }),
        )
        .await
        .expect(201);
    assert_eq!(s["host"], "rosa");
    // A token whose claims were changed after signing is refused.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let claims = json!({ "sub": "root", "exp": exp }).to_string();
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
    let forged = As::Bearer(parts.join("."));
    app.get(forged, "/v1/sessions")
        .await
        .problem(401, "unauthorized");
}

async fn the_open_routes_need_no_credentials_and_describe_the_api(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.get(As::Nobody, "/admin").await;
    assert_eq!(admin.status, 200);
    assert!(admin.content_type.starts_with("text/html"));
    assert!(admin.text.contains("/v1/health") && admin.text.contains("dry_run=true"));
    app.get(As::Nobody, "/livez").await.expect(200);
    app.get(As::Nobody, "/readyz").await.expect(200);

    let doc = app.get(As::Nobody, "/openapi.json").await.expect(200);
    assert_eq!(doc["openapi"], "3.1.0");
    // Every route of SPEC §6 is described, with the methods it serves.
    let routes = [
        ("post", "/v1/sessions"),
        ("get", "/v1/sessions"),
        ("get", "/v1/sessions/{id}"),
        ("patch", "/v1/sessions/{id}"),
        ("delete", "/v1/sessions/{id}"),
        ("post", "/v1/sessions/{id}/start"),
        ("post", "/v1/sessions/{id}/end"),
        ("post", "/v1/sessions/{id}/cancel"),
        ("post", "/v1/sessions/{id}/reopen"),
        ("post", "/v1/sessions/{id}/participants"),
        ("delete", "/v1/sessions/{id}/participants/{user}"),
        ("post", "/v1/sessions/{id}/heartbeat"),
        ("post", "/v1/heartbeats"),
        ("post", "/v1/sessions/{id}/activity"),
        ("get", "/v1/sessions/{id}/summary"),
        ("get", "/v1/sessions/{id}/explain"),
        ("get", "/v1/sessions/{id}/events"),
        ("get", "/v1/sessions/{id}/export"),
        ("get", "/v1/events"),
        ("get", "/v1/users/{user}/notifications"),
        ("post", "/v1/users/{user}/notifications/{nid}/read"),
        ("post", "/v1/sweep"),
        ("get", "/v1/sweep"),
        ("get", "/v1/kinds"),
        ("get", "/v1/stats"),
        ("get", "/v1/health"),
        ("get", "/v1/webhooks/endpoints"),
        ("get", "/v1/webhooks/deliveries"),
        ("post", "/v1/webhooks/deliveries/{id}/retry"),
        ("get", "/v1/admin/clock"),
        ("post", "/v1/admin/clock"),
        ("post", "/v1/policy/preview"),
        ("post", "/v1/admin/config/reload"),
        ("get", "/livez"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/admin"),
    ];
    for (method, path) in routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not described"
        );
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        33,
        "and nothing that is not served"
    );

    // Precise enough to generate a client from: the server's own constraints.
    let schemas = &doc["components"]["schemas"];
    let kinds = schemas["Kind"]["enum"]
        .as_array()
        .expect("the kinds are listed");
    assert!(kinds.contains(&json!("study")), "{kinds:?}");
    assert_eq!(schemas["SessionId"]["pattern"], "^[A-Za-z0-9._:-]{1,128}$");
    assert_eq!(
        doc["paths"]["/v1/sessions/{id}"]["get"]["parameters"][0]["schema"]["$ref"],
        "#/components/schemas/SessionId"
    );
    let codes = schemas["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap();
    for code in [
        "database_unavailable",
        "rate_limited",
        "invalid_config",
        "rollout_refused",
    ] {
        assert!(codes.contains(&json!(code)), "{code} is a problem code");
    }
    assert!(
        doc["paths"]["/v1/sessions"]["post"]["responses"]["503"]["headers"]["Retry-After"]
            .is_object()
    );
    // Every field the document calls required is in a session as served, and nothing else.
    let s = app
        .post(
            As::Admin,
            "/v1/sessions",
            json!({ "kind": "study", "host": "ann" }),
        )
        .await
        .expect(201);
    let required = schemas["Session"]["required"].as_array().unwrap();
    for field in required {
        assert!(s.get(field.as_str().unwrap()).is_some(), "{field} in {s}");
    }
    for field in s.as_object().unwrap().keys() {
        assert!(
            schemas["Session"]["properties"].get(field).is_some(),
            "`{field}` is served but not described"
        );
    }
}

async fn a_cron_key_sweeps_and_reads_stats_and_health_only(backend: Backend) {
    let config = "[[auth.api_keys]]\nname = \"nightly\"\nrole = \"cron\"\nkey_sha256 = \"e4e5219a9a7e2594c2d6c2bae2142876bf654aa945f485d94094c9e3044168e9\"\n";
    let app = spawn_app_with(backend, Some(config)).await;
    let cron = || As::Bearer("cron-key".to_string());
    app.post_empty(cron(), "/v1/sweep").await.expect(200);
    app.get(cron(), "/v1/stats").await.expect(200);
    app.get(cron(), "/v1/health").await.expect(200);
    app.get(cron(), "/v1/kinds").await.problem(403, "forbidden");
    app.get(cron(), "/v1/sessions")
        .await
        .problem(403, "forbidden");
    app.get(cron(), "/v1/events")
        .await
        .problem(403, "forbidden");
    app.post(
        cron(),
        "/v1/sessions",
        json!({ "kind": "study", "host": "a" }),
    )
    .await
    .problem(403, "forbidden");
}

both_stores!(
    a_cron_key_sweeps_and_reads_stats_and_health_only,
    the_open_routes_need_no_credentials_and_describe_the_api,
    an_rs256_token_from_the_configured_public_key_is_accepted,
    a_user_token_acts_only_as_its_user,
    a_service_key_acts_for_the_user_it_names,
    pages_of_the_configured_origins_may_call_lapse_from_a_browser,
);

async fn pages_of_the_configured_origins_may_call_lapse_from_a_browser(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Some("[server]\ncors_origins = [\"https://app.example\"]\n"),
    )
    .await;
    // The browser asks first (a preflight) for a POST with a bearer token and a JSON body.
    let preflight = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/sessions", app.base),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed = |r: &reqwest::Response, h: &str| {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_lowercase()
    };
    assert_eq!(
        allowed(&preflight, "access-control-allow-origin"),
        "https://app.example"
    );
    assert!(allowed(&preflight, "access-control-allow-headers").contains("idempotency-key"));
    assert!(allowed(&preflight, "access-control-allow-methods").contains("post"));

    // The answer itself names the origin and lets the page read Retry-After and the id.
    let answer = app
        .client
        .get(format!("{}/v1/kinds", app.base))
        .header("origin", "https://app.example")
        .header("x-api-key", crate::helpers::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        allowed(&answer, "access-control-allow-origin"),
        "https://app.example"
    );
    assert!(allowed(&answer, "access-control-expose-headers").contains("retry-after"));

    // Any other page is not let in.
    let stranger = app
        .client
        .get(format!("{}/v1/kinds", app.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        stranger
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
