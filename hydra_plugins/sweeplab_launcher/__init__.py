"""sweeplab's Hydra plugins: `hydra/launcher=sweeplab`, `hydra/sweeper=sweeplab` and the chunked SLURM launcher."""
