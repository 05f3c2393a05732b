//! Content validation for the declared format of a config (SPEC 6.1) and its
//! MD5. `text` accepts anything; json, yaml and toml must parse with their
//! parser; properties must be `key=value` / `key: value` lines.

use crate::rollout::wire::Format;

pub use crate::rollout::wire::md5_hex;

/// Checks `content` against `format`. The error names the format and carries
/// the parser's message, e.g. `invalid json content: expected value at line 1
/// column 1`.
pub fn validate(format: Format, content: &str) -> Result<(), String> {
    let result = match format {
        Format::Text => Ok(()),
        Format::Json => serde_json::from_str::<serde_json::Value>(content)
            .map(drop)
            .map_err(|e| e.to_string()),
        Format::Yaml => validate_yaml(content),
        Format::Toml => toml::from_str::<toml::Table>(content)
            .map(drop)
            .map_err(|e| e.to_string().trim_end().to_string()),
        Format::Properties => validate_properties(content),
    };
    result.map_err(|e| format!("invalid {format} content: {e}"))
}

/// Every document of a (possibly multi-document) YAML stream must parse.
fn validate_yaml(content: &str) -> Result<(), String> {
    use serde::Deserialize as _;
    for document in serde_yaml_ng::Deserializer::from_str(content) {
        serde_yaml_ng::Value::deserialize(document).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Java-style properties, strictly: every line that is not blank and not a
/// comment (`#` or `!`) is `key=value` or `key: value` with a non-empty key;
/// a line ending in an odd number of backslashes continues on the next.
fn validate_properties(content: &str) -> Result<(), String> {
    let mut continued = false;
    for (index, raw) in content.lines().enumerate() {
        let line = raw.trim();
        let was_continued = continued;
        continued = line.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1;
        if was_continued || line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let separator = line.find(['=', ':']);
        let ok = match separator {
            Some(at) => !line[..at].trim().is_empty(),
            None => false,
        };
        if !ok {
            let shown: String = line.chars().take(60).collect();
            return Err(format!(
                "line {}: expected `key=value` or `key: value`, got {shown:?}",
                index + 1
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_is_hex_of_content() {
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex("hello\n"), "b1946ac92492d2347c6235b4d2611184");
    }

    #[test]
    fn text_accepts_anything() {
        assert!(validate(Format::Text, "{{{ not json: [").is_ok());
        assert!(validate(Format::Text, "").is_ok());
    }

    #[test]
    fn json_valid_and_invalid() {
        assert!(validate(Format::Json, r#"{"a": [1, 2, {"b": null}]}"#).is_ok());
        let e = validate(Format::Json, r#"{"a": }"#).unwrap_err();
        assert!(e.starts_with("invalid json content: "), "{e}");
        assert!(e.contains("line 1"), "{e}");
        assert!(validate(Format::Json, "").is_err());
    }

    #[test]
    fn yaml_valid_and_invalid() {
        assert!(validate(Format::Yaml, "a: 1\nb:\n  - x\n  - y\n").is_ok());
        assert!(validate(Format::Yaml, "---\na: 1\n---\nb: 2\n").is_ok());
        let e = validate(Format::Yaml, "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.starts_with("invalid yaml content: "), "{e}");
        assert!(validate(Format::Yaml, "a: 1\n  b: 2\n").is_err());
    }

    #[test]
    fn toml_valid_and_invalid() {
        assert!(validate(Format::Toml, "[server]\nport = 80\nname = \"x\"\n").is_ok());
        let e = validate(Format::Toml, "[server\nport = 80\n").unwrap_err();
        assert!(e.starts_with("invalid toml content: "), "{e}");
        assert!(validate(Format::Toml, "a = 1\na = 2\n").is_err());
    }

    #[test]
    fn properties_valid_and_invalid() {
        let good = "# comment\n! other comment\n\nhost=example\nport: 80\nlong = a \\\n   b\n";
        assert!(validate(Format::Properties, good).is_ok());
        let e = validate(Format::Properties, "host=example\njust words\n").unwrap_err();
        assert!(e.starts_with("invalid properties content: line 2"), "{e}");
        assert!(validate(Format::Properties, "=value\n").is_err());
        assert!(validate(Format::Properties, "a=\\\\\nbroken\n").is_err());
    }
}
