"""Flow-matching schedules and samplers."""

from .euler import sample_euler, start_latents
from .schedule import (DEFAULT_SCHEDULE, SCHEDULES, flow_sigmas, noise_like, shift_sigmas, sigma_to_timestep,
                       training_sigmas)

__all__ = ["sample_euler", "start_latents", "DEFAULT_SCHEDULE", "SCHEDULES", "flow_sigmas",
           "noise_like", "shift_sigmas", "sigma_to_timestep", "training_sigmas"]
