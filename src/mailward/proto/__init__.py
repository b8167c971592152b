"""Sans-I/O protocol cores: bytes in, events out; decisions in, bytes out.

Nothing in this package touches sockets, files, clocks or asyncio, and it imports
only the standard library (DESIGN.md section 1).
"""
