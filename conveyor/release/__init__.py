"""Release: the gate, the model registry, reviewer approval, promotion and live rollouts."""
