"""Private references for the tests and tools: never imported by the library (tests/test_layout.py checks)."""
