"""Replicas: one OpenAI-compatible server per GPU over a continuous-batching engine (real or simulated)."""
