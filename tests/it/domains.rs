//! Organisations' domains and DNS TXT verification (seed 002, SPEC §4.1).

use std::time::Duration;

use serde_json::{Value, json};

use crate::dns::Dns;
use crate::harness::*;

const PASSWORD: &str = "correct horse battery";

/// Gatehouse resolving against `dns`, with organisations 7 (ada: admin, bob: member) and 8
/// (carol: admin).
async fn start(
    upstream: &Upstream,
    dns: std::net::SocketAddr,
    adjust: impl FnOnce(&mut gatehouse::config::Config),
) -> Gatehouse {
    let gh = Gatehouse::start_with(upstream, |c| {
        c.domains.resolver = Some(dns);
        adjust(c);
    })
    .await;
    for name in ["ada", "bob", "carol"] {
        gh.create_user(json!({"userName": name, "password": PASSWORD}))
            .await;
    }
    for (id, admin) in [(7, "ada"), (8, "carol")] {
        assert_eq!(
            gh.admin(
                "POST",
                "/admin/v1/organizations",
                Some(json!({"id": id, "name": format!("Org {id}")}))
            )
            .await
            .0,
            201
        );
        let path = format!("/admin/v1/organizations/{id}/members");
        assert_eq!(
            gh.admin(
                "POST",
                &path,
                Some(json!({"userName": admin, "role": "admin"}))
            )
            .await
            .0,
            201
        );
    }
    let member = json!({"userName": "bob", "role": "member"});
    assert_eq!(
        gh.admin("POST", "/admin/v1/organizations/7/members", Some(member))
            .await
            .0,
        201
    );
    gh
}

async fn call(
    gh: &Gatehouse,
    method: &str,
    user: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http1_client()
        .request(method, gh.http_url(path))
        .basic_auth(user, Some(PASSWORD));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn create(gh: &Gatehouse, user: &str, org: i64, domain: &str) -> (u16, Value) {
    call(
        gh,
        "POST",
        user,
        &format!("/v1/organizations/{org}/domains"),
        Some(json!({"domain": domain, "authenticationMethod": "sso"})),
    )
    .await
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[tokio::test]
async fn generate_code_answers_the_seed_domain_object_field_by_field() {
    let upstream = Upstream::start().await;
    let dns = closed_port().await;
    let gh = start(&upstream, dns, |_| {}).await;
    let (status, created) = create(&gh, "ada", 7, "Acme.Example").await;
    assert_eq!(status, 201, "{created}");
    let id = created["domainId"].as_i64().unwrap();
    let (status, domain) = call(
        &gh,
        "POST",
        "ada",
        &format!("/v1/organizations/7/domains/{id}/generate-code"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{domain}");

    let golden: Value =
        serde_json::from_str(include_str!("../fixtures/domain_object.json")).unwrap();
    let golden = golden.as_object().unwrap();
    let got = domain.as_object().unwrap();
    let mut golden_keys: Vec<&String> = golden.keys().collect();
    let mut got_keys: Vec<&String> = got.keys().collect();
    golden_keys.sort();
    got_keys.sort();
    assert_eq!(got_keys, golden_keys, "exactly the seed's 13 fields");
    for (key, value) in golden {
        assert_eq!(
            json_type(&got[key]),
            json_type(value),
            "{key}: {}",
            got[key]
        );
    }
    assert_eq!(domain["domain"], "acme.example");
    assert_eq!(domain["organizationId"], 7);
    assert_eq!(domain["ownerOrganizationId"], 7);
    assert_eq!(domain["verificationMethod"], "dns-txt");
    assert_eq!(domain["isVerified"], false);
    assert_eq!(domain["createdBy"], "ada");
    let code = domain["verificationCode"].as_str().unwrap();
    let suffix = code.strip_prefix("gatehouse-verification=").unwrap();
    assert!(
        suffix.len() >= 26
            && suffix
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
        "{code}"
    );
    for field in ["created", "modified", "verificationCodeExpires"] {
        let text = domain[field].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{field}: {text}"
        );
        assert!(text.ends_with('Z'), "{field} in UTC: {text}");
    }
    let expires = time::OffsetDateTime::parse(
        domain["verificationCodeExpires"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let in_days = (expires.unix_timestamp() - crate::keys::now()) as f64 / 86400.0;
    assert!((6.9..=7.01).contains(&in_days), "{in_days}");
    // A new code replaces the old one.
    let (_, again) = call(
        &gh,
        "POST",
        "ada",
        &format!("/v1/organizations/7/domains/{id}/generate-code"),
        None,
    )
    .await;
    assert_ne!(again["verificationCode"], domain["verificationCode"]);
}

#[tokio::test]
async fn txt_verification_against_a_real_dns_server() {
    let upstream = Upstream::start().await;
    let dns_addr = closed_port().await;
    let data = tempfile::tempdir().unwrap();
    let store_path = data.path().join("store");
    let path_for_config = store_path.clone();
    let gh = start(&upstream, dns_addr, move |c| c.store.path = path_for_config).await;
    let (_, created) = create(&gh, "ada", 7, "acme.example").await;
    let id = created["domainId"].as_i64().unwrap();
    let verify = format!("/v1/organizations/7/domains/{id}/verify");
    let (_, domain) = call(
        &gh,
        "POST",
        "ada",
        &format!("/v1/organizations/7/domains/{id}/generate-code"),
        None,
    )
    .await;
    let code = domain["verificationCode"].as_str().unwrap().to_owned();
    let record = "_gatehouse-challenge.acme.example";

    // No record at all.
    let dns = Dns::start_at(dns_addr, &[("other.example", &["x"])]).await;
    let (status, problem) = call(&gh, "POST", "ada", &verify, None).await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains(record),
        "{problem}"
    );
    drop(dns);

    // A record with the wrong value.
    let dns = Dns::start_at(dns_addr, &[(record, &["gatehouse-verification=WRONG"])]).await;
    let (status, problem) = call(&gh, "POST", "ada", &verify, None).await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains(record));
    drop(dns);

    // The right value among several TXT records and strings.
    let dns = Dns::start_at(
        dns_addr,
        &[
            (record, &["v=spf1 -all"]),
            (record, &["unrelated", "strings"]),
            (record, &[code.as_str()]),
        ],
    )
    .await;
    let (status, verified) = call(&gh, "POST", "ada", &verify, None).await;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["isVerified"], true);
    drop(dns);
    let (_, read) = call(
        &gh,
        "GET",
        "ada",
        &format!("/v1/organizations/7/domains/{id}"),
        None,
    )
    .await;
    assert_eq!(read["isVerified"], true);
    let names = gh.audit_events(20).await;
    assert!(
        names.iter().any(|n| n == "domain.code.generated")
            && names.iter().any(|n| n == "domain.verified"),
        "{names:?}"
    );

    // Persisted: the store read again from disk after the server is gone.
    gh.stop().await;
    let mut reopened = gatehouse::store::sled::SledStore::open(&store_path);
    for _ in 0..100 {
        if reopened.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        reopened = gatehouse::store::sled::SledStore::open(&store_path);
    }
    use gatehouse::store::Store;
    let stored = reopened.unwrap().domain(7, id).await.unwrap().unwrap();
    assert!(stored.is_verified);
}

#[tokio::test]
async fn expired_code_never_verifies() {
    let upstream = Upstream::start().await;
    let dns_addr = closed_port().await;
    let gh = start(&upstream, dns_addr, |c| {
        c.domains.code_ttl = Duration::from_secs(1)
    })
    .await;
    let (_, created) = create(&gh, "ada", 7, "late.example").await;
    let id = created["domainId"].as_i64().unwrap();
    let (_, domain) = call(
        &gh,
        "POST",
        "ada",
        &format!("/v1/organizations/7/domains/{id}/generate-code"),
        None,
    )
    .await;
    let code = domain["verificationCode"].as_str().unwrap().to_owned();
    let _dns = Dns::start_at(
        dns_addr,
        &[("_gatehouse-challenge.late.example", &[code.as_str()])],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, problem) = call(
        &gh,
        "POST",
        "ada",
        &format!("/v1/organizations/7/domains/{id}/verify"),
        None,
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn a_domain_verified_by_one_organization_cannot_be_claimed_by_another() {
    let upstream = Upstream::start().await;
    let dns_addr = closed_port().await;
    let gh = start(&upstream, dns_addr, |_| {}).await;
    // Both claim it before anyone verifies.
    let (_, ours) = create(&gh, "ada", 7, "shared.example").await;
    let (status, theirs) = create(&gh, "carol", 8, "shared.example").await;
    assert_eq!(status, 201);
    let our_id = ours["domainId"].as_i64().unwrap();
    let their_id = theirs["domainId"].as_i64().unwrap();
    let (_, their_code) = call(
        &gh,
        "POST",
        "carol",
        &format!("/v1/organizations/8/domains/{their_id}/generate-code"),
        None,
    )
    .await;
    let (_, ours) = call(
        &gh,
        "POST",
        "ada",
        &format!("/v1/organizations/7/domains/{our_id}/generate-code"),
        None,
    )
    .await;
    let code = ours["verificationCode"].as_str().unwrap().to_owned();
    let _dns = Dns::start_at(
        dns_addr,
        &[("_gatehouse-challenge.shared.example", &[code.as_str()])],
    )
    .await;
    assert_eq!(
        call(
            &gh,
            "POST",
            "ada",
            &format!("/v1/organizations/7/domains/{our_id}/verify"),
            None
        )
        .await
        .0,
        200
    );

    // Their record is untouched by our verification, and they can no longer verify or re-add it.
    let (_, theirs_now) = call(
        &gh,
        "GET",
        "carol",
        &format!("/v1/organizations/8/domains/{their_id}"),
        None,
    )
    .await;
    assert_eq!(theirs_now["isVerified"], false);
    assert_eq!(
        theirs_now["verificationCode"],
        their_code["verificationCode"]
    );
    assert_eq!(create(&gh, "carol", 8, "SHARED.example.").await.0, 409);
    assert_eq!(
        create(&gh, "ada", 7, "shared.example").await.0,
        409,
        "the same name twice in one organization"
    );
}

#[tokio::test]
async fn only_organization_admins_manage_domains() {
    let upstream = Upstream::start().await;
    let gh = start(&upstream, closed_port().await, |_| {}).await;
    let (_, created) = create(&gh, "ada", 7, "acme.example").await;
    let id = created["domainId"].as_i64().unwrap();
    for (user, org, expected) in [("bob", 7, 403), ("carol", 7, 403), ("ada", 9, 404)] {
        assert_eq!(
            call(
                &gh,
                "GET",
                user,
                &format!("/v1/organizations/{org}/domains"),
                None
            )
            .await
            .0,
            expected,
            "{user} {org}"
        );
        assert_eq!(
            create(&gh, user, org, "new.example").await.0,
            expected,
            "{user} {org}"
        );
        let generate = format!("/v1/organizations/{org}/domains/{id}/generate-code");
        assert_eq!(
            call(&gh, "POST", user, &generate, None).await.0,
            expected,
            "{user} {org}"
        );
    }
    assert_eq!(
        call(&gh, "GET", "ada", "/v1/organizations/7/domains/999", None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(
            &gh,
            "POST",
            "ada",
            "/v1/organizations/7/domains/999/verify",
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(&gh, "GET", "ada", "/v1/organizations/x/domains", None)
            .await
            .0,
        400
    );
    assert_eq!(
        call(&gh, "GET", "ada", "/v1/organizations/7/domains/1.5", None)
            .await
            .0,
        400
    );
    assert_eq!(
        call(
            &gh,
            "POST",
            "ada",
            "/v1/organizations/7/domains/abc/generate-code",
            None
        )
        .await
        .0,
        400
    );
    let anonymous = http1_client()
        .get(gh.http_url("/v1/organizations/7/domains"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let (status, list) = call(&gh, "GET", "ada", "/v1/organizations/7/domains", None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        call(
            &gh,
            "DELETE",
            "bob",
            &format!("/v1/organizations/7/domains/{id}"),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            &gh,
            "DELETE",
            "ada",
            &format!("/v1/organizations/7/domains/{id}"),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        call(
            &gh,
            "GET",
            "ada",
            &format!("/v1/organizations/7/domains/{id}"),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn domain_names_are_validated_and_nothing_is_stored_for_bad_ones() {
    let upstream = Upstream::start().await;
    let gh = start(&upstream, closed_port().await, |_| {}).await;
    for bad in [
        "",
        "localhost",
        "192.0.2.1",
        "[2001:db8::1]",
        "a..example",
        "-bad.example",
        "under_score.example",
        &format!("{}.example", "a".repeat(64)),
    ] {
        let (status, problem) = create(&gh, "ada", 7, bad).await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }
    let (status, _) = call(
        &gh,
        "POST",
        "ada",
        "/v1/organizations/7/domains",
        Some(json!({"authenticationMethod": "sso"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, created) = create(&gh, "ada", 7, "Bücher.Example").await;
    assert_eq!(status, 201);
    assert_eq!(created["domain"], "xn--bcher-kva.example");
    let (_, list) = call(&gh, "GET", "ada", "/v1/organizations/7/domains", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// A domain the bootstrap file declares would be added again (verified, if declared so) at the
/// next start: an organisation admin's DELETE is 409 and the domain stays, until the operator takes
/// it out of the file. The file's path is not shown to the organisation admin.
async fn declared_domains_are_kept_until_removed_from_the_bootstrap_file(
    backend: crate::mfa::Backend,
) {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.toml");
    let declare = |domains: &str| {
        format!(
            "[[users]]\nuser_name = \"ada\"\npassword_hash = \"{}\"\n\
             [[organizations]]\nid = 7\nname = \"Acme\"\nmembers = [{{ user_name = \"ada\", role = \"admin\" }}]\n{domains}",
            gatehouse::auth::secret::hash_password(PASSWORD).unwrap()
        )
    };
    std::fs::write(
        &file,
        declare("[[domains]]\norganization_id = 7\ndomain = \"Acme.Example\"\nverified = true\n"),
    )
    .unwrap();
    let (gh, _db) = crate::mfa::start_on(&upstream, backend, |c| {
        c.bootstrap.file = Some(file.clone())
    })
    .await;
    let (status, list) = call(&gh, "GET", "ada", "/v1/organizations/7/domains", None).await;
    assert_eq!(status, 200, "{list}");
    let declared = list[0]["domainId"].as_i64().unwrap();
    let item = format!("/v1/organizations/7/domains/{declared}");

    let (status, problem) = call(&gh, "DELETE", "ada", &item, None).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("declared-in-bootstrap"),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("acme.example") && detail.contains("bootstrap file"),
        "{detail}"
    );
    assert!(
        !detail.contains(&dir.path().display().to_string()),
        "{detail}"
    );
    let (status, kept) = call(&gh, "GET", "ada", &item, None).await;
    assert_eq!(status, 200);
    assert_eq!(kept["isVerified"], true);

    // A domain the file does not declare is deleted as before.
    let (status, other) = create(&gh, "ada", 7, "other.example").await;
    assert_eq!(status, 201, "{other}");
    let other = format!("/v1/organizations/7/domains/{}", other["domainId"]);
    assert_eq!(call(&gh, "DELETE", "ada", &other, None).await.0, 204);

    std::fs::write(&file, declare("")).unwrap();
    assert_eq!(call(&gh, "DELETE", "ada", &item, None).await.0, 204);
    assert_eq!(call(&gh, "GET", "ada", &item, None).await.0, 404);
}

#[tokio::test]
async fn declared_domains_are_kept_until_removed_from_the_bootstrap_file_on_sled() {
    declared_domains_are_kept_until_removed_from_the_bootstrap_file(crate::mfa::Backend::Sled)
        .await;
}

#[tokio::test]
async fn declared_domains_are_kept_until_removed_from_the_bootstrap_file_on_postgres() {
    declared_domains_are_kept_until_removed_from_the_bootstrap_file(crate::mfa::Backend::Postgres)
        .await;
}
