"""The routing core: rule base, decisions, store and lookups. Knows no HTTP and no protocol."""
