"""Model runners: the seam between the engine and a device (simulated GPU or torch)."""
