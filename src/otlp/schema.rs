//! The OTLP trace schema as a table: every message an `ExportTraceServiceRequest` can hold, with
//! each field's number, proto name, OTLP/JSON name and kind.
//!
//! The table drives the paths that are not per-span hot: repairing invalid UTF-8
//! ([`super::validate`]), and OTLP/JSON in both directions ([`super::json`]). The door's hot walk
//! ([`super::validate`]) is written out by hand per message for speed, and its unit tests check it
//! against this table (and the fuzz target against prost).
//!
//! Field numbers are those of `opentelemetry/proto/{collector/trace,trace,resource,common}/v1/*.proto`
//! as compiled into the `opentelemetry-proto` crate (including `Resource.entity_refs`,
//! `KeyValue.key_strindex` and `AnyValue.string_value_strindex`).

/// How a field is encoded on the wire and in OTLP/JSON.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `string`: UTF-8, length-delimited.
    String,
    /// `bytes` written as base64 in JSON.
    Bytes,
    /// A trace or span ID (`bytes`), written as lower-case hex in OTLP/JSON.
    Id,
    /// `bool` (varint).
    Bool,
    /// `int32` (varint, sign-extended to 64 bits when negative).
    Int32,
    /// An enum (varint); OTLP/JSON writes the integer.
    Enum,
    /// `uint32` (varint).
    Uint32,
    /// `int64` (varint); OTLP/JSON writes it as a decimal string.
    Int64,
    /// `fixed32`.
    Fixed32,
    /// `fixed64`; OTLP/JSON writes it as a decimal string.
    Fixed64,
    /// `double` (fixed64 bits).
    Double,
    /// A nested message.
    Message(&'static MessageSchema),
}

impl Kind {
    /// The protobuf wire type of the kind.
    pub fn wire_type(self) -> u8 {
        match self {
            Kind::Bool | Kind::Int32 | Kind::Enum | Kind::Uint32 | Kind::Int64 => 0,
            Kind::Fixed64 | Kind::Double => 1,
            Kind::String | Kind::Bytes | Kind::Id | Kind::Message(_) => 2,
            Kind::Fixed32 => 5,
        }
    }
}

/// One field of a message.
#[derive(Debug)]
pub struct Field {
    pub number: u32,
    /// The proto field name (`resource_spans`), as error paths show it.
    pub name: &'static str,
    /// The OTLP/JSON name (`resourceSpans`).
    pub json: &'static str,
    pub kind: Kind,
    pub repeated: bool,
}

/// One message type.
#[derive(Debug)]
pub struct MessageSchema {
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl MessageSchema {
    /// The field numbered `number`, if the schema knows it.
    pub fn field(&self, number: u32) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.number == number)
    }

    /// The field whose JSON name or proto name is `name` (OTLP/JSON readers accept both).
    pub fn field_named(&self, name: &str) -> Option<&'static Field> {
        self.fields
            .iter()
            .find(|f| f.json == name || f.name == name)
    }
}

const fn f(number: u32, name: &'static str, json: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        json,
        kind,
        repeated: false,
    }
}

const fn rep(number: u32, name: &'static str, json: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        json,
        kind,
        repeated: true,
    }
}

pub static EXPORT_REQUEST: MessageSchema = MessageSchema {
    name: "ExportTraceServiceRequest",
    fields: &[rep(
        1,
        "resource_spans",
        "resourceSpans",
        Kind::Message(&RESOURCE_SPANS),
    )],
};

pub static RESOURCE_SPANS: MessageSchema = MessageSchema {
    name: "ResourceSpans",
    fields: &[
        f(1, "resource", "resource", Kind::Message(&RESOURCE)),
        rep(2, "scope_spans", "scopeSpans", Kind::Message(&SCOPE_SPANS)),
        f(3, "schema_url", "schemaUrl", Kind::String),
    ],
};

pub static RESOURCE: MessageSchema = MessageSchema {
    name: "Resource",
    fields: &[
        rep(1, "attributes", "attributes", Kind::Message(&KEY_VALUE)),
        f(
            2,
            "dropped_attributes_count",
            "droppedAttributesCount",
            Kind::Uint32,
        ),
        rep(3, "entity_refs", "entityRefs", Kind::Message(&ENTITY_REF)),
    ],
};

pub static ENTITY_REF: MessageSchema = MessageSchema {
    name: "EntityRef",
    fields: &[
        f(1, "schema_url", "schemaUrl", Kind::String),
        f(2, "type", "type", Kind::String),
        rep(3, "id_keys", "idKeys", Kind::String),
        rep(4, "description_keys", "descriptionKeys", Kind::String),
    ],
};

pub static SCOPE_SPANS: MessageSchema = MessageSchema {
    name: "ScopeSpans",
    fields: &[
        f(1, "scope", "scope", Kind::Message(&SCOPE)),
        rep(2, "spans", "spans", Kind::Message(&SPAN)),
        f(3, "schema_url", "schemaUrl", Kind::String),
    ],
};

pub static SCOPE: MessageSchema = MessageSchema {
    name: "InstrumentationScope",
    fields: &[
        f(1, "name", "name", Kind::String),
        f(2, "version", "version", Kind::String),
        rep(3, "attributes", "attributes", Kind::Message(&KEY_VALUE)),
        f(
            4,
            "dropped_attributes_count",
            "droppedAttributesCount",
            Kind::Uint32,
        ),
    ],
};

pub static SPAN: MessageSchema = MessageSchema {
    name: "Span",
    fields: &[
        f(1, "trace_id", "traceId", Kind::Id),
        f(2, "span_id", "spanId", Kind::Id),
        f(3, "trace_state", "traceState", Kind::String),
        f(4, "parent_span_id", "parentSpanId", Kind::Id),
        f(16, "flags", "flags", Kind::Fixed32),
        f(5, "name", "name", Kind::String),
        f(6, "kind", "kind", Kind::Enum),
        f(
            7,
            "start_time_unix_nano",
            "startTimeUnixNano",
            Kind::Fixed64,
        ),
        f(8, "end_time_unix_nano", "endTimeUnixNano", Kind::Fixed64),
        rep(9, "attributes", "attributes", Kind::Message(&KEY_VALUE)),
        f(
            10,
            "dropped_attributes_count",
            "droppedAttributesCount",
            Kind::Uint32,
        ),
        rep(11, "events", "events", Kind::Message(&EVENT)),
        f(
            12,
            "dropped_events_count",
            "droppedEventsCount",
            Kind::Uint32,
        ),
        rep(13, "links", "links", Kind::Message(&LINK)),
        f(14, "dropped_links_count", "droppedLinksCount", Kind::Uint32),
        f(15, "status", "status", Kind::Message(&STATUS)),
    ],
};

pub static EVENT: MessageSchema = MessageSchema {
    name: "Span.Event",
    fields: &[
        f(1, "time_unix_nano", "timeUnixNano", Kind::Fixed64),
        f(2, "name", "name", Kind::String),
        rep(3, "attributes", "attributes", Kind::Message(&KEY_VALUE)),
        f(
            4,
            "dropped_attributes_count",
            "droppedAttributesCount",
            Kind::Uint32,
        ),
    ],
};

pub static LINK: MessageSchema = MessageSchema {
    name: "Span.Link",
    fields: &[
        f(1, "trace_id", "traceId", Kind::Id),
        f(2, "span_id", "spanId", Kind::Id),
        f(3, "trace_state", "traceState", Kind::String),
        rep(4, "attributes", "attributes", Kind::Message(&KEY_VALUE)),
        f(
            5,
            "dropped_attributes_count",
            "droppedAttributesCount",
            Kind::Uint32,
        ),
        f(6, "flags", "flags", Kind::Fixed32),
    ],
};

pub static STATUS: MessageSchema = MessageSchema {
    name: "Status",
    fields: &[
        f(2, "message", "message", Kind::String),
        f(3, "code", "code", Kind::Enum),
    ],
};

pub static KEY_VALUE: MessageSchema = MessageSchema {
    name: "KeyValue",
    fields: &[
        f(1, "key", "key", Kind::String),
        f(2, "value", "value", Kind::Message(&ANY_VALUE)),
        f(3, "key_strindex", "keyStrindex", Kind::Int32),
    ],
};

pub static ANY_VALUE: MessageSchema = MessageSchema {
    name: "AnyValue",
    fields: &[
        f(1, "string_value", "stringValue", Kind::String),
        f(2, "bool_value", "boolValue", Kind::Bool),
        f(3, "int_value", "intValue", Kind::Int64),
        f(4, "double_value", "doubleValue", Kind::Double),
        f(5, "array_value", "arrayValue", Kind::Message(&ARRAY_VALUE)),
        f(
            6,
            "kvlist_value",
            "kvlistValue",
            Kind::Message(&KEY_VALUE_LIST),
        ),
        f(7, "bytes_value", "bytesValue", Kind::Bytes),
        f(
            8,
            "string_value_strindex",
            "stringValueStrindex",
            Kind::Int32,
        ),
    ],
};

pub static ARRAY_VALUE: MessageSchema = MessageSchema {
    name: "ArrayValue",
    fields: &[rep(1, "values", "values", Kind::Message(&ANY_VALUE))],
};

pub static KEY_VALUE_LIST: MessageSchema = MessageSchema {
    name: "KeyValueList",
    fields: &[rep(1, "values", "values", Kind::Message(&KEY_VALUE))],
};
