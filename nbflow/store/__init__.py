"""Where checkpoints live: one backend protocol, interchangeable backends."""
