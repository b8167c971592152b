"""mailward test suite (a package, so test folders such as tests/queue never shadow
standard-library modules of the same name)."""
