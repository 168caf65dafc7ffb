//! Defines jq transforms: a jq program (run by jaq) as a resource transform. No output drops
//! the payload, one output is one record, several outputs fan out. Every output must be a JSON
//! object; anything else, and any runtime error, is a transform (data) error.

use std::fmt;

use jaq_core::{
    Compiler, Ctx, Vars, data,
    load::{Arena, File, Loader},
    unwrap_valr,
};
use jaq_json::Val;
use serde_json::Value;

use crate::{
    envelope::EnvelopeMeta,
    error::TransformError,
    resource::{Transform, Transformed},
};

type Filter = jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>;

/// A compiled jq program.
pub struct JqTransform {
    code: String,
    filter: Filter,
}

impl fmt::Debug for JqTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JqTransform")
            .field("code", &self.code)
            .finish()
    }
}

impl JqTransform {
    /// Compiles `code` with jq's standard library.
    ///
    /// # Errors
    /// A message locating each parse or compile error in `code`.
    pub fn compile(code: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errors| {
                format!(
                    "jq program does not parse: {}",
                    describe(code, errors.len())
                )
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                format!(
                    "jq program does not compile: {}",
                    describe(code, errors.len())
                )
            })?;
        Ok(Self {
            code: code.to_owned(),
            filter,
        })
    }

    /// Runs the program on one JSON value and returns its outputs.
    ///
    /// # Errors
    /// A message for a runtime error.
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, String> {
        // Through JSON text, not serde: jaq's reader keeps a decimal's digits exactly (serde
        // would hand it an f64, or with arbitrary precision an opaque map).
        let input = jaq_json::read::parse_single(input.to_string().as_bytes())
            .map_err(|e| format!("input is not representable: {e}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = Vec::new();
        for output in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            let output = output.map_err(|e| format!("jq error: {e}"))?;
            let text = output.to_string();
            let value = serde_json::from_str(&text)
                .map_err(|e| format!("jq output {text} is not JSON: {e}"))?;
            outputs.push(value);
        }
        Ok(outputs)
    }
}

fn describe(code: &str, errors: usize) -> String {
    format!("{errors} error(s) in `{code}`")
}

impl Transform<Value, Value> for JqTransform {
    fn apply(
        &self,
        payload: &Value,
        _: &EnvelopeMeta<'_>,
    ) -> Result<Transformed<Value>, TransformError> {
        let mut outputs = self.run(payload).map_err(TransformError::new)?;
        if let Some(bad) = outputs.iter().find(|v| !v.is_object()) {
            return Err(TransformError::new(format!(
                "jq output {bad} is not a JSON object"
            )));
        }
        Ok(match outputs.len() {
            0 => Transformed::Drop,
            1 => Transformed::One(outputs.pop().expect("one output")),
            _ => Transformed::Many(outputs),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn apply(code: &str, input: Value) -> Result<Transformed<Value>, TransformError> {
        JqTransform::compile(code).unwrap().apply(
            &input,
            &EnvelopeMeta {
                resource: "r",
                checkpoint: None,
            },
        )
    }

    #[test]
    fn empty_drops_one_output_is_one_record_and_several_fan_out() {
        assert_eq!(apply("empty", json!({"a": 1})).unwrap(), Transformed::Drop);
        assert_eq!(
            apply("{b: .a}", json!({"a": 1})).unwrap(),
            Transformed::One(json!({"b": 1}))
        );
        assert_eq!(
            apply(".items[] | {id: .}", json!({"items": [1, 2]})).unwrap(),
            Transformed::Many(vec![json!({"id": 1}), json!({"id": 2})])
        );
        assert_eq!(
            apply("select(.a > 1)", json!({"a": 1})).unwrap(),
            Transformed::Drop
        );
    }

    #[test]
    fn strings_and_big_numbers_come_back_exact() {
        let out = apply(
            "{p: .p, s: .s, t: (.s + \"\\u00e9\")}",
            json!({"p": "84140.83000000", "s": "a\"b"}),
        )
        .unwrap();
        assert_eq!(
            out,
            Transformed::One(json!({"p": "84140.83000000", "s": "a\"b", "t": "a\"bé"}))
        );
    }

    #[test]
    fn runtime_errors_and_non_objects_are_transform_errors() {
        assert!(
            apply(".a.b", json!({"a": 5}))
                .unwrap_err()
                .to_string()
                .contains("jq error")
        );
        assert!(
            apply(".a", json!({"a": 5}))
                .unwrap_err()
                .to_string()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn a_program_that_does_not_parse_is_refused_at_compile_time() {
        assert!(
            JqTransform::compile("{a: ")
                .unwrap_err()
                .contains("does not parse")
        );
        assert!(
            JqTransform::compile("nosuchfunction(1)")
                .unwrap_err()
                .contains("does not compile")
        );
    }
}
