//! Attribute conditions over a whole trace, as the Collector's attribute policies evaluate them.
//! The lookups themselves (reading encoded `KeyValue` lists) are the OTLP layer's
//! ([`crate::otlp::attributes`]).

use crate::otlp::attributes::{find_attribute, AnyValue, RESOURCE_ATTRIBUTES, SPAN_ATTRIBUTES};
use crate::otlp::{Origin, WireError};

use super::TraceView;

/// Where an attribute was found: the Collector's attribute policies treat the two alike except
/// `string_attribute`, which ignores empty span values but not empty resource values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Resource,
    Span,
}

/// Whether the resource of any span, or any span, has attribute `key` with a value `accepts`
/// takes: the Collector's `hasResourceOrSpanWithCondition`. A resource shared by consecutive
/// spans is read once.
pub fn any_resource_or_span_attribute(
    trace: &TraceView<'_>,
    key: &[u8],
    mut accepts: impl FnMut(Level, AnyValue<'_>) -> bool,
) -> Result<bool, WireError> {
    let mut last_origin: Option<&Origin> = None;
    for span in &trace.spans {
        if !last_origin.is_some_and(|o| std::ptr::eq(o, span.origin)) {
            last_origin = Some(span.origin);
            if let Some(resource) = &span.origin.resource {
                if let Some(value) = find_attribute(resource, RESOURCE_ATTRIBUTES, key)? {
                    if accepts(Level::Resource, value) {
                        return Ok(true);
                    }
                }
            }
        }
        if let Some(value) = find_attribute(span.bytes, SPAN_ATTRIBUTES, key)? {
            if accepts(Level::Span, value) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;

    #[test]
    fn resources_and_spans_are_both_searched() {
        let on_resource = SpanBuilder::new().resource_attr("svc", text("api")).build();
        let on_span = SpanBuilder::new().attr("svc", text("api")).build();
        let neither = SpanBuilder::new().attr("other", text("api")).build();
        for (spans, want) in [
            (vec![neither, on_resource], true),
            (vec![on_span], true),
            (vec![neither], false),
        ] {
            let t = trace(spans);
            let mut levels = vec![];
            let found = any_resource_or_span_attribute(&t, b"svc", |level, v| {
                levels.push(level);
                v.str_or_empty() == b"api"
            })
            .unwrap();
            assert_eq!(found, want, "{levels:?}");
        }
    }
}
