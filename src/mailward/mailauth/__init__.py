"""Message authentication policy: SPF (RFC 7208), DMARC (RFC 7489) and the
Authentication-Results header field (RFC 8601).

Pure policy over the injected `mailward.resolver.Resolver` (DESIGN.md 2.5): no
sockets, no clock or randomness of its own (both are parameters). DKIM and ARC
signature verification needs dkimpy and therefore lives in `mailward.crypto.dkim`
(only `crypto` may import crypto libraries); the pipeline check that ties them
together is `mailward.pipeline.authentication`.
"""
