//! `gatehouse routes explain METHOD PATH`: which `[[routes]]` rule a request would get, why the
//! longer ones do not apply, what it requires, and whether a user would pass. It decides with the
//! gateway's own functions ([`crate::routes::AccessRules`], [`crate::auth::policy::decide_rule`]).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::auth::policy::{Decision, decide_rule};
use crate::config::{Access, AccessRule, Config, Factor};
use crate::identity::{Method, Principal};
use crate::routes::{AccessRules, acted_methods, mismatch};

/// `gatehouse routes …`.
#[derive(Args, Debug)]
pub struct RoutesArgs {
    #[command(subcommand)]
    command: RoutesCommand,
}

#[derive(Subcommand, Debug)]
enum RoutesCommand {
    /// Which rule a request gets and why, its requirements, and whether a user would pass.
    ///
    /// Exit code 0 when the request would pass, 1 when refused, 2 on a usage or configuration
    /// error.
    Explain(ExplainArgs),
}

/// Options of `gatehouse routes explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The request's method (any letter case).
    method: String,
    /// The request's path (it is normalised as the gateway normalises it).
    path: String,
    /// The user making the request, looked up through the admin API (GET /admin/v1/users/NAME).
    #[arg(long)]
    user: Option<String>,
    /// A second factor the user signed in with (`totp`, `recovery`, `sms`, `email`, `webauthn`,
    /// `idp`); repeat for several. Without one, the user signed in with a password only.
    #[arg(long = "factor")]
    factors: Vec<String>,
    /// The client's address (rules with a `source` apply only to clients inside it).
    #[arg(long)]
    source: Option<IpAddr>,
    /// A request header, as `Name: value` (such as `X-HTTP-Method-Override: DELETE`); repeat.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Where the admin API is (for --user).
    #[command(flatten)]
    admin: crate::cli::AdminConnection,
}

/// Runs `gatehouse routes …` with the configuration `config` (already loaded and checked).
pub async fn run(args: RoutesArgs, config: &Config) -> ExitCode {
    let RoutesCommand::Explain(args) = args.command;
    match explain(&args, config).await {
        Ok((text, pass)) => {
            print!("{text}");
            if pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// The explanation, and whether the request would pass; `Err` for a usage error.
async fn explain(args: &ExplainArgs, config: &Config) -> Result<(String, bool), String> {
    let method = args.method.trim();
    if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(format!("`{}` is not a method", args.method));
    }
    let headers = parse_headers(&args.headers)?;
    let normalised = crate::path::normalize(&args.path)
        .map_err(|e| format!("`{}` is not a valid path: {e}", args.path))?;
    let key = crate::path::match_key(&normalised).into_owned();
    let factors = args
        .factors
        .iter()
        .map(|f| Factor::parse(f).ok_or_else(|| format!("`{f}` is not a factor")))
        .collect::<Result<Vec<_>, _>>()?;
    let client = args.source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let table = AccessRules::new(&config.routes, config.proxy.default);

    let mut out = String::new();
    let _ = writeln!(out, "path: {normalised}");
    if key != normalised {
        let _ = writeln!(out, "matched as: {key}");
    }
    match args.source {
        Some(ip) => {
            let _ = writeln!(out, "client: {ip}");
        }
        None => {
            let _ = writeln!(
                out,
                "client: unknown (no --source: rules with a `source` do not apply)"
            );
        }
    }
    let methods = acted_methods(&[method], &headers);
    if methods.len() > 1 {
        let _ = writeln!(
            out,
            "methods: {} (a method override header names the others: the request must pass \
             the rule of each)",
            methods.join(", ")
        );
    }
    let mut rules: Vec<&AccessRule> = Vec::new();
    for m in &methods {
        let _ = writeln!(out, "\nrule for {m}:");
        for (index, rule) in table.candidates(&key) {
            let name = match index {
                Some(i) => format!("routes[{i}] (path_prefix = \"{}\")", rule.path_prefix),
                None => "proxy.default".to_owned(),
            };
            match mismatch(rule, m, client) {
                Some(why) => {
                    let _ = writeln!(out, "  {name}: does not apply: {why}");
                }
                None => {
                    let _ = writeln!(out, "  {name}: applies");
                    let _ = write!(out, "{}", requirements(rule));
                    break;
                }
            }
        }
        let rule = table.rule_for_request(&key, m, client);
        if !rules.iter().any(|r| std::ptr::eq(*r, rule)) {
            rules.push(rule);
        }
    }

    let principal = match &args.user {
        None => None,
        Some(name) => match principal_of(args, name, &factors).await? {
            Ok(principal) => Some(principal),
            Err(refused) => {
                let _ = writeln!(out, "\nuser {name}: refused: {refused}");
                return Ok((out, false));
            }
        },
    };
    let (pass, verdict) = verdict(
        &rules,
        principal.as_ref(),
        config.auth.require_application_token,
    );
    let _ = writeln!(out, "\n{verdict}");
    Ok((out, pass))
}

/// What `rule` asks of a request, one line each.
fn requirements(rule: &AccessRule) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "    access = \"{}\"", rule.access.as_str());
    if !rule.methods.is_empty() {
        let _ = writeln!(out, "    methods = {:?}", rule.methods);
    }
    if !rule.source.is_empty() {
        let nets: Vec<String> = rule.source.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "    source = {nets:?}");
    }
    if !rule.scopes.is_empty() {
        let _ = writeln!(out, "    scopes = {:?} (all of them)", rule.scopes);
    }
    if !rule.any_scopes.is_empty() {
        let _ = writeln!(out, "    any_scopes = {:?} (at least one)", rule.any_scopes);
    }
    if !rule.factors.is_empty() {
        let names: Vec<&str> = rule.factors.iter().map(|f| f.as_str()).collect();
        let _ = writeln!(out, "    factors = {names:?} (only these satisfy mfa)");
    }
    if let Some(limit) = rule.rate_limit {
        let _ = writeln!(
            out,
            "    rate_limit = \"{limit}\" (per user; per client address when anonymous; per replica)"
        );
    }
    out
}

/// Whether a request by `principal` (anonymous with `None`) passes every rule, and the line
/// that says so (or why not).
fn verdict(
    rules: &[&AccessRule],
    principal: Option<&Principal>,
    require_app: bool,
) -> (bool, String) {
    let who = principal.map_or_else(
        || "an anonymous request".to_owned(),
        |p| format!("user {}", p.user_name),
    );
    for rule in rules {
        let why = match decide_rule(rule, principal, require_app) {
            Decision::Allow => continue,
            Decision::Unauthenticated if principal.is_some() => {
                "refused: auth.require_application_token asks for an ApplicationToken too"
                    .to_owned()
            }
            Decision::Unauthenticated => {
                "refused: the route needs a credential (give --user NAME)".to_owned()
            }
            Decision::MfaRequired if rule.factors.is_empty() => {
                "refused: the route needs a second factor (give --factor NAME for one the user \
                 signed in with)"
                    .to_owned()
            }
            Decision::MfaRequired => {
                let names: Vec<&str> = rule.factors.iter().map(|f| f.as_str()).collect();
                format!(
                    "refused: the route needs one of the second factors {}",
                    names.join(", ")
                )
            }
            Decision::MissingScope(scope) => format!("refused: missing the scope `{scope}`"),
        };
        return (false, format!("{who}: {why}"));
    }
    let note = if rules.iter().all(|r| r.access == Access::Public) {
        " (public: credentials are not looked at)"
    } else {
        ""
    };
    (true, format!("{who}: would pass{note}"))
}

/// The principal `name` would be, from the admin API's view of the user, or (inner `Err`) why
/// every request of theirs is refused.
async fn principal_of(
    args: &ExplainArgs,
    name: &str,
    factors: &[Factor],
) -> Result<Result<Principal, String>, String> {
    let path = format!("/admin/v1/users/{}", crate::cli::segment(name));
    let user = args
        .admin
        .get_json(&path)
        .await
        .map_err(|e| format!("--user: {e}"))?;
    let scopes = user["scopes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut methods = vec![Method::Pwd];
    methods.extend(factors.iter().map(|f| f.method()));
    if user["disabled"].as_bool() == Some(true) {
        return Ok(Err("the user is disabled".to_owned()));
    }
    Ok(Ok(Principal {
        user_id: user["id"].to_string(),
        user_name: user["userName"].as_str().unwrap_or(name).to_owned(),
        email: None,
        scopes,
        organizations: Vec::new(),
        methods,
    }))
}

/// `Name: value` headers.
fn parse_headers(raw: &[String]) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for h in raw {
        let Some((name, value)) = h.split_once(':') else {
            return Err(format!("--header `{h}`: expected `Name: value`"));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("--header `{h}`: `{}` is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("--header `{h}`: the value is not a header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}
