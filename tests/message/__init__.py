"""Tests of mailward.message."""
