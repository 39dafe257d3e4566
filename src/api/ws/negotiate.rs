//! Content negotiation for the WS family: request bodies in JSON (`application/json`, `text/json`)
//! or XML (`application/xml`, `text/xml`); responses chosen by `Accept` over the same four types,
//! JSON when `Accept` is absent or allows anything.

/// A body encoding with the exact media type used for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json(&'static str),
    Xml(&'static str),
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json(t) | Format::Xml(t) => t,
        }
    }
}

const TYPES: [(&str, Format); 4] = [
    ("application/json", Format::Json("application/json")),
    ("text/json", Format::Json("text/json")),
    ("application/xml", Format::Xml("application/xml")),
    ("text/xml", Format::Xml("text/xml")),
];

/// The format of a request body from its `Content-Type` (parameters such as `charset` ignored);
/// `None` (415) for anything else. A body without `Content-Type` is read as JSON.
pub fn request_format(content_type: Option<&str>) -> Option<Format> {
    let Some(value) = content_type else {
        return Some(Format::Json("application/json"));
    };
    let essence = crate::api::essence(value);
    TYPES.iter().find(|(t, _)| *t == essence).map(|(_, f)| *f)
}

/// The response format for an `Accept` header: the acceptable type with the highest quality,
/// earlier listed first on ties; `None` (406) when none of the four is acceptable.
pub fn response_format(accept: Option<&str>) -> Option<Format> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Format::Json("application/json"));
    };
    let mut best: Option<(f32, Format)> = None;
    for (media, quality) in crate::api::media_ranges(accept) {
        if quality <= 0.0 {
            continue;
        }
        let format = match media.as_str() {
            "*/*" | "application/*" => Some(Format::Json("application/json")),
            "text/*" => Some(Format::Json("text/json")),
            m => TYPES.iter().find(|(t, _)| *t == m).map(|(_, f)| *f),
        };
        if let Some(format) = format
            && best.is_none_or(|(q, _)| quality > q)
        {
            best = Some((quality, format));
        }
    }
    best.map(|(_, f)| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_types_are_the_four_known_ones() {
        assert_eq!(
            request_format(Some("application/json; charset=utf-8")),
            Some(Format::Json("application/json"))
        );
        assert_eq!(
            request_format(Some("TEXT/XML")),
            Some(Format::Xml("text/xml"))
        );
        assert_eq!(request_format(None), Some(Format::Json("application/json")));
        assert_eq!(
            request_format(Some("application/x-www-form-urlencoded")),
            None
        );
        assert_eq!(request_format(Some("application/xml-dtd")), None);
    }

    #[test]
    fn accept_picks_the_best_acceptable_type() {
        assert_eq!(
            response_format(None),
            Some(Format::Json("application/json"))
        );
        assert_eq!(
            response_format(Some("*/*")),
            Some(Format::Json("application/json"))
        );
        assert_eq!(
            response_format(Some("text/xml")),
            Some(Format::Xml("text/xml"))
        );
        assert_eq!(
            response_format(Some("application/json;q=0.5, application/xml")),
            Some(Format::Xml("application/xml"))
        );
        assert_eq!(response_format(Some("text/html, image/png")), None);
        assert_eq!(response_format(Some("application/xml;q=0")), None);
    }
}
