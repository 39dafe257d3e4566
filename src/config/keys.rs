//! The keys the configuration knows, learnt from the raw sections, and the problems written in
//! their terms: figment's errors, values of the wrong shape, misspelt keys and environment variables.

use figment::value::Value;
use serde::Deserializer;

use super::raw::RawConfig;
use super::*;

/// figment's errors as `key: what is wrong`, keys written as in this module's messages
/// (`routes[1].access`, not figment's `default.routes.1.access`).
pub(super) fn describe(error: figment::Error) -> Vec<String> {
    error
        .into_iter()
        .map(|e| {
            if e.path.is_empty() {
                e.to_string()
            } else {
                let mut key = String::new();
                for segment in &e.path {
                    if segment.bytes().all(|b| b.is_ascii_digit()) {
                        key.push_str(&format!("[{segment}]"));
                    } else {
                        key = join(&key, segment);
                    }
                }
                format!("{key}: {}", e.kind)
            }
        })
        .collect()
}

pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The keys [`RawConfig`] reads, learnt from serde's list of each struct's fields: `server`,
/// `server.public_url`, `routes`, `routes[].access`… A list of tables is `routes[]`.
#[derive(Default)]
pub(super) struct KnownKeys {
    pub(super) keys: std::collections::BTreeSet<String>,
    /// The keys that are tables (`""` is the whole file).
    pub(super) sections: std::collections::BTreeSet<String>,
}

impl KnownKeys {
    pub(super) fn of_raw_config() -> KnownKeys {
        let found = std::cell::RefCell::new(KnownKeys::default());
        let _ = RawConfig::deserialize(Probe {
            path: String::new(),
            found: &found,
        });
        found.into_inner()
    }

    /// The keys directly in `section`, as written there.
    fn children<'a>(&'a self, section: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.keys.iter().filter_map(move |key| {
            let name = if section.is_empty() {
                key.as_str()
            } else {
                key.strip_prefix(section)?.strip_prefix('.')?
            };
            (!name.contains(['.', '['])).then_some(name)
        })
    }

    /// Keys that hold a value, as `GATEHOUSE_<SECTION>__<KEY>` variables.
    fn variables(&self) -> impl Iterator<Item = (String, &str)> + '_ {
        self.keys
            .iter()
            .filter(|key| {
                !key.contains('[')
                    && !self.sections.contains(key.as_str())
                    && !self.sections.contains(&format!("{key}[]"))
            })
            .map(|key| (env_name(key), key.as_str()))
    }
}

pub(super) fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// A deserializer that reads nothing but records every field of every struct it is asked for.
pub(super) struct Probe<'a> {
    pub(super) path: String,
    pub(super) found: &'a std::cell::RefCell<KnownKeys>,
}

pub(super) type ProbeError = serde::de::value::Error;

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_unit()
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, ProbeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_seq(ProbeSeq {
            next: Some(Probe {
                path: format!("{}[]", self.path),
                found: self.found,
            }),
        })
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ProbeError> {
        {
            let mut found = self.found.borrow_mut();
            found.sections.insert(self.path.clone());
            for field in fields {
                found.keys.insert(join(&self.path, field));
            }
        }
        v.visit_map(ProbeMap {
            fields: fields.iter(),
            current: "",
            probe: self,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct tuple tuple_struct map enum identifier ignored_any
    }
}

pub(super) struct ProbeSeq<'a> {
    next: Option<Probe<'a>>,
}

impl<'de> serde::de::SeqAccess<'de> for ProbeSeq<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeError> {
        self.next.take().map(|p| seed.deserialize(p)).transpose()
    }
}

pub(super) struct ProbeMap<'a> {
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
    probe: Probe<'a>,
}

impl<'de> serde::de::MapAccess<'de> for ProbeMap<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        use serde::de::IntoDeserializer;
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = field;
        seed.deserialize(IntoDeserializer::<ProbeError>::into_deserializer(*field))
            .map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        seed.deserialize(Probe {
            path: join(&self.probe.path, self.current),
            found: self.probe.found,
        })
    }
}

/// Takes out of `value` (at `pattern` in the key set, shown as `shown`) every key gatehouse does
/// not read, and empties a section that is not a table, reporting each; what is left can be read.
pub(super) fn tidy(
    value: &mut Value,
    pattern: &str,
    shown: &str,
    known: &KnownKeys,
    report: &mut dyn FnMut(String),
) {
    let list = format!("{pattern}[]");
    match value {
        Value::Dict(_, map) if known.sections.contains(pattern) => {
            map.retain(|key, child| {
                let child_pattern = join(pattern, key);
                let child_shown = join(shown, key);
                if known.keys.contains(&child_pattern) {
                    tidy(child, &child_pattern, &child_shown, known, report);
                    return true;
                }
                let what = if pattern.is_empty() && matches!(child, Value::Dict(..)) {
                    "unknown section"
                } else {
                    "unknown key"
                };
                let guess = closest(key, known.children(pattern))
                    .map(|k| format!("; did you mean `{}`?", join(shown, k)))
                    .unwrap_or_default();
                report(format!("{child_shown}: {what}{guess}"));
                false
            });
        }
        Value::Array(_, items) if known.sections.contains(&list) => {
            for (i, item) in items.iter_mut().enumerate() {
                tidy(item, &list, &format!("{shown}[{i}]"), known, report);
            }
        }
        _ if known.sections.contains(pattern) => {
            report(format!("{shown}: expected a table, got {}", kind_of(value)));
            *value = Value::from(figment::value::Dict::new());
        }
        _ if known.sections.contains(&list) => {
            report(format!(
                "{shown}: expected a list of tables ([[{shown}]]), got {}",
                kind_of(value)
            ));
            *value = Value::from(Vec::<Value>::new());
        }
        _ => {}
    }
}

pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::String(..) | Value::Char(..) => "a string",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a table",
        Value::Array(..) => "a list",
    }
}

/// The candidate closest to `word` in spelling, if one is close enough to be what was meant.
pub(super) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.min(c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edits (insertion, deletion, substitution, swap of neighbours) turning `a` into `b`.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

/// `GATEHOUSE_*` variables read by name rather than as configuration keys: secrets, and the
/// options of the subcommands.
pub(super) const OTHER_VARIABLES: &[&str] = &[
    "GATEHOUSE_ADMIN_TOKEN",
    "GATEHOUSE_MASTER_KEY",
    "GATEHOUSE_CONFIG",
    "GATEHOUSE_ADMIN_URL",
    "GATEHOUSE_MIGRATE_TO",
    "GATEHOUSE_INJECT_LISTEN",
    "GATEHOUSE_INJECT_TLS_CERT",
    "GATEHOUSE_INJECT_TLS_KEY",
    "GATEHOUSE_INJECT_IMAGE",
    "GATEHOUSE_INJECT_MAX_CONNECTIONS",
    "GATEHOUSE_INJECT_MAX_CONNECTIONS_PER_IP",
    "GATEHOUSE_DEMO_LISTEN",
];

/// Variables of gatehouse's own test suite (`GATEHOUSE_TEST_DATABASE_URL`…), which the processes
/// it starts inherit.
pub(super) const TEST_VARIABLES_PREFIX: &str = "GATEHOUSE_TEST_";

/// What Kubernetes sets for a Service named `gatehouse…` (`GATEHOUSE_SERVICE_HOST`,
/// `GATEHOUSE_PORT_8443_TCP_ADDR`…): not meant for gatehouse.
pub(super) fn is_service_variable(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    name.contains("_SERVICE_HOST")
        || name.contains("_SERVICE_PORT")
        || name.ends_with("_PORT")
        || name
            .split("_PORT_")
            .nth(1)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Problems with `GATEHOUSE_<SECTION>__<KEY>` variables that name no key, and warnings about other
/// `GATEHOUSE_*` variables gatehouse does not read; each names the variable probably meant.
pub(super) fn check_env_names(names: &[String], known: &KnownKeys) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let guess = |name: &str| {
        let collapsed = |n: &str| n.to_ascii_uppercase().replace("__", "_");
        let variables: Vec<(String, &str)> = known.variables().collect();
        let found = variables
            .iter()
            .find(|(v, _)| collapsed(v) == collapsed(name))
            .map(|(v, k)| (v.clone(), *k))
            .or_else(|| {
                let best = closest(name, variables.iter().map(|(v, _)| v.as_str()))?;
                variables
                    .iter()
                    .find(|(v, _)| v == best)
                    .map(|(v, k)| (v.clone(), *k))
            });
        found
            .map(|(v, k)| format!("; did you mean {v} (`{k}`)?"))
            .unwrap_or_default()
    };
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    for name in sorted {
        let Some(rest) = name.get(ENV_PREFIX.len()..).filter(|_| has_prefix(name)) else {
            continue;
        };
        if !rest.contains("__") {
            if OTHER_VARIABLES.iter().any(|v| v.eq_ignore_ascii_case(name))
                || is_service_variable(name)
                || name.starts_with(TEST_VARIABLES_PREFIX)
            {
                continue;
            }
            warnings.push(format!(
                "{name} is ignored: configuration variables are GATEHOUSE_<SECTION>__<KEY>, \
                 with two underscores after the section{}",
                guess(name)
            ));
            continue;
        }
        let mut path = String::new();
        let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        for (i, segment) in segments.iter().enumerate() {
            let next = join(&path, segment);
            if !known.keys.contains(&next) {
                let what = if i == 0 {
                    format!("unknown section \"{segment}\"")
                } else if known.sections.contains(&path) {
                    format!("unknown key \"{next}\"")
                } else {
                    format!("\"{path}\" is a value, it has no key \"{segment}\"")
                };
                problems.push(format!("{name}: {what}{}", guess(name)));
                break;
            }
            if i + 1 < segments.len() && !known.sections.contains(&next) {
                let what = if known.sections.contains(&format!("{next}[]")) {
                    format!("\"{next}\" is a list of tables: set it in the configuration file")
                } else {
                    format!(
                        "\"{next}\" is a value, it has no key \"{}\"",
                        segments[i + 1]
                    )
                };
                problems.push(format!("{name}: {what}{}", guess(name)));
                break;
            }
            path = next;
        }
    }
    (problems, warnings)
}
