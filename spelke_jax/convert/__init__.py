"""PyTorch -> Orbax conversion without torch: reader, mapping tables, writer, loader."""
from spelke_jax.convert.convert import convert_checkpoint  # noqa: F401
from spelke_jax.convert.load import load_config, load_converted  # noqa: F401
from spelke_jax.convert.torch_reader import CheckpointError, load_checkpoint  # noqa: F401
