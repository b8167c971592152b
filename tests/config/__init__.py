"""Tests for mailward.config."""
