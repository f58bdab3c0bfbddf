//! The published OpenAPI document: poem-openapi's, completed with what only the running
//! configuration knows (the code length) and what field attributes cannot say, so that the
//! schema states exactly the constraints the server enforces.

use serde_json::{Value, json};

use otp_shared::phone::MAX_INPUT_LEN;

/// A number in international form: `+`, then 2 to 15 digits, with spaces, dashes, dots and
/// parentheses tolerated between them. Validity for its country (the `phone` format) is checked
/// beyond this.
const PHONE_PATTERN: &str = r"^\+[0-9]([ ().\-]*[0-9]){1,14}$";
/// Idempotency-Key: 1 to 255 printable ASCII characters (space included).
const KEY_PATTERN: &str = r"^[ -~]{1,255}$";

/// `spec` is poem-openapi's JSON document; the result is what `/openapi.json` serves.
pub fn document(spec: &str, otp_length: usize) -> String {
    let mut doc: Value = match serde_json::from_str(spec) {
        Ok(doc) => doc,
        // poem-openapi always emits JSON; serve it unchanged if that ever differs.
        Err(_) => return spec.to_owned(),
    };
    let phone = |description: &Value| {
        json!({
            "type": "string",
            // A custom format: a number libphonenumber holds valid for its country.
            "format": "phone",
            "pattern": PHONE_PATTERN,
            "minLength": 3,
            "maxLength": MAX_INPUT_LEN,
            "description": description,
        })
    };
    let schemas = &mut doc["components"]["schemas"];
    for name in ["OtpRequest", "VerifyRequest"] {
        let schema = &mut schemas[name];
        let description = schema["properties"]["phoneNumber"]["description"].clone();
        schema["properties"]["phoneNumber"] = phone(&description);
        // Unknown fields are ignored, so newer clients can send fields older servers lack.
        schema["additionalProperties"] = json!(true);
    }
    schemas["VerifyRequest"]["properties"]["otp"] = json!({
        "type": "string",
        "pattern": format!("^[0-9]{{{otp_length}}}$"),
        "minLength": otp_length,
        "maxLength": otp_length,
        "description": format!("The code: exactly {otp_length} digits (OTP_LENGTH)."),
    });
    if let Some(params) = doc["paths"]["/api/otp/request"]["post"]["parameters"].as_array_mut() {
        for param in params.iter_mut().filter(|p| p["name"] == "Idempotency-Key") {
            param["schema"] = json!({
                "type": "string",
                "pattern": KEY_PATTERN,
                "minLength": 1,
                "maxLength": 255,
            });
        }
    }
    doc.to_string()
}
