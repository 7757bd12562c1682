//! Datadog tags: normalised as Datadog normalises them, so that the point identity computed here
//! is the one Datadog stores. Pure.

/// The longest tag Datadog accepts.
pub const MAX_TAG_LENGTH: usize = 200;

/// A Datadog tag `key:value`, normalised the way Datadog would: lowercase, characters other than
/// letters, digits, `_ - : . /` become `_`, cut to 200 characters. Normalising here keeps the
/// point key equal to the series Datadog stores.
pub fn tag(key: &str, value: &str) -> String {
    let mut tag = String::with_capacity(key.len() + value.len() + 1);
    tag.push_str(key);
    tag.push(':');
    push_normalised(&mut tag, value);
    truncate_tag(tag)
}

/// Normalises a user-supplied `key:value` tag the same way as [`tag`].
pub fn normalise_tag(raw: &str) -> String {
    let mut tag = String::with_capacity(raw.len());
    push_normalised(&mut tag, raw);
    truncate_tag(tag)
}

fn push_normalised(out: &mut String, text: &str) {
    if text.is_ascii() {
        // The usual case, byte by byte: the same result as the general loop below.
        out.extend(text.bytes().map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b':' | b'.' | b'/') {
                char::from(byte.to_ascii_lowercase())
            } else {
                '_'
            }
        }));
        return;
    }
    for character in text.chars() {
        if character.is_alphanumeric() || matches!(character, '_' | '-' | ':' | '.' | '/') {
            out.extend(character.to_lowercase());
        } else {
            out.push('_');
        }
    }
}

fn truncate_tag(mut tag: String) -> String {
    // At most MAX_TAG_LENGTH bytes means at most as many characters.
    if tag.len() <= MAX_TAG_LENGTH {
        return tag;
    }
    if let Some((index, _)) = tag.char_indices().nth(MAX_TAG_LENGTH) {
        tag.truncate(index);
    }
    tag
}

/// A conclusion as part of a metric name: `[a-z0-9_]` only.
pub(super) fn metric_segment(text: &str) -> String {
    text.chars()
        .map(|character| if character.is_ascii_alphanumeric() { character.to_ascii_lowercase() } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_normalised_and_bounded() {
        assert_eq!(tag("branch", "Feature/ÄB c#1"), "branch:feature/äb_c_1");
        let long = tag("branch", &"x".repeat(500));
        assert_eq!(long.chars().count(), MAX_TAG_LENGTH);
        assert_eq!(tag("b", &"é".repeat(300)).chars().count(), MAX_TAG_LENGTH);
        // The ASCII fast path agrees with the general one on every ASCII character.
        let ascii: String = (0u8..128).map(char::from).collect();
        let general: String = ascii
            .chars()
            .flat_map(|c| {
                let keep = c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '/');
                if keep {
                    c.to_lowercase().collect::<Vec<_>>()
                } else {
                    vec!['_']
                }
            })
            .collect();
        assert_eq!(tag("k", &ascii), format!("k:{general}"));
    }
}
