"""Request validation, one module per service; applied before any side effect."""
