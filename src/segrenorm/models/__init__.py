"""The networks (``nn/``), the translator, the inference graph and checkpoint loading."""
