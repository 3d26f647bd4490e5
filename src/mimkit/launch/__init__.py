"""Launching jobs elsewhere: Slurm through submitit (``slurm``)."""
