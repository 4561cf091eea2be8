"""spelke_jax: JAX/Flax ports of the Spelke-object family of models."""
