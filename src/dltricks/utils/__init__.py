"""Small shared helpers: progress bars, atomic file writes, seeding, devices, tables."""
