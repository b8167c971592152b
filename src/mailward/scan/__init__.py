"""Outside scanners the content checks call (malware: ClamAV's clamd)."""
