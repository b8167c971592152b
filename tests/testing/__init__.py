"""Tests of mailward.testing: the infrastructure other tests stand on (TestDns, TestUnbound)."""
