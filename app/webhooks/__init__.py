"""One module per GitHub event kind, each registering pure handlers on its own router."""
