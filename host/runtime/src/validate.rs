//! Checks a plugin's reward output before it reaches the trainer: a NaN, an out-of-range value
//! or a missing component would otherwise silently corrupt a whole GRPO update.

use crate::bindings::wit;
use crate::types::ComponentScore;

/// Validates `returned` against the components the plugin declared (`declared`: names and
/// weights in order). Err names the plugin and the first problem found.
pub fn components(plugin: &str, declared: &[(String, f64)], returned: Vec<wit::ComponentScore>) -> Result<Vec<ComponentScore>, String> {
    let bad = |what: String| Err(format!("plugin `{plugin}` returned an invalid score: {what}"));
    if returned.len() != declared.len() {
        return bad(format!(
            "{} components, but it declares {} ({})",
            returned.len(),
            declared.len(),
            declared.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    for (c, (name, _)) in returned.iter().zip(declared) {
        if &c.name != name {
            return bad(format!("component `{}` where `{name}` was declared", c.name));
        }
        if !c.value.is_finite() || !(0.0..=1.0).contains(&c.value) {
            return bad(format!("component `{}` has value {} (must be a finite number in [0, 1])", c.name, c.value));
        }
        if !c.weight.is_finite() {
            return bad(format!("component `{}` has weight {} (must be finite)", c.name, c.weight));
        }
    }
    Ok(returned.into_iter().map(|c| ComponentScore { name: c.name, value: c.value, weight: c.weight, detail: c.detail }).collect())
}

/// Validates the declared components themselves (at load time).
pub fn declared(plugin: &str, declared: &[(String, f64)]) -> Result<(), String> {
    if declared.is_empty() {
        return Err(format!("plugin `{plugin}` declares no reward components"));
    }
    for (i, (name, weight)) in declared.iter().enumerate() {
        if name.is_empty() {
            return Err(format!("plugin `{plugin}` declares a reward component with an empty name"));
        }
        if declared[..i].iter().any(|(n, _)| n == name) {
            return Err(format!("plugin `{plugin}` declares the reward component `{name}` twice"));
        }
        if !weight.is_finite() {
            return Err(format!("plugin `{plugin}` declares component `{name}` with weight {weight} (must be finite)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl() -> Vec<(String, f64)> {
        vec![("a".into(), 0.3), ("b".into(), 0.7)]
    }

    fn c(name: &str, value: f64, weight: f64) -> wit::ComponentScore {
        wit::ComponentScore { name: name.into(), value, weight, detail: String::new() }
    }

    #[test]
    fn good_output_passes() {
        let out = components("p", &decl(), vec![c("a", 1.0, 0.3), c("b", 0.25, 0.7)]).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].value, 0.25);
    }

    #[test]
    fn nan_out_of_range_wrong_count_and_name_are_refused() {
        let e = components("p", &decl(), vec![c("a", f64::NAN, 0.3), c("b", 0.0, 0.7)]).unwrap_err();
        assert!(e.contains("plugin `p`") && e.contains("NaN"), "{e}");
        let e = components("p", &decl(), vec![c("a", 1.5, 0.3), c("b", 0.0, 0.7)]).unwrap_err();
        assert!(e.contains("1.5") && e.contains("[0, 1]"), "{e}");
        let e = components("p", &decl(), vec![c("a", 1.0, 0.3)]).unwrap_err();
        assert!(e.contains("1 components, but it declares 2"), "{e}");
        let e = components("p", &decl(), vec![c("a", 1.0, 0.3), c("x", 0.0, 0.7)]).unwrap_err();
        assert!(e.contains("`x`"), "{e}");
        let e = components("p", &decl(), vec![c("a", 1.0, f64::INFINITY), c("b", 0.0, 0.7)]).unwrap_err();
        assert!(e.contains("weight inf"), "{e}");
    }

    #[test]
    fn declared_duplicates_are_refused() {
        assert!(declared("p", &[("a".into(), 1.0), ("a".into(), 1.0)]).unwrap_err().contains("twice"));
        assert!(declared("p", &[]).is_err());
    }
}
