//! Logging: the subscriber set-up and the one access-log line per request.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::Duration;

use tracing::field::Field;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

use crate::config::{LogConfig, LogFormat};

/// The `tracing` target of access-log lines.
pub const ACCESS_TARGET: &str = "gatehouse::access";

/// Installs the global subscriber: text or JSON lines on stdout, filtered by `log.level`
/// (`RUST_LOG` overrides it when set).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    let result = match config.format {
        LogFormat::Json => builder
            .with_writer(|| JsonEscaped(std::io::stdout()))
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.fmt_fields(escaped_fields()).try_init(),
    };
    // A subscriber already installed (tests start several servers) is fine.
    drop(result);
}

/// The text format's fields, `name=value` separated by spaces like the default, with every
/// control character of every value escaped, so that no value — a path, a name, an error that
/// quotes a client — can end the line or start a forged one, whichever way a call site logs it
/// (`%` fields are written with `Display`, which escapes nothing). The JSON format needs no
/// such care: serde escapes control characters in strings.
pub fn escaped_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(
        |writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
            if field.name() != "message" {
                write!(writer, "{}=", field.name())?;
            }
            write!(Escaped(writer), "{value:?}")
        },
    )
    .delimited(" ")
}

/// Whether `c` could break or disguise a log line: control characters (C0, DEL, C1) and the
/// Unicode line and paragraph separators.
fn unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Writes through to `W` with [`unprintable`] characters escaped as Rust escapes them.
struct Escaped<W>(W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(unprintable) {
            self.0.write_str(&rest[..at])?;
            let mut chars = rest[at..].chars();
            if let Some(c) = chars.next() {
                match c {
                    '\n' => self.0.write_str("\\n")?,
                    '\r' => self.0.write_str("\\r")?,
                    '\t' => self.0.write_str("\\t")?,
                    c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                }
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
}

/// Writes JSON log lines with the characters serde leaves raw in strings escaped: DEL, the C1
/// controls (NEL among them) and the Unicode line and paragraph separators, which some log
/// readers take for line ends. They can only occur inside JSON strings, where `\uXXXX` means
/// the same character, so the line stays the same JSON.
struct JsonEscaped<W>(W);

impl<W: std::io::Write> std::io::Write for JsonEscaped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Most lines are ASCII without DEL: written as they are.
        if !buf.iter().any(|&b| b >= 0x7f) {
            return self.0.write(buf);
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        let mut i = 0;
        while let Some(&b) = buf.get(i) {
            let escaped = match (b, buf.get(i + 1), buf.get(i + 2)) {
                (0x7f, _, _) => Some((0x7f, 1)),
                (0xc2, Some(&c), _) if (0x80..=0x9f).contains(&c) => Some((u32::from(c), 2)),
                (0xe2, Some(0x80), Some(&c)) if c == 0xa8 || c == 0xa9 => {
                    Some((0x2000 | u32::from(c & 0x2f), 3))
                }
                _ => None,
            };
            match escaped {
                Some((code, len)) => {
                    out.extend_from_slice(format!("\\u{code:04x}").as_bytes());
                    i += len;
                }
                None => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        self.0.write_all(&out)?;
        // The whole buffer was consumed, whatever its escaped length.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// What one access-log line records.
pub struct AccessRecord<'a> {
    pub method: &'a str,
    /// The normalised path (the raw one when it could not be normalised).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub status: u16,
    /// The client's address as gatehouse believes it: the socket peer's, or behind a trusted
    /// proxy the nearest untrusted `X-Forwarded-For` entry.
    pub client: std::net::IpAddr,
    pub latency: Duration,
    pub upstream_latency: Option<Duration>,
    pub request_id: &'a str,
    pub user_id: Option<&'a str>,
    /// Why gatehouse refused or failed the request, for operators (never a credential).
    pub error: Option<&'a str>,
}

/// Writes the access-log line for one request, with credentials redacted from the query.
pub fn access(r: &AccessRecord<'_>) {
    tracing::info!(
        target: ACCESS_TARGET,
        method = r.method,
        path = redact_path(r.path).as_ref(),
        query = r.query.map(redact_query).as_deref(),
        status = r.status,
        client = %r.client,
        latency_us = micros(r.latency),
        upstream_us = r.upstream_latency.map(micros),
        request_id = r.request_id,
        user_id = r.user_id,
        error = r.error,
        "request"
    );
}

/// A duration in whole microseconds, as the access log writes latencies.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Query parameters whose values are credentials or codes. A name matches when, lower-cased,
/// it contains one of these.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "code",
    "otp",
    "session",
    "signature",
    "sig",
    "credential",
    "ticket",
    // An external sign-in's `state`: the value of the browser's flow cookie.
    "state",
];

/// Whether a query parameter's name, as a form decoder reads it (`%4B` is `K`, `+` a space),
/// names a credential.
fn is_secret_param(name: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .to_lowercase();
    SECRET_PARAMS.iter().any(|s| decoded.contains(s))
}

/// Replaces the value of every credential-like query parameter with `REDACTED`. Pairs are split
/// at `;` too, as some frameworks do. A value that is itself a path with a query (the sign-in
/// pages' `rd=%2Fapp%3Faccess_token%3D…`, which carries a navigation's target) has its own
/// credentials redacted the same way.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    let mut redacted = String::with_capacity(query.len());
    let mut changed = false;
    let mut rest = query;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => {
                redacted.push_str(name);
                redacted.push_str("=REDACTED");
                changed = true;
            }
            Some((name, value)) => match redact_nested(value) {
                Some(value) => {
                    redacted.push_str(name);
                    redacted.push('=');
                    redacted.push_str(&value);
                    changed = true;
                }
                None => redacted.push_str(pair),
            },
            None => redacted.push_str(pair),
        }
        let Some(separator) = rest[end..].chars().next() else {
            break;
        };
        redacted.push(separator);
        rest = &rest[end + 1..];
    }
    if changed {
        Cow::Owned(redacted)
    } else {
        Cow::Borrowed(query)
    }
}

/// A parameter value that encodes a target with a query, re-encoded with that query's
/// credentials redacted; `None` when there is nothing to redact in it.
fn redact_nested(value: &str) -> Option<String> {
    let escaped_mark = value
        .as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"%3f"));
    if !escaped_mark && !value.contains('?') {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(&value.replace('+', " "))
        .decode_utf8()
        .ok()?
        .into_owned();
    let (target, query) = decoded.split_once('?')?;
    let Cow::Owned(query) = redact_query(query) else {
        return None;
    };
    Some(form_urlencoded::byte_serialize(format!("{target}?{query}").as_bytes()).collect())
}

/// Path segments whose next segment is a secret: `/enroll/{ticketId}` opens a TOTP seed.
/// (Session ids in paths belong here too.)
const SECRET_SEGMENTS: &[&str] = &["enroll"];

/// Whether `segment` reads as one of [`SECRET_SEGMENTS`] to some router: in any letter case,
/// with escapes decoded and `;` parameters dropped.
fn names_secret(segment: &str) -> bool {
    let segment = segment.split(';').next().unwrap_or_default();
    if !segment.contains('%') {
        return SECRET_SEGMENTS
            .iter()
            .any(|s| segment.eq_ignore_ascii_case(s));
    }
    let decoded = percent_encoding::percent_decode_str(segment).collect::<Vec<u8>>();
    let decoded = decoded.split(|&b| b == b';').next().unwrap_or_default();
    SECRET_SEGMENTS
        .iter()
        .any(|s| decoded.eq_ignore_ascii_case(s.as_bytes()))
}

/// The path as the logs may hold it (SPEC §10): the segment after `enroll` — the enrollment
/// ticket id — becomes `REDACTED`, whatever spelling led there (letter case, escapes, `;`
/// parameters, empty or `.` segments, which a raw path that could not be normalised may hold).
/// Segments after the ticket are kept: they name the page's action, not a secret.
pub fn redact_path(path: &str) -> Cow<'_, str> {
    // Most paths hold neither an escape nor the word: nothing to look at segment by segment.
    let suspicious = path.contains('%')
        || SECRET_SEGMENTS.iter().any(|s| {
            path.as_bytes()
                .windows(s.len())
                .any(|w| w.eq_ignore_ascii_case(s.as_bytes()))
        });
    if !suspicious {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut secret_next = false;
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let filler = segment.is_empty() || segment == "." || segment.eq_ignore_ascii_case("%2e");
        if secret_next && !filler {
            out.push_str("REDACTED");
            secret_next = false;
            continue;
        }
        out.push_str(segment);
        if names_secret(segment) {
            secret_next = true;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_query_are_redacted() {
        assert_eq!(
            redact_query("FileId=7&WsAccessKey=s3cret&access_token=abc&q=x"),
            "FileId=7&WsAccessKey=REDACTED&access_token=REDACTED&q=x"
        );
        assert_eq!(redact_query("page=2&sort=asc"), "page=2&sort=asc");
        // An external sign-in's callback.
        assert_eq!(
            redact_query("code=c0de&state=st4te&iss=x"),
            "code=REDACTED&state=REDACTED&iss=x"
        );
        assert_eq!(
            redact_query("WsAccess%4Bey=s3cret;ticket=t&x=1"),
            "WsAccess%4Bey=REDACTED;ticket=REDACTED&x=1"
        );
    }

    #[test]
    fn credentials_in_a_target_carried_by_a_parameter_are_redacted() {
        // The sign-in page's URL for a navigation to /app?access_token=abc&page=2.
        assert_eq!(
            redact_query("rd=%2Fapp%3Faccess_token%3Dabc%26page%3D2"),
            "rd=%2Fapp%3Faccess_token%3DREDACTED%26page%3D2"
        );
        // Nested once more (sign-in, then step-up), in lower-case escapes.
        let twice = "rd=%2Fauth%2Fstep-up%3frd%3D%252Fx%253Fcode%253D123456";
        let redacted = redact_query(twice);
        assert!(!redacted.contains("123456"), "{redacted}");
        assert_eq!(redact_query("rd=%2Fapp%3Fpage%3D2"), "rd=%2Fapp%3Fpage%3D2");
        assert_eq!(redact_query("q=what%3F"), "q=what%3F");
    }

    #[test]
    fn enrollment_ticket_ids_are_redacted_in_every_spelling() {
        for (path, logged) in [
            ("/enroll/AbC123", "/enroll/REDACTED"),
            ("/enroll/AbC123/qr.svg", "/enroll/REDACTED/qr.svg"),
            ("/ENROLL/AbC123", "/ENROLL/REDACTED"),
            ("/%65nroll/AbC123", "/%65nroll/REDACTED"),
            ("/enroll;v=1/AbC123", "/enroll;v=1/REDACTED"),
            ("//enroll//AbC123", "//enroll//REDACTED"),
            ("/enroll/./AbC123/%00", "/enroll/./REDACTED/%00"),
            ("/public/../enroll/AbC123", "/public/../enroll/REDACTED"),
        ] {
            assert_eq!(redact_path(path), logged, "{path}");
        }
        for kept in [
            "/public/x",
            "/enroll",
            "/enrollment/x",
            "/enroll/",
            "/a%20b/c",
        ] {
            assert_eq!(redact_path(kept), kept);
        }
    }

    /// Formats one event with [`escaped_fields`] into a string.
    fn text_line(log: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                if let Ok(mut b) = self.0.lock() {
                    b.extend_from_slice(bytes);
                }
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let written = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || buffer.clone())
            .fmt_fields(escaped_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = written.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn json_lines_escape_what_serde_leaves_raw() {
        let line =
            serde_json::json!({"path": "/a\u{85}b\u{2028}c\u{2029}\u{7f}é\u{a0}\n"}).to_string();
        let mut out = JsonEscaped(Vec::new());
        std::io::Write::write_all(&mut out, line.as_bytes()).unwrap_or_default();
        let written = String::from_utf8(out.0).unwrap_or_default();
        assert_eq!(
            written, "{\"path\":\"/a\\u0085b\\u2028c\\u2029\\u007fé\u{a0}\\n\"}",
            "a no-break space is printable and stays as it is"
        );
        let back: serde_json::Value = serde_json::from_str(&written).unwrap_or_default();
        assert_eq!(back["path"], "/a\u{85}b\u{2028}c\u{2029}\u{7f}é\u{a0}\n");
    }

    #[test]
    fn text_fields_escape_control_characters_however_they_are_logged() {
        let name = "ada\n2026-01-01T00:00:00Z  INFO forged\r\u{1b}[2J\u{85}\u{2028}";
        let error = std::io::Error::other(name);
        let line = text_line(|| {
            tracing::info!(user = %name, plain = name, debug = ?name, error = &error as &dyn std::error::Error, "seen {name}");
        });
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(line.ends_with('\n'));
        assert!(
            !line.contains(['\r', '\u{1b}', '\u{85}', '\u{2028}']),
            "{line:?}"
        );
        assert!(line.contains("user=ada\\n2026"), "{line:?}");
        assert!(line.contains("seen ada\\n"), "{line:?}");
        assert!(line.contains(r"\u{1b}"), "{line:?}");
    }
}
