"""On-disk checkpoint formats behind one lazy reader interface."""
