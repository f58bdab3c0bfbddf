"""Schemathesis hooks for the OTP API: the `phone` string format is a number valid for its
country (libphonenumber's rule, which no pattern can express), plain or formatted."""
import schemathesis
from hypothesis import strategies as st

VALID_NUMBERS = [
    "+14155552671",
    "+1 (415) 555-2672",
    "+447400123456",
    "+44 7400 123457",
    "+33612345678",
    "+4915112345678",
    "+61412345678",
    "+819012345678",
    "+5511912345678",
    "+919812345678",
]

schemathesis.openapi.format("phone", st.sampled_from(VALID_NUMBERS))
