//! Rendering Hugging Face chat templates (Jinja2) with minijinja, matching `transformers`:
//! `trim_blocks` and `lstrip_blocks` on, Python string methods (`.strip()`, `.split()`,
//! `.startswith()`…) via minijinja-contrib's pycompat, `raise_exception`, and a `tojson` that
//! prints like Python's `json.dumps` (`", "` and `": "` separators, non-ASCII kept).

use anyhow::{Context, Result};
use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value;

use super::tokenizer::ChatMessage;

pub fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    tools: Option<&[Value]>,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
    extra: &Value,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", |msg: String| -> Result<JValue, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, format!("chat template raised: {msg}")))
    });
    let mut ctx = serde_json::Map::new();
    if let Value::Object(extra) = extra {
        ctx.extend(extra.clone());
    }
    ctx.insert("messages".into(), serde_json::to_value(messages)?);
    ctx.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
    if let Some(tools) = tools {
        ctx.insert("tools".into(), Value::Array(tools.to_vec()));
    }
    ctx.insert("bos_token".into(), bos_token.map(Value::from).unwrap_or(Value::from("")));
    ctx.insert("eos_token".into(), eos_token.map(Value::from).unwrap_or(Value::from("")));
    env.render_str(template, JValue::from_serialize(&ctx)).context("rendering the chat template failed")
}

/// Python `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn tojson(value: JValue, kwargs: Kwargs) -> Result<JValue, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_python_json(&v, indent, 0, &mut out);
    Ok(JValue::from_safe_string(out))
}

fn write_python_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        // Scalars and empty containers print the same in serde_json and Python.
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tojson_matches_python_json_dumps() {
        let v = json!({"a": [1, 2.5, "é\n"], "b": {}, "c": null, "d": true});
        let mut s = String::new();
        write_python_json(&v, None, 0, &mut s);
        assert_eq!(s, r#"{"a": [1, 2.5, "é\n"], "b": {}, "c": null, "d": true}"#);
        let mut s = String::new();
        write_python_json(&json!({"a": [1]}), Some(2), 0, &mut s);
        assert_eq!(s, "{\n  \"a\": [\n    1\n  ]\n}");
    }

    #[test]
    fn template_errors_name_the_problem() {
        let err = render("{{ raise_exception('no system role') }}", &[], false, None, None, None, &Value::Null).unwrap_err();
        assert!(format!("{err:#}").contains("no system role"), "{err:#}");
        let err = render("{% for %}", &[], false, None, None, None, &Value::Null).unwrap_err();
        assert!(format!("{err:#}").contains("chat template"), "{err:#}");
    }
}
