//! `gatehouse admin …`: a command-line client of the admin API (SPEC §7).

use std::io::Read;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Where the admin API is and the token it takes (`gatehouse admin`, and `gatehouse routes
/// explain --user`).
#[derive(Args, Debug)]
pub struct AdminConnection {
    /// Base URL of the admin listener.
    #[arg(
        long,
        env = "GATEHOUSE_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    url: String,
    /// The admin token (or set GATEHOUSE_ADMIN_TOKEN, or use --token-file).
    #[arg(long, env = "GATEHOUSE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the admin token (read instead of --token).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
}

impl AdminConnection {
    /// The admin token, from --token-file or else --token (GATEHOUSE_ADMIN_TOKEN).
    fn token(&self) -> Result<String, String> {
        match (&self.token_file, &self.token) {
            (Some(path), _) => Ok(std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .trim()
                .to_owned()),
            (None, Some(token)) => Ok(token.clone()),
            (None, None) => Err("no admin token: use --token-file or GATEHOUSE_ADMIN_TOKEN".into()),
        }
    }

    /// The JSON answer of a `GET` at `path`, or the problem's detail.
    pub async fn get_json(&self, path: &str) -> Result<Value, String> {
        let text = send(&self.url, &self.token()?, Method::GET, path, None).await?;
        serde_json::from_str(&text).map_err(|e| format!("cannot read the answer: {e}"))
    }
}

/// Options of `gatehouse admin`.
#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    connection: AdminConnection,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Users: create, list, get, update, delete, mfa-reset, sign-out, disable, enable,
    /// revoke-tokens.
    #[command(subcommand)]
    User(UserCommand),
    /// Register an application; prints its ApplicationToken once.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Organisations and their members.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Grant a user a WS FileId.
    FileGrant {
        /// The WS FileId.
        file_id: i64,
        /// The user granted it.
        user_name: String,
    },
    /// Create a WsAccessKey for a user and FileId; prints it once.
    WsKey {
        /// The user the key acts as.
        user_name: String,
        /// The WS FileId the key is bound to.
        file_id: i64,
    },
    /// Token signing keys: list, rotate.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Newest audit events first, filtered, a page at a time (the next page's `--cursor` is
    /// printed on standard error).
    Audit {
        /// How many events to print (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only this user's events (the name in any letter case).
        #[arg(long)]
        user: Option<String>,
        /// Only this event (`signin.failed`), or a family of them (`signin.*`).
        #[arg(long)]
        event: Option<String>,
        /// Only events at or after this RFC 3339 time (2026-01-31T12:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Continue where the previous page ended: the cursor it printed.
        #[arg(long)]
        cursor: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// List the signing keys with their times and state (pending, active, retired, expired).
    List,
    /// Publish the next signing key; it signs after tokens.key_prepublish. While a key is still
    /// pending, prints that one and adds none.
    Rotate,
}

#[derive(Subcommand, Debug)]
enum AppCommand {
    /// Register an application; prints its ApplicationToken once.
    Create {
        /// The application's name.
        name: String,
    },
}

#[derive(Args, Debug, Default)]
struct UserFields {
    /// Email address (codes of the email factor go there).
    #[arg(long)]
    email: Option<String>,
    /// Phone number in E.164 form, such as +14155550123 (SMS codes go there).
    #[arg(long)]
    phone: Option<String>,
    /// First name.
    #[arg(long)]
    first_name: Option<String>,
    /// Last name.
    #[arg(long)]
    last_name: Option<String>,
    /// Nickname.
    #[arg(long)]
    nick_name: Option<String>,
    /// A scope; repeat for several (replaces the list on update).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Read the password from standard input (never from the command line).
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create a user.
    Create {
        /// The new user's name (unique in any letter case).
        user_name: String,
        #[command(flatten)]
        fields: UserFields,
    },
    /// List users ordered by name, a page at a time.
    List {
        /// Users per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this user name: the `next` value the previous page printed.
        #[arg(long)]
        after: Option<String>,
    },
    /// Show a user.
    Get {
        /// The user's name.
        user_name: String,
    },
    /// Change a user's fields; those not given stay as they are.
    Update {
        /// The user's current name.
        user_name: String,
        /// A new user name.
        #[arg(long)]
        rename: Option<String>,
        #[command(flatten)]
        fields: UserFields,
    },
    /// Delete a user and everything bound to it.
    Delete {
        /// The user's name.
        user_name: String,
    },
    /// Remove every MFA factor and pending enrollment of the user.
    MfaReset {
        /// The user's name.
        user_name: String,
    },
    /// End every browser session of the user ("sign out everywhere").
    SignOut {
        /// The user's name.
        user_name: String,
    },
    /// Disable a user: every credential of theirs is refused and their sessions end.
    Disable {
        /// The user's name.
        user_name: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// The user's name.
        user_name: String,
    },
    /// Refuse every token issued to the user until now (and delete their WS access keys).
    RevokeTokens {
        /// The user's name.
        user_name: String,
    },
}

#[derive(Subcommand, Debug)]
enum OrgCommand {
    // Organisation ids are int32, as the domain API's `organizationId`.
    /// Create an organisation.
    Create {
        /// The organisation's id (an int32, as the domain API's organizationId).
        id: i32,
        /// The organisation's name.
        name: String,
    },
    /// Add a user to an organisation, or change their role.
    AddMember {
        /// The organisation's id.
        id: i32,
        /// The user's name.
        user_name: String,
        /// The member's role: admins may manage the organisation's domains.
        #[arg(long, value_parser = ["admin", "member"])]
        role: String,
    },
}

pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl UserFields {
    fn body(self, user_name: Option<String>) -> Result<Value, String> {
        let mut body = serde_json::Map::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                body.insert(k.into(), Value::String(v));
            }
        };
        put("userName", user_name);
        put("email", self.email);
        put("phone", self.phone);
        put("firstName", self.first_name);
        put("lastName", self.last_name);
        put("nickName", self.nick_name);
        if self.password_stdin {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .map_err(|e| format!("cannot read the password: {e}"))?;
            let password = password.trim_end_matches(['\r', '\n']).to_owned();
            body.insert("password".into(), Value::String(password));
        }
        if !self.scopes.is_empty() {
            body.insert("scopes".into(), json!(self.scopes));
        }
        Ok(Value::Object(body))
    }
}

/// The request a command makes: method, path under the admin URL, optional JSON body.
fn request(command: AdminCommand) -> Result<(Method, String, Option<Value>), String> {
    Ok(match command {
        AdminCommand::User(UserCommand::Create { user_name, fields }) => (
            Method::POST,
            "/admin/v1/users".into(),
            Some(fields.body(Some(user_name))?),
        ),
        AdminCommand::User(UserCommand::List { limit, after }) => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            if let Some(after) = &after {
                query.append_pair("after", after);
            }
            (
                Method::GET,
                format!("/admin/v1/users?{}", query.finish()),
                None,
            )
        }
        AdminCommand::User(UserCommand::Get { user_name }) => (
            Method::GET,
            format!("/admin/v1/users/{}", segment(&user_name)),
            None,
        ),
        AdminCommand::User(UserCommand::Update {
            user_name,
            rename,
            fields,
        }) => (
            Method::PATCH,
            format!("/admin/v1/users/{}", segment(&user_name)),
            Some(fields.body(rename)?),
        ),
        AdminCommand::User(UserCommand::Delete { user_name }) => (
            Method::DELETE,
            format!("/admin/v1/users/{}", segment(&user_name)),
            None,
        ),
        AdminCommand::User(UserCommand::MfaReset { user_name }) => (
            Method::POST,
            format!("/admin/v1/users/{}/mfa/reset", segment(&user_name)),
            None,
        ),
        AdminCommand::User(UserCommand::SignOut { user_name }) => (
            Method::DELETE,
            format!("/admin/v1/users/{}/sessions", segment(&user_name)),
            None,
        ),
        AdminCommand::User(UserCommand::Disable { user_name }) => (
            Method::PATCH,
            format!("/admin/v1/users/{}", segment(&user_name)),
            Some(json!({ "disabled": true })),
        ),
        AdminCommand::User(UserCommand::Enable { user_name }) => (
            Method::PATCH,
            format!("/admin/v1/users/{}", segment(&user_name)),
            Some(json!({ "disabled": false })),
        ),
        AdminCommand::User(UserCommand::RevokeTokens { user_name }) => (
            Method::POST,
            format!("/admin/v1/users/{}/tokens/revoke", segment(&user_name)),
            None,
        ),
        AdminCommand::App {
            command: AppCommand::Create { name },
        } => (
            Method::POST,
            "/admin/v1/applications".into(),
            Some(json!({ "name": name })),
        ),
        AdminCommand::Org(OrgCommand::Create { id, name }) => (
            Method::POST,
            "/admin/v1/organizations".into(),
            Some(json!({ "id": id, "name": name })),
        ),
        AdminCommand::Org(OrgCommand::AddMember {
            id,
            user_name,
            role,
        }) => (
            Method::POST,
            format!("/admin/v1/organizations/{id}/members"),
            Some(json!({ "userName": user_name, "role": role })),
        ),
        AdminCommand::FileGrant { file_id, user_name } => (
            Method::POST,
            format!("/admin/v1/files/{file_id}/members"),
            Some(json!({ "userName": user_name })),
        ),
        AdminCommand::WsKey { user_name, file_id } => (
            Method::POST,
            "/admin/v1/ws-keys".into(),
            Some(json!({ "userName": user_name, "fileId": file_id })),
        ),
        AdminCommand::Keys(KeysCommand::List) => (Method::GET, "/admin/v1/keys".into(), None),
        AdminCommand::Keys(KeysCommand::Rotate) => {
            (Method::POST, "/admin/v1/keys/rotate".into(), None)
        }
        AdminCommand::Audit {
            limit,
            user,
            event,
            since,
            cursor,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            for (name, value) in [
                ("user", user),
                ("event", event),
                ("since", since),
                ("cursor", cursor),
            ] {
                if let Some(value) = &value {
                    query.append_pair(name, value);
                }
            }
            (
                Method::GET,
                format!("/admin/v1/audit?{}", query.finish()),
                None,
            )
        }
    })
}

/// Runs one admin command; prints the answer's JSON on success, the problem's detail on failure.
pub async fn run(args: AdminArgs) -> ExitCode {
    match call(args).await {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn call(args: AdminArgs) -> Result<String, String> {
    let token = args.connection.token()?;
    let (method, path, body) = request(args.command)?;
    send(&args.connection.url, &token, method, &path, body).await
}

/// Sends one admin API request; the answer's JSON pretty-printed, or the problem's detail.
async fn send(
    url: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<String, String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let uri = format!("{}{path}", url.trim_end_matches('/'));
    let request = Request::builder()
        .method(method)
        .uri(&uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("invalid request to {uri}: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("cannot reach {uri}: {e}"))?;
    let status = response.status();
    if let Some(cursor) = response
        .headers()
        .get(http::header::LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(next_cursor)
    {
        eprintln!("next page: --cursor {cursor}");
    }
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?
        .to_bytes();
    let value: Option<Value> = serde_json::from_slice(&bytes).ok();
    if status.is_success() {
        return Ok(value
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_default());
    }
    let detail = value
        .as_ref()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    Err(format!("{status}: {detail}"))
}

/// The `cursor` of a `Link: <…?…&cursor=C>; rel="next"` header.
fn next_cursor(link: &str) -> Option<String> {
    let (target, params) = link.split_once(';')?;
    if !params.contains("rel=\"next\"") {
        return None;
    }
    let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
    let (_, query) = target.split_once('?')?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "cursor")
        .map(|(_, v)| v.into_owned())
}
