"""Tests of mailward.net: the asyncio sessions around the protocol cores, over real sockets."""
