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

/// Who may call the OTP routes, as the document states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No caller keys: anyone.
    Open,
    /// A caller key, or none (PUBLIC_API=true).
    KeyOptional,
    /// A caller key.
    KeyRequired,
}

/// The OTP routes, which take a caller key.
const KEYED: [(&str, &str); 3] = [
    ("/api/otp/request", "post"),
    ("/api/otp/verify", "post"),
    ("/api/otp/status/{verificationId}", "get"),
];
/// Cancel needs a key whenever keys exist, even where the other routes take none.
const CANCEL: (&str, &str) = ("/api/otp/cancel", "post");

/// `spec` is poem-openapi's JSON document; the result is what `/openapi.json` serves.
pub fn document(spec: &str, otp_length: usize, access: Access) -> String {
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
    }
    // Unknown fields are ignored, so newer clients can send fields older servers lack.
    for name in ["OtpRequest", "VerifyRequest", "CancelRequest"] {
        schemas[name]["additionalProperties"] = json!(true);
    }
    // The optional fields of a code request take null as absent.
    for field in ["locale", "captchaToken"] {
        if schemas["OtpRequest"]["properties"][field].is_object() {
            schemas["OtpRequest"]["properties"][field]["nullable"] = json!(true);
        }
    }
    schemas["CancelRequest"]["properties"]["verificationId"]["format"] = json!("uuid");
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
    if access != Access::Open {
        doc["components"]["securitySchemes"]["callerKey"] = json!({
            "type": "http",
            "scheme": "bearer",
            "description": "A caller key (API_KEYS): Authorization: Bearer <secret>.",
        });
        // An empty requirement makes the key optional.
        let security = match access {
            Access::KeyRequired => json!([{ "callerKey": [] }]),
            _ => json!([{ "callerKey": [] }, {}]),
        };
        for (path, method) in KEYED {
            if doc["paths"][path][method].is_object() {
                doc["paths"][path][method]["security"] = security.clone();
            }
        }
        let (path, method) = CANCEL;
        if doc["paths"][path][method].is_object() {
            doc["paths"][path][method]["security"] = json!([{ "callerKey": [] }]);
        }
    }
    doc.to_string()
}
