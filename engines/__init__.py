"""What computes: encoders, fusion heads, export and inference backends."""
