//! `trace_flags`: keeps a trace when any span has the W3C `sampled` flag (bit 0 of the low byte of
//! `Span.flags`) set. It has no config block, as in the Collector.

use super::{Decision, Policy, PolicyError, TraceView};
use crate::otlp::attributes::SpanFields;

pub struct TraceFlagsPolicy;

impl Policy for TraceFlagsPolicy {
    fn evaluate(&self, trace: &TraceView<'_>) -> Result<Decision, PolicyError> {
        for span in &trace.spans {
            if SpanFields::read(span.bytes)?.flags & 0x01 != 0 {
                return Ok(Decision::Sampled);
            }
        }
        Ok(Decision::NotSampled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::*;
    use Decision::*;

    #[test]
    fn any_span_with_the_sampled_flag_keeps_the_trace() {
        let cases = [
            (vec![0x01], Sampled),
            (vec![0x00, 0x01], Sampled),
            // Bit 8 and up are OTLP's own flags (parent is remote), not the W3C sampled bit.
            (vec![0x100, 0x300], NotSampled),
            (vec![0x301], Sampled),
            (vec![0x02], NotSampled),
            (vec![], NotSampled),
        ];
        for (flags, want) in cases {
            let t = trace(
                flags
                    .iter()
                    .map(|&f| SpanBuilder::new().flags(f).build())
                    .collect(),
            );
            assert_eq!(TraceFlagsPolicy.evaluate(&t), Ok(want), "{flags:?}");
        }
    }
}
