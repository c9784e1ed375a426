"""The integration tier runs against the real services (tests/conftest.py's ``services``)."""
