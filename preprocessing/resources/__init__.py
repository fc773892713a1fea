"""Package data for the offline jobs (medical term lists used by ``prepare``'s domain filter)."""
