"""Real data sets and fast in-memory loaders."""
