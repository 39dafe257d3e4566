//! `openapi/openapi.json`: a valid OpenAPI 3.1 document (openapi-spec-validator, installed by
//! tests/run.sh), the same set of operations as the code's route tables, each answered by gatehouse
//! itself, and served on the admin listener; its request patterns allow only what the code's own
//! rules accept.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use gatehouse::api::operations;
use gatehouse::config::Access;
use serde_json::Value;

use crate::harness::*;

/// The methods an OpenAPI path item can hold.
const METHODS: [&str; 8] = [
    "get", "head", "post", "put", "patch", "delete", "options", "trace",
];

fn file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json")
}

fn document() -> Value {
    serde_json::from_slice(&std::fs::read(file()).unwrap()).unwrap()
}

/// Follows a local `$ref` (`#/components/...`), once.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => doc
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
        None => value,
    }
}

/// One documented operation.
#[derive(Clone)]
struct Documented<'a> {
    /// `admin` for paths with the admin listener's `servers`, else `public`.
    listener: &'static str,
    method: String,
    path: String,
    operation: &'a Value,
}

fn operations(doc: &Value) -> Vec<Documented<'_>> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let item = resolve(doc, item);
        let listener = if item.get("servers").is_some() {
            "admin"
        } else {
            "public"
        };
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                all.push(Documented {
                    listener,
                    method: method.to_ascii_uppercase(),
                    path: path.clone(),
                    operation,
                });
            }
        }
    }
    all
}

/// (listener, method, path template) of every operation in the code's tables, with the default
/// base paths the document uses.
fn routed() -> BTreeSet<(String, String, String)> {
    let config =
        gatehouse::config::from_toml_str("[server]\nenvironment = \"development\"\n").unwrap();
    let public = operations::public(&config.apis)
        .into_iter()
        .map(|op| ("public".to_owned(), op.method.to_owned(), op.path));
    let admin = gatehouse::api::admin::operations()
        .into_iter()
        .map(|r| ("admin".to_owned(), r.method.to_owned(), r.path.to_owned()));
    public.chain(admin).collect()
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(file())
        .output()
        .expect("python3 runs (tests/run.sh installs openapi-spec-validator)");
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let doc = document();
    let documented: BTreeSet<(String, String, String)> = operations(&doc)
        .into_iter()
        .map(|op| (op.listener.to_owned(), op.method, op.path))
        .collect();
    let routed = routed();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes the document lacks: {undocumented:#?}\ndocumented operations no route answers: {unrouted:#?}"
    );
    assert!(routed.len() > 40, "{routed:?}");
}

/// The schemas a family's error answers use; `None` where errors are not an envelope (the HTML
/// enrollment and sign-in pages, the probes).
fn error_envelope(listener: &str, path: &str) -> Option<&'static [&'static str]> {
    if listener == "admin" {
        return path.starts_with("/admin/").then_some(&["Problem"][..]);
    }
    if path.starts_with("/User/") {
        Some(&["BaseResponseModel"])
    } else if path.starts_with("/manage/") {
        Some(&["ManageResponse", "ManageResponseProtobuf"])
    } else if path.starts_with("/enroll/")
        || [
            "/auth/login",
            "/auth/step-up",
            "/auth/logout",
            "/auth/passkeys",
            "/auth/login/{id}",
            "/auth/callback/{id}",
        ]
        .contains(&path)
    {
        None
    } else if path == "/auth/backchannel-logout/{id}" {
        // The logout token's refusal as OAuth errors are written; an unknown provider like any
        // unknown path.
        Some(&["OAuthError", "Problem"])
    } else {
        Some(&["Problem"])
    }
}

#[test]
fn every_operation_has_a_unique_id_and_its_familys_error_envelope() {
    let doc = document();
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for op in operations(&doc) {
        let id = op.operation["operationId"].as_str().unwrap_or_default();
        if id.is_empty() || !ids.insert(id.to_owned()) {
            problems.push(format!("{} {}: operationId {id:?}", op.method, op.path));
        }
        let Some(envelopes) = error_envelope(op.listener, &op.path) else {
            continue;
        };
        if op.method == "HEAD" {
            continue;
        }
        for (status, response) in op.operation["responses"].as_object().unwrap() {
            if status.starts_with('2') {
                continue;
            }
            let response = resolve(&doc, response);
            let content = response["content"].as_object().cloned().unwrap_or_default();
            if content.is_empty() {
                problems.push(format!("{} {} {status}: no body", op.method, op.path));
            }
            for (media, body) in content {
                let schema = body["schema"]["$ref"].as_str().unwrap_or_default();
                if !envelopes
                    .iter()
                    .any(|e| schema == format!("#/components/schemas/{e}"))
                {
                    problems.push(format!(
                        "{} {} {status} {media}: {schema:?} is not one of {envelopes:?}",
                        op.method, op.path
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Checks `value` against a schema of the subset the document uses (`$ref`, `allOf`, `type`,
/// `const`, `enum`, `required`, `properties`, `items`), strictly: an object member the schema does
/// not name is an error, so the document names every field the code sends.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    for part in schema["allOf"].as_array().into_iter().flatten() {
        conforms(doc, part, value, at, errors);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        errors.push(format!("{at}: {value} is not {types:?}"));
        return;
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        errors.push(format!("{at}: {value} is not {constant}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Value::Object(members) = value {
        let properties = schema["properties"].as_object();
        for name in schema["required"].as_array().into_iter().flatten() {
            if !members.contains_key(name.as_str().unwrap()) {
                errors.push(format!("{at}: {name} is missing"));
            }
        }
        for (name, member) in members {
            match properties.and_then(|p| p.get(name)) {
                Some(property) => conforms(doc, property, member, &format!("{at}.{name}"), errors),
                None if properties.is_some() => {
                    errors.push(format!("{at}: `{name}` is not in the schema"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conforms(doc, item_schema, item, &format!("{at}[{i}]"), errors);
        }
    }
}

#[test]
fn the_seed_shaped_fixtures_conform_to_their_schemas() {
    let doc = document();
    let fixture = |name: &str| -> Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let schema = |name: &str| serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
    let mut errors = Vec::new();
    conforms(
        &doc,
        &schema("Domain"),
        &fixture("domain_object.json"),
        "domain_object",
        &mut errors,
    );
    for (case, answer) in fixture("manage_errors.json").as_object().unwrap() {
        let mut body = answer["body"].clone();
        body["apiRequestId"] = Value::from("3f2c1f4e-8a51-4c1e-9d53-1d2b4a9f6e70");
        conforms(&doc, &schema("ManageResponse"), &body, case, &mut errors);
    }
    // The strict check does find what the document does not name.
    let mut extra = Vec::new();
    let mut domain = fixture("domain_object.json");
    domain["verified"] = Value::Bool(true);
    conforms(&doc, &schema("Domain"), &domain, "domain", &mut extra);
    assert_eq!(extra, ["domain: `verified` is not in the schema"]);
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Whether each of `values` matches `pattern` as JSON Schema applies one: a search, not a full
/// match, in ECMA-262's dialect, here with Python's `re` (the engine schemathesis generates data
/// with), whose `$` would also match before a final newline where ECMA-262's does not.
fn pattern_matches(pattern: &str, values: &[String]) -> Vec<bool> {
    use std::io::Write;
    const SCRIPT: &str = "import json, re, sys\n\
        d = json.load(sys.stdin)\n\
        p = d['pattern']\n\
        p = p[:-1] + '\\\\Z' if p.endswith('$') and not p.endswith('\\\\$') else p\n\
        r = re.compile(p)\n\
        print(json.dumps([r.search(v) is not None for v in d['values']]))";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let input = serde_json::json!({ "pattern": pattern, "values": values });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python3 could not apply {pattern:?}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Whether `value` satisfies a string schema's `pattern`, `minLength` and `maxLength` (in
/// characters, as JSON Schema counts them); `matched` is the pattern's verdict.
fn schema_allows(schema: &Value, value: &str, matched: bool) -> bool {
    let length = value.chars().count() as u64;
    matched
        && schema["minLength"].as_u64().is_none_or(|min| length >= min)
        && schema["maxLength"].as_u64().is_none_or(|max| length <= max)
}

/// `count` strings with lengths in `lengths`, drawn from `alphabet`: the same ones on every run.
fn strings(
    seed: u64,
    count: usize,
    lengths: std::ops::RangeInclusive<usize>,
    alphabet: &[char],
) -> Vec<String> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let span = (lengths.end() - lengths.start() + 1) as u64;
    (0..count)
        .map(|_| {
            let len = lengths.start() + (next() % span) as usize;
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        })
        .collect()
}

/// Characters that the code's rules treat differently: separators, escapes, whitespace of
/// several kinds, controls, invisible characters, a combining accent (not NFC after a space),
/// letters beyond ASCII and beyond the Basic Multilingual Plane.
const TRICKY: &[char] = &[
    'a',
    'Z',
    'e',
    '0',
    '1',
    '9',
    '+',
    '-',
    '.',
    '(',
    ')',
    ' ',
    '/',
    '\\',
    '%',
    '2',
    'F',
    'f',
    '3',
    'B',
    '5',
    'C',
    '#',
    '?',
    '@',
    '_',
    '~',
    ';',
    ':',
    '\t',
    '\n',
    '\0',
    '\u{7f}',
    '\u{85}',
    '\u{a0}',
    '\u{ad}',
    '\u{200b}',
    '\u{2028}',
    '\u{feff}',
    'é',
    '\u{301}',
    '\u{e0001}',
    '😀',
];

#[test]
fn what_the_documents_patterns_allow_the_code_accepts() {
    use gatehouse::notify::sms::{normalise_number, valid_e164};
    use gatehouse::proxy::forward::{X_FORWARDED_URI, X_ORIGINAL_URL, described_path};
    use unicode_normalization::is_nfc;

    let doc = document();
    let digits: Vec<char> = "0123456789".chars().collect();
    let phone_like: Vec<char> = "+0123456789 -().".chars().collect();
    let ticket_like: Vec<char> = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain(['-', '_', '.', '='])
        .collect();
    let path_like: Vec<char> = "/aZ09-._~%2F3B5C0bd#?&=;:@!$'()*+, \\\u{e9}"
        .chars()
        .collect();
    let mut e164: Vec<String> = strings(11, 400, 5..=17, &digits)
        .into_iter()
        .map(|d| format!("+{d}"))
        .collect();
    e164.extend(strings(12, 400, 6..=22, &phone_like));
    let mut tickets = strings(13, 300, 42..=44, &ticket_like);
    tickets.extend(strings(14, 100, 0..=50, TRICKY));
    let names = strings(15, 1500, 0..=12, TRICKY);
    let mut emails: Vec<String> = strings(16, 1500, 0..=8, TRICKY)
        .into_iter()
        .zip(strings(17, 1500, 0..=8, TRICKY))
        .map(|(local, domain)| format!("{local}@{domain}"))
        .collect();
    emails.extend(
        [
            "ada@example.com",
            "ada@.example",
            "0@.0",
            "ada@example..com",
            "ada@localhost",
        ]
        .map(String::from),
    );
    let mut paths: Vec<String> = strings(18, 1500, 0..=14, &path_like)
        .into_iter()
        .map(|p| format!("/{p}"))
        .collect();
    paths.extend(strings(19, 300, 0..=14, TRICKY));
    let urls: Vec<String> = paths
        .iter()
        .take(500)
        .map(|p| format!("https://app.example:8443{p}"))
        .chain(paths.iter().cloned())
        .collect();
    let described = |header: http::HeaderName, value: &str| {
        let Ok(value) = http::HeaderValue::from_str(value) else {
            return false;
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(header, value);
        described_path(&headers, "/auth/verify").is_ok()
    };

    type Rule<'a> = (&'a str, Box<dyn Fn(&str) -> bool>, bool, &'a [String]);
    let rules: Vec<Rule<'_>> = vec![
        (
            "/components/schemas/OptIn2FARequest/properties/MobileNumber",
            Box::new(valid_e164),
            true,
            &e164,
        ),
        (
            "/components/schemas/AdminUserCreate/properties/phone",
            Box::new(valid_e164),
            true,
            &e164,
        ),
        (
            "/components/schemas/SendOtpRequest/properties/phoneNumber",
            Box::new(|v| normalise_number(v).is_some()),
            false,
            &e164,
        ),
        (
            "/components/parameters/TicketId/schema",
            Box::new(gatehouse::mfa::codes::is_ticket_id),
            true,
            &tickets,
        ),
        (
            "/components/schemas/AdminUserCreate/properties/userName",
            Box::new(|v| gatehouse::names::check_user_name(v).is_ok()),
            false,
            &names,
        ),
        (
            "/components/parameters/UserName/schema",
            Box::new(|v| gatehouse::names::check_user_name(v).is_ok()),
            false,
            &names,
        ),
        (
            "/components/schemas/ValidateOtpRequest/properties/userName",
            Box::new(|v| gatehouse::names::check_user_name(v).is_ok()),
            false,
            &names,
        ),
        (
            "/components/schemas/AdminUserCreate/properties/firstName",
            Box::new(|v| gatehouse::names::check_display_name(v).is_ok()),
            false,
            &names,
        ),
        (
            "/components/schemas/AdminUserCreate/properties/email",
            Box::new(|v| gatehouse::names::check_email(v).is_ok()),
            false,
            &emails,
        ),
        (
            "/components/parameters/XForwardedUri/schema",
            Box::new(move |v| described(X_FORWARDED_URI, v)),
            false,
            &paths,
        ),
        (
            "/components/parameters/XOriginalUrl/schema",
            Box::new(move |v| described(X_ORIGINAL_URL, v)),
            false,
            &urls,
        ),
    ];
    let mut problems = Vec::new();
    for (pointer, accepts, exact, values) in rules {
        let schema = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer} is not in the document"));
        let pattern = schema["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{pointer} has no pattern"));
        // What a pattern cannot say (Unicode NFC) is left to the description.
        let values: Vec<String> = values.iter().filter(|v| is_nfc(v)).cloned().collect();
        let matched = pattern_matches(pattern, &values);
        let mut allowed = 0;
        for (value, matched) in values.iter().zip(matched) {
            let documented = schema_allows(schema, value, matched);
            allowed += usize::from(documented);
            let accepted = accepts(value);
            if documented && !accepted {
                problems.push(format!(
                    "{pointer} allows {value:?}, which gatehouse refuses"
                ));
            } else if exact && accepted && !documented {
                problems.push(format!(
                    "{pointer} refuses {value:?}, which gatehouse accepts"
                ));
            }
        }
        assert!(
            allowed > 10,
            "{pointer}: only {allowed} sample values fit the schema"
        );
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A concrete path for a template: every `{placeholder}` replaced by a plausible value.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{organizationId}" | "{domainId}" | "{fileId}" => "1",
            "{ticketId}" => "no-such-ticket",
            "{userName}" => "nobody",
            "{describedPath}" => "private",
            "{id}" => "no-such-provider",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The query the operation's required query parameters need.
fn required_query(doc: &Value, op: &Value) -> String {
    let mut pairs = Vec::new();
    for parameter in op["parameters"].as_array().into_iter().flatten() {
        let parameter = resolve(doc, parameter);
        if parameter["in"] == "query" && parameter["required"] == true {
            let value = match parameter["schema"]["enum"].get(0) {
                Some(first) => first.as_str().unwrap().to_owned(),
                None => "1".to_owned(),
            };
            pairs.push(format!("{}={value}", parameter["name"].as_str().unwrap()));
        }
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// A user whose credentials pass every scheme of the public listeners: a password, the Manage
/// scope, admin of organisation 1, and FileId 1 with a WsAccessKey (returned).
async fn seed_credentials(gh: &Gatehouse) -> String {
    gh.create_user(serde_json::json!({
        "userName": "ada",
        "password": PASSWORD,
        "scopes": ["manage.otp.verify"],
    }))
    .await;
    for (path, body) in [
        (
            "/admin/v1/organizations",
            serde_json::json!({"id": 1, "name": "Acme"}),
        ),
        (
            "/admin/v1/organizations/1/members",
            serde_json::json!({"userName": "ada", "role": "admin"}),
        ),
        (
            "/admin/v1/files/1/members",
            serde_json::json!({"userName": "ada"}),
        ),
    ] {
        let (status, answer) = gh.admin("POST", path, Some(body)).await;
        assert_eq!(status, 201, "{path}: {answer}");
    }
    let (status, key) = gh
        .admin(
            "POST",
            "/admin/v1/ws-keys",
            Some(serde_json::json!({"userName": "ada", "fileId": 1})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().unwrap().to_owned()
}

const PASSWORD: &str = "correct horse battery staple";

/// The names of the security schemes the operation accepts.
fn schemes(op: &Value) -> BTreeSet<String> {
    op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys().cloned())
        .collect()
}

/// Sends every documented operation, without credentials and then with credentials the operation
/// documents, and checks that gatehouse answered it itself (nothing reached the upstream, not 405,
/// not the admin listener's unknown-endpoint 404) with a documented status and media type and, for
/// JSON, a body that conforms to the documented schema.
#[tokio::test]
async fn every_documented_operation_is_answered_by_gatehouse_itself() {
    let upstream = Upstream::start().await;
    // Paths no local endpoint answers go to the upstream without credentials, so a request that
    // gatehouse does not answer itself is seen there.
    let gh = Gatehouse::start_with(&upstream, |c| c.proxy.default = Access::Public).await;
    let ws_key = seed_credentials(&gh).await;
    let doc = document();
    let client = http1_client();
    let mut failures = Vec::new();
    let mut sent = 0;
    let attempts = operations(&doc).into_iter().flat_map(|op| {
        let schemes = schemes(op.operation);
        let tries: &[bool] = if schemes.is_empty() {
            &[false]
        } else {
            &[false, true]
        };
        tries
            .iter()
            .map(move |&authenticated| (op.clone(), schemes.clone(), authenticated))
    });
    for (op, schemes, authenticated) in attempts {
        let mut target = format!(
            "{}{}",
            concrete(&op.path),
            required_query(&doc, op.operation)
        );
        if authenticated && schemes.contains("WsAccessKey") {
            let separator = if target.contains('?') { '&' } else { '?' };
            target.push_str(&format!("{separator}WsAccessKey={ws_key}"));
        }
        let url = match op.listener {
            "admin" => gh.admin_url(&target),
            _ => gh.http_url(&target),
        };
        let method = http::Method::from_bytes(op.method.as_bytes()).unwrap();
        let mut request = client.request(method, url);
        if authenticated && schemes.contains("AdminToken") {
            request = request.bearer_auth(ADMIN_TOKEN);
        } else if authenticated && (schemes.contains("Basic") || schemes.contains("basicAuth")) {
            request = request.basic_auth("ada", Some(PASSWORD));
        }
        if let Some(content) = op.operation["requestBody"]["content"].as_object() {
            request = if content.contains_key("application/json") {
                request
                    .header("content-type", "application/json")
                    .body("{}")
            } else {
                request
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("code=000000")
            };
        }
        let hits_before = upstream.hits();
        let response = request.send().await.unwrap();
        sent += 1;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let body = response.text().await.unwrap();
        let credentials = if authenticated { "with" } else { "without" };
        let what = format!(
            "{} {target} {credentials} credentials answered {status}",
            op.method
        );

        if upstream.hits() != hits_before {
            failures.push(format!("{what}: the request reached the upstream"));
            continue;
        }
        if status == 405 || body.contains("\"detail\":\"endpoint not found.\"") {
            failures.push(format!("{what}: not a route: {body}"));
            continue;
        }
        let documented = &op.operation["responses"];
        let Some(response_doc) = documented.get(status.to_string()) else {
            let listed: Vec<&String> = documented.as_object().unwrap().keys().collect();
            failures.push(format!("{what}, documented: {listed:?}; body {body}"));
            continue;
        };
        let response_doc = resolve(&doc, response_doc);
        if op.method != "HEAD"
            && let Some(content) = response_doc.get("content").and_then(Value::as_object)
        {
            let media = content_type.as_deref().and_then(|t| content.get(t));
            match media {
                None => {
                    let listed: Vec<&String> = content.keys().collect();
                    failures.push(format!(
                        "{what} as {content_type:?}, documented: {listed:?}"
                    ));
                }
                Some(media) if content_type.as_deref().is_some_and(|t| t.ends_with("json")) => {
                    match serde_json::from_str::<Value>(&body) {
                        Ok(value) => conforms(&doc, &media["schema"], &value, &what, &mut failures),
                        Err(e) => failures.push(format!("{what}: not JSON ({e}): {body}")),
                    }
                }
                Some(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(sent > 80, "only {sent} requests were sent");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn openapi_json_is_served_on_the_admin_listener_as_the_file() {
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    // No token: the document holds no secret, like the probes.
    let response = http1_client()
        .get(gh.admin_url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served = response.bytes().await.unwrap();
    assert!(
        served.as_ref() == std::fs::read(file()).unwrap().as_slice(),
        "the served document differs from openapi/openapi.json (rebuild?)"
    );
    let head = http1_client()
        .head(gh.admin_url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let post = http1_client()
        .post(gh.admin_url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"].to_str().unwrap(), "GET, HEAD");
}
