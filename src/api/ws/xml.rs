//! A deliberately small XML reader for the WS family's flat request models, and the writer of
//! `BaseResponseModel`, with quick-xml underneath.
//!
//! The reader refuses any DOCTYPE (so no entity can be declared: no XXE, no billion laughs),
//! expands no entity beyond XML's five predefined ones and character references, caps nesting
//! depth, and reads only what the model names.

use std::collections::HashMap;
use std::io::Cursor;

use quick_xml::Reader;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// Deeper documents are refused outright.
pub const MAX_DEPTH: usize = 16;

/// Why an XML body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    Doctype,
    Entity(String),
    TooDeep,
    WrongRoot(String),
    Malformed(String),
}

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XmlError::Doctype => f.write_str("a DOCTYPE is not accepted"),
            XmlError::Entity(name) => write!(f, "the entity `&{name};` is not accepted"),
            XmlError::TooDeep => write!(f, "the document nests deeper than {MAX_DEPTH} levels"),
            XmlError::WrongRoot(name) => write!(f, "unexpected root element `{name}`"),
            XmlError::Malformed(why) => write!(f, "malformed XML: {why}"),
        }
    }
}

fn predefined(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

/// Reads `<root><Field>text</Field>…</root>` into field → text. Namespace prefixes and attributes
/// (such as the seed's `xmlns:xsi`) are accepted and ignored; unknown fields are kept for the
/// caller to ignore.
pub fn read_flat(body: &[u8], root: &str) -> Result<HashMap<String, String>, XmlError> {
    let text = std::str::from_utf8(body).map_err(|_| XmlError::Malformed("not UTF-8".into()))?;
    let mut reader = Reader::from_str(text);
    let mut fields = HashMap::new();
    let mut stack: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut seen_root = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(start) => {
                let name = start.local_name().as_ref().to_owned();
                if stack.is_empty() {
                    if seen_root || name != root {
                        return Err(XmlError::WrongRoot(name));
                    }
                    seen_root = true;
                }
                stack.push(name);
                if stack.len() > MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                current.clear();
            }
            Event::Empty(start) => {
                let name = start.local_name().as_ref().to_owned();
                if stack.is_empty() {
                    if seen_root || name != root {
                        return Err(XmlError::WrongRoot(name));
                    }
                    seen_root = true;
                } else if stack.len() == 1 {
                    fields.insert(name, String::new());
                }
            }
            Event::Text(t) => current.push_str(&t.xml10_content()),
            Event::CData(c) => current.push_str(&c),
            Event::GeneralRef(r) => {
                if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => current.push(c),
                        _ => return Err(XmlError::Malformed("bad character reference".into())),
                    }
                } else {
                    let name = r.to_string();
                    match predefined(&name) {
                        Some(c) => current.push(c),
                        None => return Err(XmlError::Entity(name)),
                    }
                }
            }
            Event::End(_) => {
                let Some(name) = stack.pop() else {
                    return Err(XmlError::Malformed("unbalanced end tag".into()));
                };
                if stack.len() == 1 {
                    fields.insert(name, current.trim().to_owned());
                }
                current.clear();
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !seen_root || !stack.is_empty() {
        return Err(XmlError::Malformed("the document ended early".into()));
    }
    Ok(fields)
}

/// One hypermedia link of a `BaseResponseModel`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Link {
    pub rel: String,
    pub href: String,
    pub method: String,
    pub title: String,
}

const XSD: &str = "http://www.w3.org/2001/XMLSchema";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// `BaseResponseModel` as the seed writes it: `_links` first, then extra fields, then
/// `StatusMessage`, with the seed's namespace declarations.
pub fn write_base_response(
    status_message: &str,
    links: &[Link],
    extra: &[(&str, String)],
) -> Vec<u8> {
    let mut writer = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    let result: Result<(), std::io::Error> = (|| {
        writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
        let mut root = BytesStart::new("BaseResponseModel");
        root.push_attribute(("xmlns:xsd", XSD));
        root.push_attribute(("xmlns:xsi", XSI));
        writer.write_event(Event::Start(root))?;
        writer.write_event(Event::Start(BytesStart::new("_links")))?;
        for link in links {
            writer.write_event(Event::Start(BytesStart::new("Link")))?;
            for (name, value) in [
                ("rel", &link.rel),
                ("href", &link.href),
                ("method", &link.method),
                ("title", &link.title),
            ] {
                element(&mut writer, name, value)?;
            }
            writer.write_event(Event::End(BytesEnd::new("Link")))?;
        }
        writer.write_event(Event::End(BytesEnd::new("_links")))?;
        for (name, value) in extra {
            element(&mut writer, name, value)?;
        }
        element(&mut writer, "StatusMessage", status_message)?;
        writer.write_event(Event::End(BytesEnd::new("BaseResponseModel")))?;
        Ok(())
    })();
    match result {
        Ok(()) => writer.into_inner().into_inner(),
        Err(_) => Vec::new(),
    }
}

fn element(
    writer: &mut Writer<Cursor<Vec<u8>>>,
    name: &str,
    value: &str,
) -> Result<(), std::io::Error> {
    writer.write_event(Event::Start(BytesStart::new(name)))?;
    writer.write_event(Event::Text(BytesText::new(value)))?;
    writer.write_event(Event::End(BytesEnd::new(name)))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Bytes that are often nearly XML: tags, references, declarations and the seed's names.
    pub(crate) fn xml_like_bytes() -> impl Strategy<Value = Vec<u8>> {
        let fragment = prop::sample::select(vec![
            "<",
            ">",
            "</",
            "/>",
            "R",
            "A",
            "Verify2FAOptInRequest",
            "Otp",
            "ProviderUserId",
            "&amp;",
            "&lt;",
            "&#65;",
            "&#x42;",
            "&#0;",
            "&#xD800;",
            "&#x110000;",
            "&#;",
            "&x;",
            "&",
            "<![CDATA[",
            "]]>",
            "<!DOCTYPE r>",
            "<!ENTITY x \"y\">",
            "<?xml version=\"1.0\"?>",
            "<!--",
            "-->",
            "<?pi x?>",
            " xmlns:a=\"urn:a\"",
            "a:",
            "=",
            "\"",
            "'",
            " ",
            "\r\n",
            "\u{e9}",
            "\u{0}",
        ]);
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..128),
            prop::collection::vec(fragment, 0..48).prop_map(|f| f.concat().into_bytes()),
        ]
    }

    #[test]
    fn nesting_is_refused_exactly_beyond_the_limit() {
        for depth in 1..=3 * MAX_DEPTH {
            let inner = depth - 1;
            let doc = format!("<R>{}x{}</R>", "<a>".repeat(inner), "</a>".repeat(inner));
            let read = read_flat(doc.as_bytes(), "R");
            if depth <= MAX_DEPTH {
                assert!(read.is_ok(), "{depth}: {read:?}");
            } else {
                assert_eq!(read, Err(XmlError::TooDeep), "{depth}");
            }
        }
        for doc in [
            format!("<R>{}{}</R>", "<a>".repeat(100_000), "</a>".repeat(100_000)),
            format!("<R>{}", "<a>".repeat(100_000)),
            format!("<R>{}", "<a:b x='1'>".repeat(100_000)),
        ] {
            assert_eq!(read_flat(doc.as_bytes(), "R"), Err(XmlError::TooDeep));
        }
    }

    proptest! {
        #[test]
        fn the_xml_reader_never_panics(bytes in xml_like_bytes()) {
            let _ = read_flat(&bytes, "R");
            let _ = read_flat(&bytes, "Verify2FAOptInRequest");
        }

        #[test]
        fn what_the_writer_writes_the_reader_reads_back(
            message in "\\PC{0,30}",
            extra in prop::collection::btree_map("[A-Z][A-Za-z0-9]{0,10}", "\\PC{0,30}", 0..5),
        ) {
            let extra: Vec<(&str, String)> = extra
                .iter()
                .filter(|(name, _)| name.as_str() != "StatusMessage")
                .map(|(name, value)| (name.as_str(), value.clone()))
                .collect();
            let xml = write_base_response(&message, &[], &extra);
            let fields = read_flat(&xml, "BaseResponseModel").unwrap();
            prop_assert_eq!(fields["StatusMessage"].as_str(), message.trim());
            for (name, value) in &extra {
                prop_assert_eq!(fields[*name].as_str(), value.trim());
            }
        }
    }

    const SEED_REQUEST: &str = r#"<Verify2FAOptInRequest xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <ProviderUserId>1</ProviderUserId>
  <Otp>sample string 2</Otp>
</Verify2FAOptInRequest>"#;

    #[test]
    fn the_seed_request_sample_reads() {
        let fields = read_flat(SEED_REQUEST.as_bytes(), "Verify2FAOptInRequest").unwrap();
        assert_eq!(fields["ProviderUserId"], "1");
        assert_eq!(fields["Otp"], "sample string 2");
    }

    #[test]
    fn predefined_and_character_references_are_the_only_entities() {
        let doc = "<R><A>a &lt;&amp;&gt; &#65;&#x42;</A></R>";
        assert_eq!(read_flat(doc.as_bytes(), "R").unwrap()["A"], "a <&> AB");
        let custom = "<R><A>&custom;</A></R>";
        assert_eq!(
            read_flat(custom.as_bytes(), "R"),
            Err(XmlError::Entity("custom".into()))
        );
    }

    #[test]
    fn doctype_is_refused_so_xxe_and_billion_laughs_never_expand() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><R><A>&x;</A></R>"#;
        assert_eq!(read_flat(xxe.as_bytes(), "R"), Err(XmlError::Doctype));
        let laughs = r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><R><A>&lol2;</A></R>"#;
        assert_eq!(read_flat(laughs.as_bytes(), "R"), Err(XmlError::Doctype));
    }

    #[test]
    fn deep_truncated_and_foreign_documents_are_refused() {
        let deep = format!("<R>{}{}</R>", "<a>".repeat(20_000), "</a>".repeat(20_000));
        assert_eq!(read_flat(deep.as_bytes(), "R"), Err(XmlError::TooDeep));
        assert!(matches!(
            read_flat(b"<R><A>1</A>", "R"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            read_flat(b"<R><A>1</B></R>", "R"),
            Err(XmlError::Malformed(_))
        ));
        assert_eq!(
            read_flat(b"<Other/>", "R"),
            Err(XmlError::WrongRoot("Other".into()))
        );
        assert!(read_flat(b"", "R").is_err());
    }

    #[test]
    fn base_response_uses_the_seed_element_names_and_escapes_text() {
        let links = [Link {
            rel: "verify".into(),
            href: "/User/verify-2fa-opt-in?FileId=1".into(),
            method: "POST".into(),
            title: "Verify <code>".into(),
        }];
        let xml = String::from_utf8(write_base_response(
            "OK & done",
            &links,
            &[("ProviderUserId", "7".into())],
        ))
        .unwrap();
        assert!(xml.contains(r#"<BaseResponseModel xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#), "{xml}");
        assert!(
            xml.contains("<_links>") && xml.contains("<Link>") && xml.contains("<rel>verify</rel>"),
            "{xml}"
        );
        assert!(xml.contains("<title>Verify &lt;code&gt;</title>"), "{xml}");
        assert!(
            xml.contains("<StatusMessage>OK &amp; done</StatusMessage>"),
            "{xml}"
        );
        // The writer's output reads back.
        let fields = read_flat(xml.as_bytes(), "BaseResponseModel").unwrap();
        assert_eq!(fields["StatusMessage"], "OK & done");
        assert_eq!(fields["ProviderUserId"], "7");
    }
}
