"""Tests of the mailward command line."""
