"""sweeplab's Hydra plugins for finding configs: users' own experiments/, model/ and sampler/ folders."""
