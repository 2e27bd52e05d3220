"""Masking schemes, samplers and denoiser log-prob / ELBO estimators."""
