"""Reading and writing model files: one reader, one writer, size limits, atomic replace."""
