//! A JSON string field that is only a JSON string. poem-openapi's `String` also accepts numbers
//! and booleans (`5` becomes `"5"`); the contract says a wrong JSON type is INVALID_REQUEST.

use poem_openapi::{
    NewType,
    types::{ParseError, ParseFromJSON, ParseResult},
};
use serde_json::Value;

#[derive(Debug, Clone, NewType)]
#[oai(
    from_json = false,
    from_parameter = false,
    from_multipart = false,
    to_header = false
)]
pub struct JsonString(pub String);

impl ParseFromJSON for JsonString {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Ok(Self(s)),
            Some(other) => Err(ParseError::expected_type(other)),
            None => Err(ParseError::custom("the field is required")),
        }
    }
}

impl std::ops::Deref for JsonString {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}
