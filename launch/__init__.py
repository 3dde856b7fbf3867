"""Launchers: start workloads (or any command) as ranks, locally or across hosts."""
