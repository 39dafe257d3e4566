//! Path normalisation: the one path that route rules and the upstream both see.
#![no_main]

use gatehouse::fuzzing::resolve_path;
use gatehouse::path::{PathError, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let result = normalize(raw);
    if raw.starts_with('/') {
        // The shortcut for paths that are already normal agrees with resolving them.
        assert_eq!(result, resolve_path(raw), "fast path disagrees on {raw:?}");
    } else {
        assert_eq!(result, Err(PathError::NotAbsolute));
    }
    let Ok(normal) = result else {
        return;
    };
    assert_eq!(
        normalize(&normal).as_deref(),
        Ok(normal.as_str()),
        "not idempotent on {raw:?}"
    );
    assert!(normal.starts_with('/'));
    assert!(normal.len() <= raw.len(), "{raw:?} grew into {normal:?}");
    let segments: Vec<&str> = normal.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        assert!(
            !matches!(*segment, "." | ".."),
            "dot segment in {normal:?} from {raw:?}"
        );
        assert!(
            !segment.is_empty() || i + 1 == segments.len(),
            "empty inner segment in {normal:?} from {raw:?}"
        );
    }
    assert!(!normal.contains(['\\', '\0']), "{normal:?}");
    let upper = normal.to_ascii_uppercase();
    for refused in ["%2F", "%5C", "%00"] {
        assert!(!upper.contains(refused), "{normal:?} from {raw:?}");
    }
});
