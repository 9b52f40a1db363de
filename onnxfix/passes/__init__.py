"""The rewrite's passes."""
