"""Data validation: fact tables and Great Expectations suites."""
