//! JSON text in the layout of Python's `json.dumps` defaults (`", "` and `": "` separators, non-ASCII
//! kept), which is what Hugging Face chat templates produce with `| tojson`. Rendering the tools
//! section this way keeps our prompts identical to the model's own template.

use serde_json::Value;

pub fn to_python_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(key, out);
                out.push_str(": ");
                write_value(item, out);
            }
            out.push('}');
        }
        Value::String(s) => write_string(s, out),
        // null, booleans and numbers: serde_json's text is Python's.
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    // serde_json escapes exactly what JSON requires and keeps non-ASCII, like ensure_ascii=False.
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// An object written with keys in the given order (serde_json's map sorts keys; the tool entry of
/// a chat template has a fixed order: type, function{name, description, parameters}).
pub fn ordered_object(fields: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (key, rendered)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_string(key, &mut out);
        out.push_str(": ");
        out.push_str(rendered);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_json_dumps_layout() {
        let v: Value = serde_json::from_str(r#"{"b":[1,true,null],"a":"x\"é"}"#).unwrap();
        // Insertion order, as Python's json.dumps without sort_keys.
        assert_eq!(to_python_json(&v), r#"{"b": [1, true, null], "a": "x\"é"}"#);
    }
}
