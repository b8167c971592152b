"""Tests for mailward.crypto."""
